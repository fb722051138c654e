"""Causal self-attention with rotary positions and a preallocated KV cache.

The cache follows gpt-fast: keys and values of the layers that share a
window live in one preallocated tensor, written in place, so a decode step
allocates nothing that grows with the context. Past `window` keys (rotary or
no positions) the oldest keys slide out, which is what lets decoding run past
`max_seq_len`; sliding-window layers keep only their own window.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import Linear, Norm
from .utils import default, exists


QK_NORMS = (None, "head", "full")


class LayerSlots:
    """Keys and values of the attention layers that share one window, in one
    preallocated buffer per tensor.

    Slots `[start, length)` are live. With a `window`, the oldest keys slide
    out: the slots keep the last window - 1 keys plus the new ones of a
    forward, in a buffer of `bound` slots (the window and a quarter) whose
    live slots move back to its front, in place, when it is full: once per
    quarter window of decoded tokens, so amortised O(1) per token. Slots
    before `start` stay until then, so a rollback can bring them back."""

    def __init__(self, num_layers: int, window: int | None = None, capacity: int = 0):
        self.num_layers = num_layers
        self.window = window
        # a quarter window of spare slots: what the steps between two compactions write
        self.bound = None if window is None else window + max(1, window // 4)
        self.reserved = self._bounded(capacity)
        self.k: Tensor | None = None  # (layers, batch, kv_heads, capacity, dim_head)
        self.v: Tensor | None = None
        self.key_mask: Tensor | None = None  # (batch, capacity), True where a key may be attended
        self.start = 0
        self.length = 0
        self._pending = 0
        self._views: tuple | None = None  # (k, v, grad mode, k's layers, v's layers): `_layer`

    def _bounded(self, capacity: int) -> int:
        return capacity if self.bound is None else min(capacity, self.bound)

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    @property
    def batch(self) -> int | None:
        return None if self.k is None else self.k.shape[1]

    def live(self) -> int:
        return self.length - self.start

    def reserve(self, capacity: int):
        if self.k is None:
            self.reserved = max(self.reserved, self._bounded(capacity))

    def prepare(self, n: int):
        """Make room for `n` new slots, dropping keys that slid out of the window."""
        if exists(self.window):
            # keep the last window - 1 keys: the first new query sees them and
            # itself; later queries of a chunk are held to the window by a band mask
            self.start = max(self.start, self.length - (self.window - 1))
        self._pending = n
        if self.k is None or self.length + n <= self.capacity:
            return
        needed = self.live() + n
        if self.bound is None:
            self._resize(max(needed, 2 * self.capacity))
        elif needed <= self.capacity <= max(needed, self.bound):
            self._compact()
        else:
            # a chunk longer than the spare slots, or the first step after one: the buffer grows, then shrinks back
            self._resize(max(needed, self.bound))

    def _buffers(self) -> list[tuple[Tensor, int]]:
        """Each buffer with its slot dimension."""
        return [(self.k, 3), (self.v, 3)] + ([(self.key_mask, 1)] if exists(self.key_mask) else [])

    def _compact(self):
        """Move the live slots to the front of the buffers, in place, in
        pieces no longer than the distance they move, so none overlaps itself."""
        size, gap = self.live(), self.start
        for buf, dim in self._buffers():
            if size > 8 * gap:  # many small pieces: one copy through a temporary instead
                buf.narrow(dim, 0, size).copy_(buf.narrow(dim, gap, size).clone())
                continue
            for done in range(0, size, gap):
                piece = min(gap, size - done)
                buf.narrow(dim, done, piece).copy_(buf.narrow(dim, gap + done, piece))
        self.start, self.length = 0, size

    def _resize(self, capacity: int):
        size = self.live()

        def move(buf, dim):
            shape = list(buf.shape)
            shape[dim] = capacity
            new = buf.new_empty(shape) if buf.dtype != torch.bool else buf.new_ones(shape)
            new.narrow(dim, 0, size).copy_(buf.narrow(dim, self.start, size))
            return new

        self.k, self.v = move(self.k, 3), move(self.v, 3)
        if exists(self.key_mask):
            self.key_mask = move(self.key_mask, 1)
        self.start, self.length = 0, size

    def key_slice(self) -> slice:
        """Slots the new queries attend to, after `prepare`."""
        return slice(self.start, self.length + self._pending)

    def keys(self) -> Tensor | None:
        """Which of the slots the new queries attend to may be attended (None: all)."""
        return self.key_mask[:, self.key_slice()] if exists(self.key_mask) else None

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        n = k.shape[2]
        if self.k is None:
            b, kvh, _, d = k.shape
            capacity = max(self.reserved, n)
            self.k = k.new_empty((self.num_layers, b, kvh, capacity, d))
            self.v = v.new_empty((self.num_layers, b, kvh, capacity, v.shape[-1]))
        if k.dtype != self.k.dtype:
            k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        keys, values = self._layer(layer)
        keys.narrow(2, self.length, n).copy_(k)
        values.narrow(2, self.length, n).copy_(v)
        live = self.length + n - self.start
        return keys.narrow(2, self.start, live), values.narrow(2, self.start, live)

    def _layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """The key and value buffers of one layer (views of `k` and `v`, made once per buffer: a decode step
        writes every layer's, and indexing the whole buffer anew each time costs more than the copy)."""
        # autograd refuses writes through a view made in the other grad mode: views are made per mode
        views, grad = self._views, torch.is_grad_enabled()
        if views is None or views[0] is not self.k or views[1] is not self.v or views[2] != grad:
            views = self._views = (self.k, self.v, grad, [self.k.select(0, i) for i in range(self.num_layers)],
                                   [self.v.select(0, i) for i in range(self.num_layers)])
        return views[3][layer], views[4][layer]

    def write_key_mask(self, mask: Tensor | None, n: int):
        """Record which of the `n` new keys may be attended (None: all)."""
        if mask is None and self.key_mask is None:
            return
        if self.key_mask is None:
            # same slots as the key and value buffers, which may not exist yet
            capacity = self.capacity if self.k is not None else max(self.reserved, self.length + n)
            batch, device = (mask.shape[0], mask.device) if mask is not None else (self.batch, self.k.device)
            self.key_mask = torch.ones((batch, capacity), dtype=torch.bool, device=device)
        self.key_mask[:, self.length:self.length + n] = True if mask is None else mask

    def advance(self, n: int):
        self.length += n
        self._pending = 0

    def keep_candidate(self, choice: Tensor):
        b = choice.shape[0]
        src = self.length + choice  # (b,)
        rows = torch.arange(b, device=choice.device)
        for buf in (self.k, self.v):
            picked = buf[:, rows, :, src]  # (b, layers, kv_heads, d)
            buf[:, :, :, self.length] = picked.permute(1, 0, 2, 3)
        if exists(self.key_mask):
            self.key_mask[:, self.length] = self.key_mask[rows, src]
        self.advance(1)

    def reorder(self, index: Tensor):
        if self.k is not None:
            if index.shape[0] == self.batch:
                # copy only the live slots, in place: the buffers keep their size
                live = slice(self.start, self.length)
                self.k[:, :, :, live] = self.k[:, index, :, live]
                self.v[:, :, :, live] = self.v[:, index, :, live]
            else:
                self.k = self.k.index_select(1, index)
                self.v = self.v.index_select(1, index)
        if exists(self.key_mask):
            self.key_mask = self.key_mask.index_select(0, index)

    def rollback_error(self, n: int, seen: int) -> str | None:
        """Why the last `n` of `seen` positions cannot be forgotten exactly (None: they can)."""
        if self.window is None:
            return None
        discarded = seen > self.length  # positions older than slot 0 existed
        if discarded and self.length - n - (self.window - 1) < 0:
            return f"cannot roll back {n} positions exactly: keys the window needs were discarded"
        return None

    def rollback(self, n: int):
        length = max(self.length - n, 0)
        if exists(self.window):
            self.start = min(self.start, max(0, length - (self.window - 1)))
        self.start = min(self.start, length)
        self.length = length

    def fork(self) -> LayerSlots:
        other = LayerSlots(self.num_layers, window=self.window, capacity=self.reserved)
        held = slice(0, self.length)
        if self.k is not None:
            other.k, other.v = self.k[:, :, :, held].clone(), self.v[:, :, :, held].clone()
        if exists(self.key_mask):
            other.key_mask = self.key_mask[:, held].clone()
        other.start, other.length = self.start, self.length
        return other

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


class KVCache:
    """Keys and values of all attention layers, plus which keys may be attended.

    Layers that see the same window of keys share one `LayerSlots` (its
    buffers, live slots and key mask): one group in most models, two in
    Gemma 2 / 3, whose sliding layers keep only their window while the global
    layers keep every key. `windows` gives each layer's window (default
    `window` for all). `seen` counts every position processed so far and
    gives the positions of the next tokens; `seq_start_pos` holds each row's
    left padding so positions and attention skip it. Rows are reordered in
    place by `reorder` (beam search).
    """

    def __init__(self, num_layers: int, window: int | None = None, capacity: int = 0,
                 windows: list[int | None] | None = None):
        windows = list(windows) if exists(windows) else [window] * num_layers
        if len(windows) != num_layers:
            raise ValueError(f"windows must give one window per layer ({num_layers}), got {len(windows)}")
        self.num_layers = num_layers
        self.windows = windows
        # the widest window first, so `groups[0]` holds the layers that keep the most keys
        distinct = sorted(set(windows), key=lambda w: -math.inf if w is None else -w)
        self.groups = [LayerSlots(windows.count(w), w, capacity) for w in distinct]
        # layer -> (group, index of the layer in the group's buffers)
        self.layer_slot = [(distinct.index(w), windows[:i].count(w)) for i, w in enumerate(windows)]
        self.seq_start_pos: Tensor | None = None
        self.seen = 0
        self.offset = 0  # tokens of the sequence before the first position seen (a prompt cut to the window)

    @property
    def window(self) -> int | None:
        """The widest window a layer keeps (None: every key)."""
        return self.groups[0].window

    @property
    def k(self) -> Tensor | None:
        """The key buffer of the layers with the widest window (all layers, when they share one)."""
        return self.groups[0].k

    @property
    def v(self) -> Tensor | None:
        return self.groups[0].v

    @property
    def capacity(self) -> int:
        return max(g.capacity for g in self.groups)

    @property
    def batch(self) -> int | None:
        return self.groups[0].batch

    @property
    def seq_length(self) -> int:
        """Tokens of the sequence the cache has read, those a cut prompt left out (`offset`) included."""
        return self.offset + self.seen

    def live(self) -> int:
        """The most slots a layer attends to (the widest window's)."""
        return max(g.live() for g in self.groups)

    def group_of(self, layer: int) -> LayerSlots:
        return self.groups[self.layer_slot[layer][0]]

    def reserve(self, capacity: int):
        """Make the buffers, when they are first made, hold at least `capacity` slots (no effect on a cache that
        holds keys already; a windowed group reserves at most twice its window)."""
        for g in self.groups:
            g.reserve(capacity)

    # --- called once per forward, before the layers ---

    def prepare(self, n: int, key_mask: Tensor | None = None):
        """Make room for `n` new slots in every group, dropping keys that slid
        out of each window, and record which new keys may be attended (None: all)."""
        for g in self.groups:
            g.prepare(n)
            g.write_key_mask(key_mask, n)

    # --- called by each attention layer ---

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store layer's new keys and values; all the keys and values its queries see."""
        group, index = self.layer_slot[layer]
        return self.groups[group].write(index, k, v)

    # --- called once per forward, after the layers ---

    def advance(self, n: int, positions: int | None = None):
        for g in self.groups:
            g.advance(n)
        self.seen += default(positions, n)

    def keep_candidate(self, choice: Tensor):
        """After a parallel forward of k candidates, keep the chosen one's keys
        and values (per row) in the first new slot and drop the others."""
        for g in self.groups:
            g.keep_candidate(choice)
        self.seen += 1

    def reorder(self, index: Tensor):
        """Select rows (beam search): row i of the result is row index[i]."""
        for g in self.groups:
            g.reorder(index)
        if exists(self.seq_start_pos):
            self.seq_start_pos = self.seq_start_pos.index_select(0, index)

    def rollback(self, n: int, exact: bool = True):
        """Forget the last `n` positions (speculative decoding's rejected
        drafts, or a what-if branch from an earlier step): their slots are
        overwritten by the next write, and keys that slid out of a window
        for them come back into it. Keys a compaction already discarded cannot
        come back: then rolling back is refused (no group changes), or with
        `exact=False` the next query sees fewer than a window of keys (good
        enough for a draft)."""
        if not 0 <= n <= self.seen:
            raise ValueError(f"cannot roll back {n} of the {self.seen} positions held")
        if exact:
            errors = [e for g in self.groups if (e := g.rollback_error(n, self.seen))]
            if errors:
                raise ValueError(errors[0])
        for g in self.groups:
            g.rollback(n)
        self.seen -= n

    def crop(self, max_length: int):
        """Keep the first `max_length` tokens of the sequence (`seq_length`
        counts them) and forget the rest, as transformers' `DynamicCache.crop`;
        a negative `max_length` forgets that many from the end. A branch
        from an earlier step continues from a fork cropped to it. Refused
        (ValueError) below the tokens a cut prompt left out, or where a
        sliding window discarded keys the shorter sequence needs."""
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            raise ValueError(f"max_length must be an integer, got {max_length!r}")
        keep = max_length if max_length >= 0 else self.seq_length + max_length
        if not self.offset <= keep <= self.seq_length:
            raise ValueError(f"cannot crop to {max_length} tokens: the cache holds tokens {self.offset} to "
                             f"{self.seq_length} of the sequence")
        self.rollback(self.seq_length - keep)

    def fork(self) -> KVCache:
        """An independent copy holding the same keys, values and positions (a
        what-if branch continues from it while this one stays as it is): the
        slots are copied, nothing is recomputed."""
        other = KVCache(self.num_layers, windows=self.windows)
        other.groups = [g.fork() for g in self.groups]
        other.seq_start_pos, other.offset, other.seen = self.seq_start_pos, self.offset, self.seen
        return other

    def memory_bytes(self) -> int:
        return sum(g.memory_bytes() for g in self.groups)


# rope scaling types axw computes, with the parameters each one needs (the
# names transformers' configs use, `rope_parameters` / `rope_scaling`)
ROPE_SCALING = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}


