"""Low-level kernels: `linear`, `F.linear` through oneDNN on CPU where that is
faster, and the layers built on it; `Norm`, the normalisation every layer uses.

PyTorch ships oneDNN but sends matrix products to its BLAS; `linear` calls
oneDNN's product directly, with its own backward, and leaves everything it
does not speed up to `F.linear`. For bf16 it is the other way round where
PyTorch sends them to oneDNN: a decode step's one row reads the weights about
twice as fast through PyTorch's own product (`native_bf16`).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from contextlib import contextmanager

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


def _cpu_vendor() -> str:
    """The CPU's vendor as Linux names it (GenuineIntel, AuthenticAMD), or "" where it does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_ONEDNN_LINEAR = _find_onednn_linear()
_ONEDNN_DTYPES = _onednn_dtypes()
# PyTorch's own fp32 product is MKL's, Intel's BLAS. On an Intel CPU (a 2-core Xeon with AVX-512, one thread)
# MKL reads one row's weights faster than oneDNN at every size a decode step multiplies: 2048 x 256 in 75
# against 130 us from cache and 126 against 172 us from memory, 4096 x 1024 in 702 against 763 us, GPT-2's
# 50257 x 768 head from memory in 9.0 against 10.2 ms. On the AMD EPYCs we measured it is the other way round.
# So on Intel one fp32 row at inference takes PyTorch's product (`linear`).
ONE_ROW_BLAS = _cpu_vendor() == "GenuineIntel"
# On an AMD EPYC (2 cores, AVX-512, one thread), PyTorch's product reads one fp32 row's weights 2 to 3x faster from a
# column-major copy than either oneDNN or PyTorch's product from the weight itself, where the matrix widens (more
# outputs than inputs); where it narrows the weight itself is faster. From memory: 768 x 256 in 31 against 74
# (PyTorch, row-major) and 68 us (oneDNN), 1024 x 256 in 38 against 112 and 88 us, 2048 x 256 in 51 against 116 and
# 105 us, 1536 x 576 in 89 against 180 and 135 us; 256 x 1024 in 99 against 49 and 55 us. So on AMD one fp32 row at
# inference through a small widening matrix takes `Linear`'s column-major copy (`Linear.one_row_from_columns`).
ONE_ROW_COLUMNS = _cpu_vendor() == "AuthenticAMD"
# PyTorch's one-row product keeps to one thread; with more, oneDNN splits a larger product between them: 2 threads
# read 2048 x 512 in 71 us through oneDNN against 93 us from columns, 3072 x 1024 in 199 against 433 us, while up to
# 2048 x 256 the columns still win (62 against 73 us). So with several threads only matrices up to this size do.
ONE_ROW_COLUMNS_THREADED_MAX = 1 << 19
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
        product = _onednn if _mkldnn_on() else F.linear
        grad_x = grad_weight = grad_bias = None
        flat = grad.reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_x = product(grad, weight.t())
        if ctx.needs_input_grad[1]:  # grad.T @ x, (out, in) laid out like the weight, so autograd copies nothing
            rows = x.reshape(-1, weight.shape[1])
            if _column_major(weight):  # a large head (`lay_out_head`)
                grad_weight = product(rows.t(), flat.contiguous().t()).t()  # (a broadcast grad has 0 strides)
            else:
                grad_weight = product(flat.t(), rows.t())
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
    the CPU lacks it; and bf16's single rows at inference, which PyTorch's
    own product reads faster: `native_bf16`; on an Intel CPU, fp32's too:
    `ONE_ROW_BLAS`), and autocast regions take `F.linear`; so does
    everything while `torch.backends.mkldnn.enabled` is off, when the
    environment sets AXW_ONEDNN=0, and after the oneDNN op has once failed.
    """
    rows = math.prod(x.shape[:-1])
    if rows * weight.numel() >= _ONEDNN_MIN_MACS and _onednn_applies(x, weight):
        if _needs_grad(x, weight, bias):
            return _OneDNNLinear.apply(x, weight, bias)
        if rows == 1 and x.dtype == torch.bfloat16:  # a decode step's row
            with native_bf16():
                return F.linear(x, weight, bias)
        if rows == 1 and ONE_ROW_BLAS and not _column_major(weight):  # PyTorch reads a column-major weight slowly
            return F.linear(x, weight, bias)
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def _onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """oneDNN is on and takes this device, these dtypes, outside autocast."""
    return (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in _ONEDNN_DTYPES
        and not torch.is_autocast_enabled("cpu")
        and _mkldnn_on()  # read per call: users switch it with torch.backends.mkldnn.flags
    )


# On a CPU where oneDNN computes bf16, PyTorch sends every bf16 product to it, and oneDNN reads a bf16 weight for
# one row at half the speed PyTorch's own product does (its fp32-accumulating gemv): on the CPU we measured (AVX-512
# with bf16), 28 distinct 4096 x 1024 weights in 675 against 320 us each, 6144 x 1024 in 790 against 413, Qwen3's
# 151936 x 1024 head in 17.3 against 10.1 ms. PyTorch's only switch for that is global, `torch.backends.mkldnn`:
# `native_bf16` turns it off while any thread is inside (a count, so threads overlap safely) and back to what the
# program had set after the last one leaves. axw's forwards of a bf16 model run inside it from end to end
# (`native_bf16_forward`), so all their products (attention's included) take the same path however many runs
# overlap, and their bits never depend on timing; axw's own choice of oneDNN reads the program's setting
# (`_mkldnn_on`). Products of other code that overlap an axw bf16 forward in another thread take PyTorch's own
# kernels too: the same values to bf16 rounding.
_NATIVE = threading.Lock()
_native_depth = 0
_program_mkldnn = True  # the program's own setting while `native_bf16` holds the switch off


@contextmanager
def native_bf16():
    """PyTorch's own products for bf16 on CPU while inside (see above)."""
    global _native_depth, _program_mkldnn
    with _NATIVE:
        if _native_depth == 0:
            _program_mkldnn = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _native_depth += 1
    try:
        yield
    finally:
        with _NATIVE:
            _native_depth -= 1
            if _native_depth == 0:
                torch.backends.mkldnn.enabled = _program_mkldnn


