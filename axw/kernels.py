"""Low-level kernels: `linear`, `F.linear` through oneDNN on CPU where that is
faster, and the layers built on it.

PyTorch ships oneDNN but sends matrix products to its BLAS; `linear` calls
oneDNN's product directly, with its own backward, and leaves everything it
does not speed up to `F.linear`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _find_onednn_linear():
    if os.environ.get("AXW_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_ONEDNN_LINEAR = _find_onednn_linear()
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
# below this many multiply-adds a call's fixed cost (~10 us) outweighs what
# the faster kernel saves, and the BLAS path stays
_ONEDNN_MIN_MACS = 1 << 19


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias by oneDNN, for any strides of x and weight."""
    return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """`F.linear` with oneDNN for the product and both its gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @once_differentiable  # oneDNN's product has no derivative of its own: a second backward is refused
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        flat = grad.reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_x = _onednn(grad, weight.t())
        if ctx.needs_input_grad[1]:  # grad.T @ x, (out, in) like the weight
            grad_weight = _onednn(flat.t(), x.reshape(-1, weight.shape[1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN on CPU where that is faster.

    PyTorch ships oneDNN but sends matrix products to its BLAS. On the CPUs
    we measured, oneDNN reads weights about 1.5x faster for a decode step's
    few rows and computes about 2x faster for prompts and training batches,
    gradients included (benchmarks/gpt2_generate.py, benchmarks/train_speed.py).
    Small products, other devices and dtypes, and autocast regions take
    `F.linear`; so does everything when the environment sets AXW_ONEDNN=0.
    """
    if (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _ONEDNN_DTYPES
        and math.prod(x.shape[:-1]) * weight.numel() >= _ONEDNN_MIN_MACS
        and not torch.is_autocast_enabled("cpu")
    ):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDNNLinear.apply(x, weight, bias)
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` computed by `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` that also computes tied output logits, `h @ weight.T`."""

    def logits(self, hidden: Tensor) -> Tensor:
        return linear(hidden, self.weight)