def check_rope_scaling(scaling: dict | None) -> dict | None:
    """A rope scaling dict axw computes, or a ValueError naming its type or
    the parameter it lacks."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rotary_scaling must be a dict with a 'rope_type', got {scaling!r}")
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING:
        raise ValueError(
            f"rope scaling of type {kind!r} is not implemented in axw; supported: "
            + ", ".join(repr(k) for k in ROPE_SCALING)
        )
    missing = [k for k in ROPE_SCALING[kind] if not isinstance(scaling.get(k), (int, float))]
    if missing:
        raise ValueError(f"rope scaling of type {kind!r} needs the number(s) {', '.join(missing)}")
    return scaling


def rope_frequencies(dim: int, base: float, scaling: dict | None = None) -> tuple[Tensor, float]:
    """Inverse frequencies of a rotary embedding and the factor its cos and
    sin are multiplied by, as transformers' `modeling_rope_utils` computes them."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    kind = scaling["rope_type"] if scaling else None
    if kind == "linear":
        # position interpolation (Chen et al. 2023, arXiv:2306.15595): positions divided by `factor`
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn_frequencies(dim, base, scaling)
    return inv_freq, 1.0


def _llama3_frequencies(inv_freq: Tensor, s: dict) -> Tensor:
    """Llama 3.1's rope scaling (transformers' `_compute_llama3_parameters`):
    wavelengths longer than the original context / low_freq_factor are
    stretched by `factor`, those shorter than context / high_freq_factor kept,
    those between interpolated smoothly."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_frequencies(dim: int, base: float, s: dict) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv:2309.00071), as transformers'
    `_compute_yarn_parameters`: high frequencies kept, low ones interpolated
    by `factor`, a linear ramp between; cos and sin scaled by the attention factor."""
    factor, context = s["factor"], s["original_max_position_embeddings"]

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no division by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, arXiv:2104.09864), in the
    half-split layout Llama and GPT-NeoX use: channel i pairs with i + d/2.
    `scaling`: a rope scaling dict (`ROPE_SCALING`) for a context longer than
    the one trained on."""

    def __init__(self, dim: int, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        self.dim = dim
        self.base = base
        self.scaling = check_rope_scaling(scaling)
        inv_freq, self.attention_factor = rope_frequencies(dim, base, self.scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cos: Tensor | None = None  # (positions, dim) tables
        self._sin: Tensor | None = None

    def _apply(self, fn, recurse: bool = True):
        """A module cast (`model.to(torch.bfloat16)`, `.half()`, `to_empty`) leaves the frequencies in float32
        (float64 in a float64 module), computed afresh on their new device: in bf16 they would move every
        position's angle (transformers keeps them in float32 too)."""
        super()._apply(fn, recurse)
        device = self.inv_freq.device
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = rope_frequencies(self.dim, self.base, self.scaling)[0].to(device, dtype)
        self._cos = self._sin = None
        return self

    def forward(self, positions: Tensor, dtype: torch.dtype | None = None,
                limit: int | None = None) -> tuple[Tensor, Tensor]:
        """positions (n,) or (b, n) -> cos, sin broadcastable to (b, heads, n, dim),
        looked up in a table that grows with the largest position seen
        (`limit`, when the caller knows a bound, saves reading it)."""
        needed = limit if limit is not None else (int(positions.max()) + 1 if positions.numel() else 1)
        if self._cos is None or self._cos.shape[0] < needed or self._cos.device != positions.device:
            size = max(needed, 2 * (self._cos.shape[0] if self._cos is not None else 256))
            freqs = torch.arange(size, device=positions.device, dtype=torch.float32)[:, None] * self.inv_freq
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cos, self._sin = emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        cos, sin = self._cos[positions], self._sin[positions]
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    rot = cos.shape[-1]
    cos, sin = cos.to(t.dtype), sin.to(t.dtype)
    if rot == t.shape[-1]:
        return t * cos + rotate_half(t) * sin
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    return torch.cat((t_rot * cos + rotate_half(t_rot) * sin, t_pass), dim=-1)