def _mkldnn_on() -> bool:
    """The program's oneDNN setting (`torch.backends.mkldnn.enabled`), whatever `native_bf16` holds it at."""
    return torch.backends.mkldnn.enabled or (_native_depth > 0 and _program_mkldnn)


def native_bf16_forward(method):
    """Decorator of a network's forward methods (first argument a tensor): run inside `native_bf16` when that
    tensor is bf16 on a CPU where PyTorch would send its products to oneDNN."""
    @functools.wraps(method)
    def forward(self, x, *args, **kwargs):
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.bfloat16 in _ONEDNN_DTYPES:
            with native_bf16():
                return method(self, x, *args, **kwargs)
        return method(self, x, *args, **kwargs)
    return forward


def _column_major(weight: Tensor) -> bool:
    """Whether the 2-d `weight` is laid out column-major (and not also row-major: more than one row)."""
    return weight.shape[0] > 1 and weight.stride() == (1, weight.shape[0])


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


# A product of a few rows (a speculative verify, beams, contrastive search's candidates, a small batch) runs
# faster in oneDNN from a column-major copy of the weight: on the CPU we measured, 2 to 9 rows through the
# bundled expert's 17 matrices took 0.6 to 0.9 ms against 1.0 to 1.3 ms from the weights themselves (768 x
# 256 and 5 rows: 28 us against 47 us), while one row stays faster from the weight. Below SMALL_MATRIX[0]
# elements oneDNN's fixed cost (about 15 us a call) outweighs the gain; above SMALL_MATRIX[1] no copy is
# made, so a large model's memory is not doubled.
SMALL_ROWS = (2, 16)
SMALL_MATRIX = (1 << 17, 1 << 20)


_ROW_PARTS = threading.local()
# the most ways a Linear keeps for runs of one row each (`Linear._one_row_each`): one per number of runs seen, a
# few per setting; past it they are decided afresh
_PLANS = 64


@contextmanager
def shared_rows(parts: list[int]):
    """Inside, in this thread: the tensors' leading rows belong to several runs, `parts` rows each in order
    (`axw.shared`), and every `Linear` computes each run's rows as it would alone, so each gets the bits it
    gets on its own (a product's blocking, and so its rounding, depends on how many rows it has)."""
    before = getattr(_ROW_PARTS, "parts", None)
    _ROW_PARTS.parts = list(parts)
    try:
        yield
    finally:
        _ROW_PARTS.parts = before


def row_parts() -> list[int] | None:
    """The runs' rows of `shared_rows`, or None outside it."""
    return getattr(_ROW_PARTS, "parts", None)


def _stamp(weight: Tensor, bias: Tensor | None) -> tuple:
    """Where the weight and bias are stored and how often they were changed in place."""
    return (weight.data_ptr(), weight._version) + ((bias.data_ptr(), bias._version) if bias is not None else ())


