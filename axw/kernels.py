"""Low-level kernels: `linear`, `F.linear` through oneDNN on CPU where that is
faster, and the layers built on it.

PyTorch ships oneDNN but sends matrix products to its BLAS; `linear` calls
oneDNN's product directly, with its own backward, and leaves everything it
does not speed up to `F.linear`.
"""

from __future__ import annotations

import math
import os
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _find_onednn_linear():
    if os.environ.get("AXW_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return None
    try:  # a private op: a build may lack it
        return getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    except Exception:
        return None


def _onednn_dtypes() -> tuple[torch.dtype, ...]:
    """fp32, and bf16 where oneDNN says this CPU computes it."""
    try:  # a private op: a build may lack it, and then bf16 stays with F.linear
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        bf16 = False
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


_ONEDNN_LINEAR = _find_onednn_linear()
_ONEDNN_DTYPES = _onednn_dtypes()
# below this many multiply-adds a call's fixed cost (~10 us) outweighs what
# the faster kernel saves, and the BLAS path stays
_ONEDNN_MIN_MACS = 1 << 19
_GIVE_UP = threading.Lock()


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias by oneDNN, for any strides of x and weight.

    The op is private to PyTorch, so a release may change or drop it. Its
    first failure switches this process to `F.linear`, with one warning, and
    the call that failed still returns `F.linear`'s result."""
    op = _ONEDNN_LINEAR
    if op is None:  # given up, possibly between `linear`'s check and here
        return F.linear(x, weight, bias)
    try:
        return op(x, weight, bias, "none", [], "")
    except AssertionError:  # a check of the program's own (a debug hook, a test double) failed: it surfaces
        raise
    except Exception as error:
        # inputs F.linear refuses too are the caller's mistake, not oneDNN's:
        # that error propagates from here and oneDNN stays on
        out = F.linear(x, weight, bias)
        _give_up(op, error)
        return out


def _give_up(op, error: Exception):
    global _ONEDNN_LINEAR
    with _GIVE_UP:  # one warning even when threads fail together
        if _ONEDNN_LINEAR is not op:
            return
        _ONEDNN_LINEAR = None
    warnings.warn(
        f"torch.ops.mkldnn._linear_pointwise failed ({type(error).__name__}: {error}); axw computes "
        "linear layers with F.linear for the rest of this process. Set AXW_ONEDNN=0 to skip oneDNN "
        "from the start.",
        RuntimeWarning,
        stacklevel=3,
    )


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
        # mkldnn may have been switched off since the forward
        product = _onednn if torch.backends.mkldnn.enabled else F.linear
        grad_x = grad_weight = grad_bias = None
        flat = grad.reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_x = product(grad, weight.t())
        if ctx.needs_input_grad[1]:  # grad.T @ x, (out, in) like the weight
            grad_weight = product(flat.t(), x.reshape(-1, weight.shape[1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN on CPU where that is faster.

    PyTorch ships oneDNN but sends matrix products to its BLAS. On the CPUs
    we measured, oneDNN reads weights about 1.5x faster for a decode step's
    few rows and computes about 2x faster for prompts and training batches,
    gradients included (benchmarks/gpt2_generate.py, benchmarks/train_speed.py).
    Small products, other devices and dtypes (bf16 too where oneDNN says
    the CPU lacks it), and autocast regions take `F.linear`; so does
    everything while `torch.backends.mkldnn.enabled` is off, when the
    environment sets AXW_ONEDNN=0, and after the oneDNN op has once failed.
    """
    if (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _ONEDNN_DTYPES
        and math.prod(x.shape[:-1]) * weight.numel() >= _ONEDNN_MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled  # read per call: users switch it with torch.backends.mkldnn.flags
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
