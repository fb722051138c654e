"""The network: token and position embeddings, a pre-norm causal decoder, and
the wrapper that turns token ids into logits.

`Decoder` and `TransformerWrapper` take x-transformers' argument names for
the subset they implement, so `from axw import TransformerWrapper, Decoder`
replaces `from x_transformers import ...`. The options imported checkpoint
families need (`axw.families`: biases, RMSNorm, SwiGLU / GeGLU, grouped-query
attention, rope scaling, qk-norm, soft-capping, sliding-window layers, ...)
are ordinary constructor arguments, each off by default.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attention import QK_NORMS, Attention, KVCache, RotaryEmbedding, check_rope_scaling
from .kernels import Linear, Norm, TokenEmbedding, lay_out_head, native_bf16_forward, shared_rows
from .utils import ConfigMixin, build_config, check_number, default, exists

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


@dataclass
class Intermediates:
    """What `TransformerWrapper(..., return_intermediates=True)` returns beside
    the logits. Pass it back as `cache=` to run only new positions."""

    cache: KVCache | None = None
    last_hidden: Tensor | None = None  # final-norm hidden states of the positions run
    attn_z_loss: Tensor | None = None
    initial_embeds: Tensor | None = None  # token + position embeddings of the positions run
    next_embed_pred: Tensor | None = None
    extra: dict = field(default_factory=dict)


class FeedForward(nn.Module):
    """Position-wise MLP; with `glu` a gated unit (Shazeer 2020,
    arXiv:2002.05202), SwiGLU when the activation is SiLU."""

    def __init__(self, dim, inner_dim, activation="gelu", glu=False, bias=True, dropout=0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"ff activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.glu = glu
        self.proj_in = Linear(dim, inner_dim * (2 if glu else 1), bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.proj_out = Linear(inner_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        if self.glu:
            gate, up = x.chunk(2, dim=-1)
            # contiguous: a view of several rows can take another (differently rounded) elementwise kernel than
            # one row's, and `axw.shared` gives each run the bits it gets alone (a no-op for one row)
            x = self.act(gate.contiguous()) * up
        else:
            x = self.act(x)
        return self.proj_out(self.dropout(x) if self.training else x)


# which rotary table a layer reads: `Decoder.forward` indexes its tuple of tables with these
NO_ROTARY, GLOBAL_ROTARY, LOCAL_ROTARY = 0, 1, 2
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names


class Block(nn.Module):
    """One layer: attention then feed-forward, each a residual branch with a
    norm before it (unless `pre_norm=False`) and, with `post_norm`, one on its
    output before the residual add."""

    def __init__(self, dim, attn: Attention, ff: FeedForward, norm_kwargs: dict, pre_norm: bool = True,
                 post_norm: bool = False, sliding: bool = False, rotary: int = GLOBAL_ROTARY):
        super().__init__()
        self.attn_norm = Norm(dim, **norm_kwargs) if pre_norm else None
        self.attn = attn
        self.attn_post_norm = Norm(dim, **norm_kwargs) if post_norm else None
        self.ff_norm = Norm(dim, **norm_kwargs) if pre_norm else None
        self.ff = ff
        self.ff_post_norm = Norm(dim, **norm_kwargs) if post_norm else None
        self.sliding = sliding  # attends a sliding window of keys, not all
        self.rotary = rotary

    def run(self, x: Tensor, attention) -> tuple[Tensor, Tensor | None]:
        """The residual stream x after this layer, and the attention's logsumexp (or None); `attention(h)` is
        the attention branch, (its output, its lse), of the normed stream h."""
        h = x if self.attn_norm is None else self.attn_norm(x)
        out, lse = attention(h)
        x = x + (out if self.attn_post_norm is None else self.attn_post_norm(out))
        out = self.ff(x if self.ff_norm is None else self.ff_norm(x))
        return x + (out if self.ff_post_norm is None else self.ff_post_norm(out)), lse


@dataclass
class DecoderConfig(ConfigMixin):
    """Every option of `Decoder`: what `save_pretrained` writes and
    `from_pretrained` reads. Options beyond x-transformers' basic ones exist for
    imported checkpoints: `attn_bias` (GPT-2), `use_rmsnorm`, `ff_glu` +
    `ff_swish`, `attn_kv_heads`, `rotary_emb_base` (Llama),
    `ff_activation='gelu_tanh'` and `norm_bias` (GPT-2); and those below the
    line, each documented where it is declared, for the other families
    (`axw.families`). Every one of them is usable from scratch."""

    dim: int
    depth: int
    heads: int = 8
    dim_head: int = 64
    attn_kv_heads: int | None = None
    attn_dropout: float = 0.0
    attn_bias: bool = False
    ff_mult: float = 4
    ff_inner_dim: int | None = None  # default int(dim * ff_mult)
    ff_glu: bool = False
    ff_swish: bool = False
    ff_activation: str | None = None  # default silu with ff_swish, else gelu
    ff_no_bias: bool = False
    ff_dropout: float = 0.0
    use_rmsnorm: bool = False
    norm_bias: bool = False
    norm_eps: float = 1e-5
    rotary_pos_emb: bool = False
    rotary_emb_dim: int | None = None  # default dim_head
    rotary_emb_base: float = 10000.0

    # q/k/v projections biased apart from the output one (Qwen2); None: as attn_bias
    attn_qkv_bias: bool | None = None
    # RMSNorm of queries and keys (Dehghani et al. 2023, arXiv:2302.05442): 'head'
    # normalises each head (Qwen3, Gemma 3), 'full' the whole projection (OLMo 2)
    attn_qk_norm: str | None = None
    # attention logits' scale; None: dim_head ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_scale: float | None = None
    # tanh soft-capping of attention logits, cap * tanh(logit / cap) (Gemma 2, arXiv:2408.00118)
    attn_softcap: float | None = None
    # keys each query of a sliding layer sees, itself included (Mistral, arXiv:2310.06825;
    # Longformer, arXiv:2004.05150); which layers slide: `layer_types`
    sliding_window: int | None = None
    # per layer 'full_attention' or 'sliding_attention' (transformers' names); None: every
    # layer slides when sliding_window is set (Mistral), else none; alternating in Gemma 2 / 3
    layer_types: list[str] | None = None
    # rope scaling of the rotary positions, transformers' dict: {'rope_type': 'linear' |
    # 'llama3' | 'yarn', ...} (axw.attention.ROPE_SCALING lists each one's parameters)
    rotary_scaling: dict | None = None
    # rotary base of sliding layers, unscaled (Gemma 3's rope_local_base_freq); None: rotary_emb_base
    rotary_emb_base_local: float | None = None
    # layers without positions (NoPE, Kazemnejad et al. 2023, arXiv:2305.19466; SmolLM3)
    nope_layers: list[int] | None = None
    # RMSNorm scale 1 + weight (Gemma)
    norm_unit_offset: bool = False
    # norm each branch's input (pre-norm); False: OLMo 2's, which norms outputs only
    pre_norm: bool = True
    # norm each branch's output before the residual add (Gemma 2's norms before and after
    # each block, arXiv:2408.00118; OLMo 2, arXiv:2501.00656)
    post_branch_norm: bool = False

    # x-transformers' names for options axw has under another name, and its
    # options that change nothing here (attention already runs through
    # PyTorch's fused SDPA kernels)
    ALIASES = {"attn_dim_head": "dim_head"}
    NO_OPS = {"attn_flash": (True, False)}

    def __post_init__(self):
        for name in ("dim", "depth", "heads", "dim_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("attn_dropout", "ff_dropout"):
            check_number(getattr(self, name), name, 0.0, 1.0, high_open=True)
        kv_heads = default(self.attn_kv_heads, self.heads)
        if not isinstance(kv_heads, int) or kv_heads < 1 or self.heads % kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({kv_heads})")
        self.ff_activation = default(self.ff_activation, "silu" if self.ff_swish else "gelu")
        if self.ff_activation not in ACTIVATIONS:
            raise ValueError(f"ff activation must be one of {sorted(ACTIVATIONS)}, got {self.ff_activation!r}")
        self.ff_inner_dim = default(self.ff_inner_dim, int(self.dim * self.ff_mult))
        check_number(self.ff_inner_dim, "ff_inner_dim", 1, integer=True)
        if self.rotary_pos_emb:
            rot = default(self.rotary_emb_dim, self.dim_head)
            if rot > self.dim_head:
                raise ValueError(f"rotary_emb_dim ({rot}) cannot exceed dim_head ({self.dim_head})")
            if rot % 2:
                raise ValueError(f"rotary dimension must be even, got {rot}")
            check_rope_scaling(self.rotary_scaling)
        if self.attn_qk_norm not in QK_NORMS:
            raise ValueError(f"attn_qk_norm must be one of {QK_NORMS}, got {self.attn_qk_norm!r}")
        for name in ("attn_scale", "attn_softcap"):
            if exists(getattr(self, name)):
                check_number(getattr(self, name), name, 0.0, low_open=True)
        if exists(self.sliding_window):
            check_number(self.sliding_window, "sliding_window", 1, integer=True)
        if exists(self.layer_types):
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.depth or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(f"layer_types must list one of {LAYER_TYPES} per layer ({self.depth}), "
                                 f"got {self.layer_types!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types has sliding layers but sliding_window is not set")
        if exists(self.nope_layers):
            self.nope_layers = sorted(set(self.nope_layers))
            if not all(isinstance(i, int) and 0 <= i < self.depth for i in self.nope_layers):
                raise ValueError(f"nope_layers must be layer indices in [0, {self.depth}), got {self.nope_layers!r}")

    def sliding_layers(self) -> list[bool]:
        """Per layer, whether it attends a sliding window."""
        if self.sliding_window is None:
            return [False] * self.depth
        if self.layer_types is None:
            return [True] * self.depth
        return [t == "sliding_attention" for t in self.layer_types]

    def layer_rotary(self, i: int, sliding: bool) -> int:
        """Which rotary table layer i reads (NO_ROTARY, GLOBAL_ROTARY or LOCAL_ROTARY)."""
        if not self.rotary_pos_emb or i in (self.nope_layers or ()):
            return NO_ROTARY
        return LOCAL_ROTARY if sliding and exists(self.rotary_emb_base_local) else GLOBAL_ROTARY


class Decoder(nn.Module):
    """Pre-norm causal transformer layers with a final norm.

    `Decoder(dim=512, depth=6, heads=8)` as in x-transformers, or
    `Decoder(DecoderConfig(...))`; every option is a `DecoderConfig` field.
    x-transformers options axw does not implement are refused by name."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        config = self.config = build_config(DecoderConfig, args, kwargs, "Decoder")
        self.dim, self.depth, self.heads = config.dim, config.depth, config.heads
        self.kv_heads = default(config.attn_kv_heads, config.heads)
        self.dim_head = config.dim_head
        norm_kwargs = dict(rms=config.use_rmsnorm, bias=config.norm_bias, eps=config.norm_eps,
                           unit_offset=config.norm_unit_offset)
        sliding = config.sliding_layers()
        # the KV cache keeps only the window of each sliding layer, in a group of its own when
        # other layers keep more (Gemma 2 / 3: `KVCache.groups`)
        self.sliding_window = config.sliding_window if any(sliding) else None
        self.all_sliding = all(sliding)

        self.layers = nn.ModuleList(
            Block(
                config.dim,
                Attention(config.dim, config.heads, config.dim_head, config.attn_kv_heads, config.attn_dropout,
                          bias=config.attn_bias, qkv_bias=config.attn_qkv_bias, qk_norm=config.attn_qk_norm,
                          norm_kwargs=norm_kwargs, scale=config.attn_scale, softcap=config.attn_softcap),
                FeedForward(config.dim, config.ff_inner_dim, config.ff_activation, config.ff_glu,
                            bias=not config.ff_no_bias, dropout=config.ff_dropout),
                norm_kwargs,
                pre_norm=config.pre_norm,
                post_norm=config.post_branch_norm,
                sliding=sliding[i],
                rotary=config.layer_rotary(i, sliding[i]),
            )
            for i in range(config.depth)
        )
        self.final_norm = Norm(config.dim, **norm_kwargs)
        self.reset_rotary()

    def reset_rotary(self):
        """(Re)build the rotary tables, which are not saved with the weights."""
        config = self.config
        self.rotary = self.rotary_local = None
        if config.rotary_pos_emb:
            dim = default(config.rotary_emb_dim, config.dim_head)
            self.rotary = RotaryEmbedding(dim, config.rotary_emb_base, config.rotary_scaling)
            if any(block.rotary == LOCAL_ROTARY for block in self.layers):
                self.rotary_local = RotaryEmbedding(dim, config.rotary_emb_base_local)

    @native_bf16_forward
    def forward(
        self,
        x: Tensor,
        *,
        positions: Tensor,
        cache: KVCache | None = None,
        key_mask: Tensor | None = None,
        parallel: bool = False,
        window: int | None = None,
        return_lse: bool = False,
        max_position: int | None = None,
        keep_layers: dict | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """x (b, n, dim) at `positions` ((n,) or (b, n)); `key_mask` (b, n)
        marks which new positions may be attended as keys; with `window`, each
        query sees at most that many keys, itself included (sliding window);
        `max_position`, a bound on the positions when the caller knows one.
        Sliding layers see at most `sliding_window` keys whatever `window` is.
        `keep_layers`: a dict keyed by layer numbers (0: the input embeddings,
        i: the output of the i-th layer, depth: the last, before the final
        norm); each key gets those hidden states (b, n, dim), from this one
        pass (DoLa, the logit lens)."""
        n = x.shape[1]
        if exists(cache):
            cache.prepare(n, key_mask)
        windows = self.cache_windows(window)
        rotary = self._rotary(positions, x.dtype, max_position)
        masks = self._layer_masks(x, n, cache, key_mask, parallel, windows)
        lses = []
        if exists(keep_layers) and 0 in keep_layers:
            keep_layers[0] = x
        for i, block in enumerate(self.layers):
            x, lse = block.run(x, lambda h: block.attn(
                h, rotary=rotary[block.rotary], cache=cache, layer=i,
                attn_mask=masks[i][0], is_causal=masks[i][1], return_lse=return_lse,
            ))
            if return_lse:
                lses.append(lse)
            if exists(keep_layers) and i + 1 in keep_layers:
                keep_layers[i + 1] = x

        if exists(cache) and not parallel:
            cache.advance(n)
        return self.final_norm(x), lses

    @native_bf16_forward
    def forward_rows(self, x: Tensor, *, positions: Tensor, caches: list[KVCache], parts: list[int],
                     key_masks: list[Tensor | None], window: int | None = None,
                     max_position: int | None = None) -> Tensor:
        """`forward` (cached, no lse) for the rows of several runs in one pass (`axw.shared`): `parts` rows
        each, in order, each run with its own cache, key mask and positions (b, n), each run's attention over
        its own keys; the Linear layers compute each run's rows as they would alone (`kernels.shared_rows`,
        which the caller holds)."""
        n = x.shape[1]
        for cache, key_mask in zip(caches, key_masks):
            cache.prepare(n, key_mask)
        windows = self.cache_windows(window)
        rotary = self._rotary(positions, x.dtype, max_position)
        masks = [self._layer_masks(x, n, cache, key_mask, False, windows)
                 for cache, key_mask in zip(caches, key_masks)]
        for i, block in enumerate(self.layers):
            x, _ = block.run(x, lambda h: (block.attn.forward_rows(
                h, rotary=rotary[block.rotary], caches=caches, parts=parts, layer=i, masks=[m[i] for m in masks],
            ), None))
        for cache in caches:
            cache.advance(n)
        return self.final_norm(x)

    def _rotary(self, positions: Tensor, dtype: torch.dtype, max_position: int | None) -> list:
        """The rotary tables of `positions`, indexed by `Block.rotary` (None where a layer has none)."""
        rotary = [None, None, None]
        limit = max_position + 1 if exists(max_position) else None
        if exists(self.rotary):
            rotary[GLOBAL_ROTARY] = self.rotary(positions, dtype, limit)
        if exists(self.rotary_local):
            rotary[LOCAL_ROTARY] = self.rotary_local(positions, dtype, limit)
        return rotary

    def _layer_masks(self, x: Tensor, n: int, cache: KVCache | None, key_mask: Tensor | None, parallel: bool,
                     windows: list[int | None]) -> list[tuple[Tensor | None, bool]]:
        """Per layer, (attention mask, is_causal): one per (cache group, window) the layers use."""
        masks, per_layer = {}, []
        for i in range(len(self.layers)):
            mask_of = (cache.layer_slot[i][0] if exists(cache) else 0, windows[i])
            if mask_of not in masks:
                group = cache.groups[mask_of[0]] if exists(cache) else None
                past, keys = (group.live(), group.keys()) if exists(group) else (0, key_mask)
                masks[mask_of] = self._attention_mask(x, n, past, keys, parallel, mask_of[1])
            per_layer.append(masks[mask_of])
        return per_layer

    def layer_window(self, block: Block, window: int | None) -> int | None:
        """Keys a query of `block` sees, itself included, under a model-wide `window` (None: all)."""
        if not block.sliding:
            return window
        return self.sliding_window if window is None else min(window, self.sliding_window)

    def cache_windows(self, window: int | None) -> list[int | None]:
        """Per layer, the keys a KV cache keeps for it: sliding layers only their window."""
        return [self.layer_window(block, window) for block in self.layers]

    @staticmethod
    def _attention_mask(x, n, past, keys, parallel, window):
        """One boolean mask (True = attend), or None with `is_causal` when
        plain causal attention is all that is needed."""
        device = x.device
        # in a parallel forward every query is at position `past`
        banded = exists(window) and past + (1 if parallel else n) > window
        if keys is None and not banded and (n == 1 or (past == 0 and not parallel)):
            return None, n > 1

        m = past + n
        q_idx = torch.arange(n, device=device)[:, None]
        k_idx = torch.arange(m, device=device)[None, :]
        diagonal = k_idx == q_idx + past
        q_pos = past if parallel else q_idx + past
        allowed = (k_idx < past) | diagonal if parallel else k_idx <= q_pos
        if banded:
            allowed = allowed & ((k_idx > q_pos - window) | diagonal)
        if keys is None:
            return allowed, False
        allowed = allowed & keys[:, None, None, :]
        # a query that may see no key at all (a left-pad position) sees itself,
        # so softmax stays finite and no NaN flows into real positions
        blind = ~allowed.any(dim=-1, keepdim=True)
        return allowed | (blind & diagonal), False


@dataclass
class TransformerConfig(ConfigMixin):
    """Every option of `TransformerWrapper` but its `attn_layers`."""

    num_tokens: int
    max_seq_len: int
    emb_dropout: float = 0.0
    tie_embedding: bool = False
    use_abs_pos_emb: bool = True
    add_continuous_pred_head: bool = False
    attn_z_loss_weight: float = 1e-4
    # token embeddings times sqrt(dim) (Gemma; Vaswani et al. 2017, section 3.4), the tied head unscaled
    scale_emb: bool = False
    # tanh soft-capping of the output logits, cap * tanh(logit / cap) (Gemma 2, arXiv:2408.00118)
    logit_softcap: float | None = None

    ALIASES = {}
    NO_OPS = {}

    def __post_init__(self):
        for name in ("num_tokens", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_number(self.emb_dropout, "emb_dropout", 0.0, 1.0, high_open=True)
        if exists(self.logit_softcap):
            check_number(self.logit_softcap, "logit_softcap", 0.0, low_open=True)


class TransformerWrapper(nn.Module):
    """Token ids -> logits. `forward(x)` gives (batch, seq, num_tokens) logits;
    `return_intermediates=True` also gives an `Intermediates` holding the KV
    cache; `cache=intermediates` runs only the positions not yet cached.

    `TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers=Decoder(...))`
    as in x-transformers; every other option is a `TransformerConfig` field."""

    def __init__(self, *, attn_layers: Decoder, config: TransformerConfig | None = None, **kwargs):
        super().__init__()
        if not isinstance(attn_layers, Decoder):
            raise ValueError("attn_layers must be an axw Decoder")
        config = self.config = build_config(TransformerConfig, (config,) if exists(config) else (), kwargs,
                                            "TransformerWrapper")
        dim = attn_layers.dim
        self.num_tokens, self.max_seq_len = config.num_tokens, config.max_seq_len
        self.attn_z_loss_weight = config.attn_z_loss_weight
        self.emb_scale = dim ** 0.5 if config.scale_emb else None
        self.logit_softcap = config.logit_softcap
        self.token_emb = TokenEmbedding(config.num_tokens, dim)
        self.pos_emb = nn.Embedding(config.max_seq_len, dim) if config.use_abs_pos_emb else None
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.attn_layers = attn_layers
        self.to_logits = None if config.tie_embedding else Linear(dim, config.num_tokens, bias=False)
        self.add_continuous_pred_head = config.add_continuous_pred_head
        if config.add_continuous_pred_head:
            self.to_next_embed_pred = nn.Sequential(
                nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False)
            )
        # past max_seq_len, absolute positions have no embedding; rotary ones slide
        self.can_cache_kv_outside_max_seq_len = not config.use_abs_pos_emb
        self.can_cache_kv = True
        self.apply(self._init_weights)
        for block in attn_layers.layers:
            # GPT-2: scale residual projections by depth so the stream's variance stays put
            for proj in (block.attn.to_out, block.ff.proj_out):
                nn.init.normal_(proj.weight, std=0.02 / (2 * attn_layers.depth) ** 0.5)
        self._lay_out_head()

    def _lay_out_head(self):
        """The output head's layout for its device and dtype (`kernels.lay_out_head`)."""
        lay_out_head(self.token_emb.weight if self.to_logits is None else self.to_logits.weight)

    def _apply(self, fn, recurse=True):
        """`.to(...)`, `.cuda()`, `.half()`, ...: after a move or a cast the head takes the layout that suits it."""
        out = super()._apply(fn, recurse)
        self._lay_out_head()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, after a check that these are not
        x-transformers' weights (`axw.from_x_transformers` converts those)."""
        refuse_x_transformers_keys(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def dim(self) -> int:
        return self.attn_layers.dim

    def new_cache(self, capacity: int = 0) -> KVCache:
        layers = self.attn_layers
        return KVCache(layers.depth, capacity=capacity, windows=layers.cache_windows(self._window()))

    @native_bf16_forward
    def logits(self, hidden: Tensor) -> Tensor:
        logits = self.token_emb.logits(hidden) if self.to_logits is None else self.to_logits(hidden)
        if exists(self.logit_softcap):
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def logits_rows(self, hidden: Tensor) -> Tensor:
        """`logits` of hidden (k, dim), the rows of k runs (`axw.shared`), each row's the bits `logits` gives it
        alone: the head computes each row as it would alone (`kernels.shared_rows`), in one product where that
        gives the same bits."""
        if self.to_logits is None:  # the tied head's product takes the rows together: each on its own
            return torch.cat([self.logits(row) for row in hidden.split(1)])
        with shared_rows([1] * hidden.shape[0]):
            return self.logits(hidden)

    def _embed(self, x: Tensor, seen: int, seq_start_pos: Tensor | None, parallel: bool = False,
               key_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Token (+ absolute position) embeddings of new tokens x (b, n) that
        follow `seen` earlier positions; returns them with their positions and
        which of them may be attended as keys (left padding may not)."""
        n = x.shape[1]
        positions = (torch.full((n,), seen, device=x.device) if parallel
                     else torch.arange(seen, seen + n, device=x.device))
        if exists(seq_start_pos):
            # left padding: positions start at each row's first real token
            key_mask = _and(key_mask, positions[None, :] >= seq_start_pos[:, None])
            positions = (positions[None, :] - seq_start_pos[:, None]).clamp(min=0)
        return self._token_embeddings(x, positions, seen + (0 if parallel else n - 1)), positions, key_mask

    def _token_embeddings(self, x: Tensor, positions: Tensor, last: int) -> Tensor:
        """The embeddings of tokens x at `positions` (absolute position embeddings added, where the model has
        them); `last`: the furthest position, refused past max_seq_len when positions are embedded."""
        tokens = self.token_emb(x)
        if exists(self.emb_scale):
            tokens = tokens * _in_dtype(self.emb_scale, tokens.dtype)
        if exists(self.pos_emb):
            if last >= self.max_seq_len:
                raise ValueError(
                    f"position {last} is past max_seq_len={self.max_seq_len}: absolute position embeddings stop "
                    "there; build the model with rotary_pos_emb=True and use_abs_pos_emb=False to decode further"
                )
            tokens = tokens + self.pos_emb(positions)
        return tokens

    def layer_logits(self, hidden: Tensor) -> Tensor:
        """Logits of any layer's hidden states: the final norm and the head
        applied to them (the logit lens; DoLa's early exits)."""
        return self.logits(self.attn_layers.final_norm(hidden))

    def decode(self, x: Tensor, cache: KVCache, parallel: bool = False, keep_layers: dict | None = None) -> Tensor:
        """Final hidden states (b, n, dim) of new tokens x (b, n) run through
        `cache`, which they extend: the decoding loops' path (prefill and
        `decode_one_token`), free of `forward`'s compatibility flags. Left
        padding comes from `cache.seq_start_pos`; `parallel`: the tokens are
        alternatives for one position (contrastive search); `keep_layers`:
        as `Decoder.forward` takes it."""
        h, positions, key_mask = self._embed(x, cache.seen, cache.seq_start_pos, parallel)
        if self.training:
            h = self.emb_dropout(h)
        hidden, _ = self.attn_layers(h, positions=positions, cache=cache, key_mask=key_mask, parallel=parallel,
                                     window=self._window(), max_position=cache.seen + x.shape[1] - 1,
                                     keep_layers=keep_layers)
        return hidden

    def decode_rows(self, xs: list[Tensor], caches: list[KVCache], exact: bool = True) -> list[Tensor]:
        """`decode` for several runs in one forward (`axw.shared`): new tokens xs[i] (b_i, n), one n for all,
        each run through its own cache; each run's final hidden states (b_i, n, dim), the bits `decode` gives
        it alone. With `exact` off, each Linear is one product over every run's rows (the weights read once, but
        the rounding then depends on how many rows there are: equal to `decode`'s within float error, not bit for
        bit). Inference only (dropout would draw for the rows together)."""
        if self.training:
            raise ValueError("decode_rows runs at inference: call model.eval() first")
        n = xs[0].shape[1]
        if any(x.shape[1] != n for x in xs):
            raise ValueError(f"decode_rows takes one number of new tokens for every run, got {[x.shape[1] for x in xs]}")
        parts = [x.shape[0] for x in xs]
        last = max(cache.seen for cache in caches) + n - 1
        if xs[0].device.type == "cpu" and all(cache.seq_start_pos is None for cache in caches):
            # no left padding: every row's positions follow its cache's, and one lookup embeds every run's tokens
            # (each row's embedding is its own lookup and sum whatever rows go with it); on the CPU only, where
            # the positions are made in place (on a GPU they would be copied over, and the calls cost little)
            positions = torch.tensor([list(range(cache.seen, cache.seen + n)) for cache, b in zip(caches, parts)
                                      for _ in range(b)])
            tokens, key_masks = self._token_embeddings(torch.cat(xs), positions, last), [None] * len(xs)
        else:
            embedded = [self._embed(x, cache.seen, cache.seq_start_pos) for x, cache in zip(xs, caches)]
            positions = torch.cat([p.expand(b, n) for (_, p, _), b in zip(embedded, parts)])
            tokens, key_masks = torch.cat([h for h, _, _ in embedded]), [mask for _, _, mask in embedded]
        with shared_rows(parts if exact else [sum(parts)]):
            hidden = self.attn_layers.forward_rows(tokens, positions=positions, caches=caches, parts=parts,
                                                   key_masks=key_masks, window=self._window(), max_position=last)
        return list(hidden.split(parts))

    def _window(self) -> int | None:
        """Keys a query of a global layer may see, itself included: past
        max_seq_len a rotary model slides. Sliding layers see less
        (`Decoder.layer_window`); the KV cache keeps no more for each."""
        return self.max_seq_len if self.can_cache_kv_outside_max_seq_len else None

    def _uncached(self, x: Tensor, cache: Intermediates | KVCache | None, mask: Tensor | None,
                  self_attn_kv_mask: Tensor | None, input_not_include_cache: bool, new_cache: bool):
        """(x, the KV cache, mask, self_attn_kv_mask) for the positions a
        forward runs: with a cache, the tokens of x it has not read (x holds
        the whole sequence, x-transformers' contract, unless
        `input_not_include_cache`); without one, all of x, and a new cache
        when `new_cache`."""
        kv_cache = cache.cache if isinstance(cache, Intermediates) else cache
        if exists(cache) and kv_cache is None:
            raise ValueError("cache holds no keys and values: run the first pass with return_intermediates=True")
        if exists(kv_cache) and not input_not_include_cache:
            if x.shape[1] <= kv_cache.seen:
                raise ValueError(
                    f"with a cache of {kv_cache.seen} positions, x must hold the whole sequence and at least one "
                    f"new token; got {x.shape[1]} tokens"
                )
            x = x[:, kv_cache.seen:]
            mask = mask[:, -x.shape[1]:] if exists(mask) else None
            self_attn_kv_mask = self_attn_kv_mask[:, -x.shape[1]:] if exists(self_attn_kv_mask) else None
        if kv_cache is None and new_cache:
            kv_cache = self.new_cache()
        return x, kv_cache, mask, self_attn_kv_mask

    def forward(
        self,
        x: Tensor,
        return_intermediates: bool = False,
        cache: Intermediates | KVCache | None = None,
        mask: Tensor | None = None,
        self_attn_kv_mask: Tensor | None = None,
        seq_start_pos: Tensor | None = None,
        prepend_embeds: Tensor | None = None,
        return_attn_z_loss: bool = False,
        return_next_embed_pred: bool = False,
        return_embeddings: bool = False,
        return_cache: bool = True,
        input_not_include_cache: bool = False,
        parallel: bool = False,
    ):
        """
        x: (batch, n) token ids. With `cache`, x holds the whole sequence so far
            (x-transformers' contract) and only the uncached tail is run, unless
            `input_not_include_cache`, when x is only the new tokens.
        mask / self_attn_kv_mask: (batch, n) bools, False hides that position as
            a key (padding, or masked training).
        seq_start_pos: (batch,) count of left-padding tokens per row: positions
            start after it and the padding is never attended.
        parallel: the new tokens are alternatives for the same next position,
            each attending to the cache and itself (contrastive search).
        """
        x, kv_cache, mask, self_attn_kv_mask = self._uncached(x, cache, mask, self_attn_kv_mask,
                                                              input_not_include_cache,
                                                              return_intermediates and return_cache)
        if exists(kv_cache) and exists(prepend_embeds) and kv_cache.seen > 0:
            raise ValueError("prepend_embeds can only be given on the first pass, not with a filled cache")

        seen = kv_cache.seen if exists(kv_cache) else 0
        if exists(kv_cache):
            if exists(seq_start_pos):
                kv_cache.seq_start_pos = seq_start_pos
            seq_start_pos = kv_cache.seq_start_pos

        key_mask = _and(mask, self_attn_kv_mask)
        tokens, positions, key_mask = self._embed(x, seen, seq_start_pos, parallel, key_mask=key_mask)
        initial_embeds = tokens

        h = tokens
        if exists(prepend_embeds):
            h, positions, key_mask = _prepend(prepend_embeds, h, positions, key_mask, seen)
        h = self.emb_dropout(h)

        hidden, lses = self.attn_layers(
            h, positions=positions, cache=kv_cache, key_mask=key_mask, parallel=parallel,
            window=self._window(),
            return_lse=return_attn_z_loss,
        )
        out = hidden if return_embeddings else self.logits(hidden)

        if not return_intermediates and not return_attn_z_loss and not return_next_embed_pred:
            return out

        inter = Intermediates(cache=kv_cache, last_hidden=hidden, initial_embeds=initial_embeds)
        if return_attn_z_loss:
            inter.attn_z_loss = attn_z_loss(lses) * self.attn_z_loss_weight
        if return_next_embed_pred:
            if not self.add_continuous_pred_head:
                raise ValueError("return_next_embed_pred needs a net built with add_continuous_pred_head=True")
            inter.next_embed_pred = self.to_next_embed_pred(hidden)
        return out, inter


# x-transformers' weight names: its token embedding's inner `emb`, its layers' (norms, block, residual) triples
XT_KEY = re.compile(r"(^|\.)(token_emb\.emb\.weight$|attn_layers\.layers\.\d+\.\d+\.)")


def refuse_x_transformers_keys(state_dict: Mapping[str, Tensor]):
    """A ValueError pointing to `axw.from_x_transformers` for a state dict in x-transformers' names."""
    found = [k for k in state_dict if XT_KEY.search(k)]
    if found:
        raise ValueError(
            f"these are x-transformers weights ({found[0]!r}, ...), whose names and layout differ from axw's: "
            "convert them with axw.from_x_transformers(state_dict, num_tokens=..., max_seq_len=..., "
            "attn_layers=dict(dim=..., depth=..., ...)), or from_x_transformers(model) for the model itself")


def _prepend(embeds: Tensor, h: Tensor, positions: Tensor, key_mask: Tensor | None,
             seen: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """`prepend_embeds` (b, p, dim) put before the tokens' embeddings h (b, n,
    dim), with their positions (first) and key mask (always attended)."""
    b, p, n = h.shape[0], embeds.shape[1], h.shape[1]
    h = torch.cat((embeds.to(h.dtype), h), dim=1)
    positions = torch.arange(seen, seen + p + n, device=h.device) if positions.ndim == 1 else torch.cat(
        (positions.new_zeros((b, p)), positions + p), dim=1
    )
    if exists(key_mask):
        key_mask = torch.cat((key_mask.new_ones((b, p)), key_mask), dim=1)
    return h, positions, key_mask


def attn_z_loss(lses: list[Tensor]) -> Tensor:
    """Attention z-loss (PaLM, arXiv:2204.02311; ST-MoE, arXiv:2202.08906):
    the squared logsumexp of each query's attention logits, summed over layers
    and heads, averaged over batch and query positions. Pulls the logits'
    normaliser towards 1 so bf16 softmax stays stable."""
    z = sum(lse.float().square().sum(dim=1) for lse in lses)  # (b, n)
    return z.mean()


@functools.lru_cache(maxsize=None)
def _in_dtype(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype`, as transformers multiplies Gemma's
    embeddings by sqrt(dim) held in the weights' dtype."""
    return float(torch.tensor(value, dtype=dtype))


def _and(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b