class Linear(nn.Linear):
    """`nn.Linear` computed by `linear`; a few rows at inference from a
    column-major copy of the weight (remade whenever the weight changes)."""

    _column_major: Tensor | None = None
    _column_major_of: tuple | None = None

    _batched_exact: dict | None = None
    # the ways `_by_parts` decided for runs of one row each, by what decides them: (the weight and bias, their
    # storage and versions then, the way as a function of x); `_one_row_each`
    _planned: dict | None = None

    def forward(self, x: Tensor) -> Tensor:
        parts = row_parts()
        if parts is not None and len(parts) > 1:
            return self._one_row_each(x, parts) if x.numel() == len(parts) * x.shape[-1] else self._by_parts(x, parts)
        return self._alone(x)

    def _one_row_each(self, x: Tensor, parts: list[int]) -> Tensor:
        """`_by_parts` for runs of one row each (a decode step's): the way it decides, kept once its check is done,
        so the next steps of as many runs go straight to it (each product of a shared forward would otherwise
        spend a third as long deciding as computing). The key is what the decision reads; a change of the weight
        or bias (its tensor, storage or version) decides again."""
        weight, bias = self.weight, self.bias
        key = (len(parts), x.shape, x.dtype, x.device, _needs_grad(x, weight, bias),
               torch.is_autocast_enabled("cpu"), torch.get_num_threads(), ONE_ROW_COLUMNS)
        planned = self._planned.get(key) if self._planned is not None else None
        if planned is not None and planned[0] is weight and planned[1] is bias and planned[2] == _stamp(weight, bias):
            return planned[3](x)
        out, way = None, functools.partial(self._part_by_part, parts=list(parts))  # as `_by_parts` decides
        if x.dtype == weight.dtype:
            check, batched = self._equal_parts(x, len(parts))
            if check not in (self._batched_exact or {}):  # the first call of these shapes: `_by_parts` checks
                out = self._by_parts(x, parts)
            if self._batched_exact[check]:
                way = batched
        if self._planned is None or len(self._planned) >= _PLANS:
            self._planned = {}
        self._planned[key] = (weight, bias, _stamp(weight, bias), way)
        return way(x) if out is None else out

    def _alone(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if self._column_major_applies(x, rows):
            return _onednn(x, self.column_major(), self.bias)
        if rows == 1 and self.one_row_from_columns(x):
            return F.linear(x, self.column_major(), self.bias)
        return linear(x, self.weight, self.bias)

    def one_row_from_columns(self, x: Tensor) -> bool:
        """Whether one row of x takes PyTorch's product from the column-major copy (`ONE_ROW_COLUMNS`)."""
        weight = self.weight
        return (
            ONE_ROW_COLUMNS
            and weight.shape[0] > weight.shape[1]
            and weight.numel() <= (SMALL_MATRIX[1] if torch.get_num_threads() == 1 else ONE_ROW_COLUMNS_THREADED_MAX)
            and x.dtype == weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")  # autocast's bf16 product reads a column-major weight slowly
            and not _needs_grad(x, weight, self.bias)
        )

    def _column_major_applies(self, x: Tensor, rows: int) -> bool:
        """Whether `rows` rows of x take oneDNN from the column-major copy of the weight."""
        weight = self.weight
        return (
            SMALL_ROWS[0] <= rows <= SMALL_ROWS[1]
            and SMALL_MATRIX[0] <= weight.numel() <= SMALL_MATRIX[1]
            and x.dtype == torch.float32
            and not _needs_grad(x, weight, self.bias)
            and _onednn_applies(x, weight)
        )

    def _by_parts(self, x: Tensor, parts: list[int]) -> Tensor:
        """x's leading rows in `parts` (several runs' rows, `shared_rows`), each part computed as it would be on
        its own: by one product where that gives the same bits on this machine (checked once per way and shape,
        on the first call), else part by part. One product: when every part alone takes the column-major copy
        (oneDNN computes each row of it alike however many rows there are), one product of all the rows, which
        reads the weight once; when the parts are equal, one batched product."""
        each = math.prod(x.shape[1:-1])  # rows per leading row
        if all(self._column_major_applies(x, rows * each) for rows in parts):
            key = ("column", tuple(parts), x.dtype, x.device)
            way = lambda: _onednn(x, self.column_major(), self.bias)  # noqa: E731
        elif len(set(parts)) == 1 and x.dtype == self.weight.dtype:
            key, batched = self._equal_parts(x, len(parts))
            way = lambda: batched(x)  # noqa: E731
        else:
            return self._part_by_part(x, parts)
        exact = (self._batched_exact or {}).get(key)
        if exact is None:  # the first call of this shape: both ways, and which agree
            alone = self._part_by_part(x, parts)
            self._batched_exact = {**(self._batched_exact or {}), key: torch.equal(way(), alone)}
            return alone
        return way() if exact else self._part_by_part(x, parts)

    def _equal_parts(self, x: Tensor, k: int):
        """(the key of its check, the product as a function of x) for x's rows in k equal parts, each the way it
        goes alone: one row of a widening matrix from the column-major copy."""
        rows = math.prod(x.shape[:-1]) // k
        columns = rows == 1 and self.one_row_from_columns(x)
        key = (k, rows, x.dtype, x.device) + (("columns",) if columns else ())
        return key, self._batched(k, rows, self.column_major() if columns else self.weight)

    def _part_by_part(self, x: Tensor, parts: list[int]) -> Tensor:
        """x's parts (`shared_rows`), each through the layer on its own."""
        return torch.cat([self._alone(part) for part in x.split(parts)])

    def _batched(self, k: int, m: int, weight: Tensor):
        """x (k * m rows, ..., in) as k products of m rows by `weight` (the weight or its column-major copy), in
        one batched call, as a function of x: the weight and bias laid out for that call once."""
        weight = weight.t()
        weight = weight.expand(k, *weight.shape)
        bias = self.bias.expand(k, m, -1) if self.bias is not None else None
        inputs = weight.shape[1]

        def batched(x: Tensor) -> Tensor:
            flat = x.reshape(k, m, inputs)
            out = torch.baddbmm(bias, flat, weight) if bias is not None else torch.bmm(flat, weight)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return batched

    def column_major(self) -> Tensor:
        """The weight, (out, in), laid out column-major; made again after any change to the weight."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
        if self._column_major_of != key:
            self._column_major = weight.detach().t().contiguous().t()
            self._column_major_of = key
        return self._column_major


# The output head of a large vocabulary (a matrix far out of cache, read once per decoded token) streams faster
# through oneDNN from a column-major layout on a CPU where PyTorch's kernels stop at AVX2: one row's logits, 2
# threads, in turns: GPT-2's 50257 x 768 in 7.0 ms against 9.1 ms row-major, SmolLM2's 49152 x 576 in 5.8 against
# 7.2 ms, Qwen3's 151936 x 1024 in 26.4 against 28.9 ms. With AVX-512 it is the other way round: GPT-2's head in
# 6.4 against 11.0 ms, Qwen3's in 20.8 against 40.1 ms. PyTorch's own product (bf16 where oneDNN lacks it, other
# devices) reads a column-major weight up to 18x slower, so everywhere else the head stays row-major.
HEAD_COLUMN_MAJOR_MIN = SMALL_MATRIX[1]
HEAD_COLUMN_MAJOR = torch.backends.cpu.get_cpu_capability() == "AVX2"


def lay_out_head(weight: Tensor):
    """Store the output head `weight` (num_tokens, dim) column-major where its product reads that faster (above),
    row-major elsewhere. In place, without a copy kept: the parameter stays the same object, its values the same."""
    if type(weight.data) is not torch.Tensor:  # a sharded (DTensor) or other wrapped parameter keeps its own layout
        return
    rows, cols = weight.shape
    wanted = (HEAD_COLUMN_MAJOR and rows * cols > HEAD_COLUMN_MAJOR_MIN and rows > cols
              and weight.device.type == "cpu" and weight.dtype == torch.float32 and _ONEDNN_LINEAR is not None)
    if wanted != _column_major(weight):
        with torch.no_grad():
            weight.data = weight.data.t().contiguous().t() if wanted else weight.data.contiguous()


class TokenEmbedding(nn.Embedding):
    """`nn.Embedding` that also computes tied output logits, `h @ weight.T`."""

    def logits(self, hidden: Tensor) -> Tensor:
        return linear(hidden, self.weight)


class Norm(nn.Module):
    """LayerNorm (optionally without bias) or RMSNorm (Zhang & Sennrich 2019).
    With `unit_offset` the scale is 1 + weight, the weight starting at 0
    (Gemma's RMSNorm)."""

    def __init__(self, dim: int, rms: bool = False, bias: bool = False, eps: float = 1e-5,
                 unit_offset: bool = False):
        super().__init__()
        self.rms, self.eps, self.unit_offset = rms, eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias and not rms else None

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight + 1.0 if self.unit_offset else self.weight
        if self.rms:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, self.bias, self.eps)