class Attention(nn.Module):
    """Multi-head causal self-attention with grouped-query heads
    (Ainslie et al. 2023, arXiv:2305.13245) when `kv_heads < heads`.

    Options imported families need, each off by default:
    `qkv_bias` apart from the output's `bias` (Qwen2); `qk_norm`, RMSNorm of
    queries and keys before rotary (Dehghani et al. 2023, arXiv:2302.05442):
    'head' over each head's channels (Qwen3, Gemma 3), 'full' over the whole
    projection (OLMo 2, arXiv:2501.00656); `scale` other than dim_head ** -0.5
    (Gemma's query_pre_attn_scalar); `softcap`, tanh soft-capping of the
    attention logits (Gemma 2, arXiv:2408.00118), which runs attention written
    out since fused kernels cannot cap."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        kv_heads: int | None = None,
        dropout: float = 0.0,
        bias: bool = False,
        qkv_bias: bool | None = None,
        qk_norm: str | None = None,
        norm_kwargs: dict | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        kv_heads = default(kv_heads, heads)
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
        self.heads, self.kv_heads, self.dim_head = heads, kv_heads, dim_head
        self.scale = default(scale, dim_head ** -0.5)
        self.softcap = softcap
        self.dropout = dropout
        self.to_qkv = Linear(dim, (heads + 2 * kv_heads) * dim_head, bias=default(qkv_bias, bias))
        self.to_out = Linear(heads * dim_head, dim, bias=bias)
        self.qk_norm = qk_norm
        if exists(qk_norm):  # the decoder's norm, RMS here whatever the decoder uses
            kwargs = {**(norm_kwargs or {}), "rms": True, "bias": False}
            self.q_norm = Norm(dim_head if qk_norm == "head" else heads * dim_head, **kwargs)
            self.k_norm = Norm(dim_head if qk_norm == "head" else kv_heads * dim_head, **kwargs)

    def forward(
        self,
        x: Tensor,
        *,
        rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        return_lse: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        q, k, v = self.project(x, rotary)
        if exists(cache):
            k, v = cache.write(layer, k, v)
        out, lse = self.attend(q, k, v, attn_mask, is_causal, return_lse)
        return self.to_out(out), lse

    def forward_rows(self, x: Tensor, *, rotary: tuple[Tensor, Tensor] | None, caches: list[KVCache],
                     parts: list[int], layer: int, masks: list[tuple[Tensor | None, bool]]) -> Tensor:
        """`forward` for the rows of several runs (`axw.shared`): `parts` rows each, in order, each run with its
        own cache and mask, so each attends only to its own keys, as it would alone."""
        q, k, v = self.project(x, rotary)
        heads = []
        for q_i, k_i, v_i, cache, (mask, causal) in zip(q.split(parts), k.split(parts), v.split(parts), caches,
                                                         masks):
            k_i, v_i = cache.write(layer, k_i, v_i)
            heads.append(self.heads_out(q_i, k_i, v_i, mask, causal)[0])
        return self.to_out(self.merge(torch.cat(heads)))

    def project(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (b, heads, n, d), keys and values (b, kv_heads, n, d) of x (b, n, dim), normalised and
        rotated as the options ask."""
        b, n, _ = x.shape
        h, kvh, d = self.heads, self.kv_heads, self.dim_head
        qkv = self.to_qkv(x).view(b, n, h + 2 * kvh, d)
        if exists(self.qk_norm):
            qkv = self._norm_qk(qkv)
        qkv = qkv.transpose(1, 2)
        qk, v = qkv[:, :h + kvh], qkv[:, h + kvh:]
        if exists(rotary):
            qk = apply_rotary(qk, *rotary)  # queries and keys in one pass
        return qk[:, :h], qk[:, h:], v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
               return_lse: bool = False) -> tuple[Tensor, Tensor | None]:
        """The heads' outputs, (b, n, heads * d) before the output projection, and with `return_lse` (or
        soft-capping) each query's logsumexp."""
        out, lse = self.heads_out(q, k, v, attn_mask, is_causal, return_lse)
        return self.merge(out), lse

    def heads_out(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                  return_lse: bool = False) -> tuple[Tensor, Tensor | None]:
        """`attend` before the heads are merged: each head's output (b, heads, n, d), and the lse."""
        dropout = self.dropout if self.training else 0.0
        if return_lse or exists(self.softcap):
            return self._explicit(q, k, v, attn_mask, is_causal, dropout)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout,
            enable_gqa=self.kv_heads != q.shape[1], scale=self.scale,
        ), None

    @staticmethod
    def merge(heads: Tensor) -> Tensor:
        """(b, heads, n, d) -> (b, n, heads * d), the output projection's input."""
        b, h, n, d = heads.shape
        return heads.transpose(1, 2).reshape(b, n, h * d)

    def _norm_qk(self, qkv: Tensor) -> Tensor:
        """qkv (b, n, heads + 2 kv_heads, d) with queries and keys normalised."""
        b, n = qkv.shape[:2]
        h, kvh = self.heads, self.kv_heads
        q, k, v = qkv[:, :, :h], qkv[:, :, h:h + kvh], qkv[:, :, h + kvh:]
        if self.qk_norm == "full":
            q = self.q_norm(q.reshape(b, n, -1)).view_as(q)
            k = self.k_norm(k.reshape(b, n, -1)).view_as(k)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        return torch.cat((q, k, v), dim=2)

    def _explicit(self, q, k, v, attn_mask, is_causal, dropout):
        """Attention written out, for when the pre-softmax logits are needed
        (the attention z-loss) or changed (soft-capping): returns the output
        and logsumexp per query."""
        if self.kv_heads != self.heads:
            groups = self.heads // self.kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if exists(self.softcap):
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if is_causal:
            i, j = scores.shape[-2:]
            attn_mask = torch.ones((i, j), dtype=torch.bool, device=q.device).tril(j - i)
        if exists(attn_mask):
            scores = scores.masked_fill(~attn_mask, -math.inf)
        lse = scores.logsumexp(dim=-1)
        attn = (scores - lse[..., None]).exp()
        attn = F.dropout(attn, p=dropout, training=dropout > 0)
        return attn @ v, lse
