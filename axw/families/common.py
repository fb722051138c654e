"""What the family modules share: reading a transformers config's values
(refusing what axw does not compute the same way), its rotary settings, its
per-layer attention types, and renaming Llama-style tensors into axw's."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..attention import ROPE_SCALING
from ..utils import check_number, exists


def require(config: dict, family: str, key: str, allowed, default_value=None):
    """The config value if it is one axw computes the same way, else a ValueError."""
    value = config.get(key, default_value)
    if value not in allowed:
        raise ValueError(
            f"{family} checkpoint has {key}={value!r}, which axw does not support; supported: "
            + ", ".join(repr(a) for a in allowed)
        )
    return value


def positive_int(config: dict, family: str, key: str, default_value=None) -> int:
    value = config.get(key)
    value = default_value if value is None else value  # some configs write null for "the default"
    return check_number(value, f"{family} config's {key}", 1, integer=True)


def reader(state: dict[str, Tensor], family: str):
    """`get(key)`, which records the keys it read, and that set."""
    used: set[str] = set()

    def get(key: str) -> Tensor:
        if key not in state:
            raise ValueError(f"{family} checkpoint is missing the tensor {key!r}")
        used.add(key)
        return state[key]

    return get, used


# --- attention shape, rotary positions, layer types ---


def attention_sizes(config: dict, family: str) -> dict:
    """Decoder arguments for the heads: `head_dim` may be set apart from
    hidden_size / num_attention_heads (Qwen3, Gemma)."""
    dim = positive_int(config, family, "hidden_size")
    heads = positive_int(config, family, "num_attention_heads")
    kv_heads = positive_int(config, family, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise ValueError(
            f"{family} config: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
        )
    if config.get("head_dim") is None and dim % heads:
        raise ValueError(f"{family} config: hidden_size ({dim}) must be a multiple of num_attention_heads ({heads})")
    dim_head = positive_int(config, family, "head_dim", dim // heads)
    return dict(dim=dim, heads=heads, attn_kv_heads=kv_heads, dim_head=dim_head)


def rope_parameters(config: dict, layer_type: str | None = None) -> dict:
    """The rope settings as transformers >= 5 writes them (`rope_parameters`,
    per layer type for Gemma 3), from older configs' top-level `rope_theta`,
    `rope_scaling` (its type under `type` or `rope_type`) and
    `partial_rotary_factor` too."""
    rope = config.get("rope_parameters") or {}
    if exists(layer_type) and layer_type in rope:
        rope = rope[layer_type] or {}
    rope = dict(rope)
    if layer_type in (None, "full_attention"):  # older configs' scaling is the global layers'
        for key, value in (config.get("rope_scaling") or {}).items():
            rope.setdefault("rope_type" if key == "type" else key, value)
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.setdefault("rope_theta", config.get("rope_theta"))
    rope.setdefault("partial_rotary_factor", config.get("partial_rotary_factor"))
    return rope


def rotary_arguments(config: dict, family: str, dim_head: int, rope: dict | None = None,
                     default_theta: float = 10000.0) -> dict:
    """Decoder arguments for rotary positions: base, scaling, partial rotary
    dimension. A scaling type axw does not implement is refused by name."""
    rope = rope_parameters(config) if rope is None else rope
    kind = rope["rope_type"]
    if kind != "default" and kind not in ROPE_SCALING:
        raise ValueError(
            f"{family} checkpoint uses rope scaling of type {kind!r}, which axw does not implement; supported: "
            + ", ".join(repr(k) for k in ("default", *ROPE_SCALING))
        )
    scaling = None
    if kind != "default":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor") and exists(v)}
        if kind in ("llama3", "yarn"):
            # as transformers' `standardize_rope_params`: Phi-3's top-level pretraining
            # length first, else the dict's, else max_position_embeddings
            if exists(config.get("original_max_position_embeddings")):
                scaling["original_max_position_embeddings"] = config["original_max_position_embeddings"]
            scaling.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
        if kind == "yarn" and scaling.get("factor") is None and exists(config.get("max_position_embeddings")):
            scaling["factor"] = config["max_position_embeddings"] / scaling["original_max_position_embeddings"]
        missing = [k for k in ROPE_SCALING[kind] if not isinstance(scaling.get(k), (int, float))]
        if missing:
            raise ValueError(f"{family} checkpoint's rope scaling of type {kind!r} lacks {', '.join(missing)}")
    theta = rope.get("rope_theta")
    partial = rope.get("partial_rotary_factor")
    partial = 1.0 if partial is None else partial
    check_number(partial, f"{family} config's partial_rotary_factor", 0.0, 1.0, low_open=True)
    rotary_dim = int(dim_head * partial)
    if rotary_dim % 2:
        raise ValueError(f"{family} config: partial_rotary_factor {partial} gives an odd rotary dimension {rotary_dim}")
    return dict(
        rotary_pos_emb=True,
        rotary_emb_base=float(default_theta if theta is None else theta),
        rotary_scaling=scaling,
        rotary_emb_dim=None if rotary_dim == dim_head else rotary_dim,
    )


def sliding_arguments(config: dict, family: str, default_types=None) -> dict:
    """Decoder arguments for sliding-window attention: the window, and which
    layers use it (`layer_types`; when the config has none, `default_types(depth)`
    as the family's config class derives them, or every layer)."""
    window = config.get("sliding_window")
    if window is None:
        return {}
    window = positive_int(config, family, "sliding_window")
    depth = positive_int(config, family, "num_hidden_layers")
    types = config.get("layer_types") or (default_types(depth) if exists(default_types) else None)
    if exists(types) and (len(types) != depth or not set(types) <= {"full_attention", "sliding_attention"}):
        raise ValueError(
            f"{family} config's layer_types must list 'full_attention' or 'sliding_attention' for each of its "
            f"{depth} layers, got {types!r}"
        )
    return dict(sliding_window=window, layer_types=list(types) if exists(types) else None)


def refuse_bidirectional(config: dict, family: str):
    require(config, family, "use_bidirectional_attention", [None, False])


# --- tensors ---


# transformers' per-layer norm names -> axw's
PRE_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm"}
SANDWICH_NORMS = {  # Gemma 2 / 3
    "input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
    "pre_feedforward_layernorm": "ff_norm", "post_feedforward_layernorm": "ff_post_norm",
}
POST_NORMS = {"post_attention_layernorm": "attn_post_norm", "post_feedforward_layernorm": "ff_post_norm"}  # OLMo 2


def decoder_state(state: dict[str, Tensor], net, family: str, norms: dict[str, str] = PRE_NORMS,
                  fused: bool = False) -> tuple[dict[str, Tensor], set[str]]:
    """axw tensors from a Llama-style checkpoint (`model.layers.{i}.self_attn.q_proj`,
    `mlp.gate_proj`, ...), and the checkpoint keys used. q, k, v stack into
    to_qkv and gate, up into proj_in, whose first half axw's gated FeedForward
    passes through the activation; with `fused`, the checkpoint holds them
    stacked that way already (Phi-3's qkv_proj and gate_up_proj)."""
    # *ForCausalLM saves the body under `model.`; a bare *Model without
    prefix = "model." if "model.embed_tokens.weight" in state else ""
    get, used = reader(state, family)
    layers = net.attn_layers
    config = layers.config
    out = {
        "token_emb.weight": get(f"{prefix}embed_tokens.weight"),
        "attn_layers.final_norm.weight": get(f"{prefix}norm.weight"),
    }
    for i in range(layers.depth):
        src, dst = f"{prefix}layers.{i}.", f"attn_layers.layers.{i}."
        attn, mlp = f"{src}self_attn.", f"{src}mlp."
        qkv_bias = config.attn_bias if config.attn_qkv_bias is None else config.attn_qkv_bias
        for p in ("weight", "bias") if qkv_bias else ("weight",):
            out[f"{dst}attn.to_qkv.{p}"] = (
                get(f"{attn}qkv_proj.{p}") if fused else torch.cat([get(f"{attn}{n}_proj.{p}") for n in "qkv"])
            )
        for p in ("weight", "bias") if config.attn_bias else ("weight",):
            out[f"{dst}attn.to_out.{p}"] = get(f"{attn}o_proj.{p}")
        if exists(config.attn_qk_norm):
            out[f"{dst}attn.q_norm.weight"] = get(f"{attn}q_norm.weight")
            out[f"{dst}attn.k_norm.weight"] = get(f"{attn}k_norm.weight")
        for p in ("weight",) if config.ff_no_bias else ("weight", "bias"):
            out[f"{dst}ff.proj_in.{p}"] = (
                get(f"{mlp}gate_up_proj.{p}") if fused
                else torch.cat([get(f"{mlp}gate_proj.{p}"), get(f"{mlp}up_proj.{p}")])
            )
            out[f"{dst}ff.proj_out.{p}"] = get(f"{mlp}down_proj.{p}")
        for theirs, ours in norms.items():
            out[f"{dst}{ours}.weight"] = get(f"{src}{theirs}.weight")
    if exists(net.to_logits):
        out["to_logits.weight"] = get("lm_head.weight")
    # rotary frequencies older checkpoints carry (recomputed here), and a tied head saved anyway
    ignorable = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^lm_head\.weight$")
    return out, used | {k for k in state if ignorable.match(k)}


SWIGLU = {"silu": "silu"}  # transformers' hidden_act -> axw's ff_activation


def net_arguments(config: dict, family: str, positions_key: str, absolute: bool, tie_default: bool) -> dict:
    """TransformerWrapper's arguments: the vocabulary, the context, absolute positions or not, a tied head."""
    return dict(num_tokens=positive_int(config, family, "vocab_size"),
                max_seq_len=positive_int(config, family, positions_key), use_abs_pos_emb=absolute,
                tie_embedding=bool(config.get("tie_word_embeddings", tie_default)))


def causal_lm_arguments(config: dict, family: str, activations: dict[str, str] = SWIGLU,
                        activation_key: str = "hidden_act", tie_default: bool = False) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments every Llama-style family shares:
    sizes, grouped-query heads, RMSNorm, gated MLP, biases, rotary positions."""
    sizes = attention_sizes(config, family)
    act = require(config, family, activation_key, list(activations), next(iter(activations)))
    net = net_arguments(config, family, "max_position_embeddings", absolute=False, tie_default=tie_default)
    decoder = dict(
        **sizes,
        depth=positive_int(config, family, "num_hidden_layers"),
        attn_bias=bool(config.get("attention_bias", False)),
        ff_glu=True,
        ff_activation=activations[act],
        ff_no_bias=not config.get("mlp_bias", False),
        ff_inner_dim=positive_int(config, family, "intermediate_size"),
        use_rmsnorm=True,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        **rotary_arguments(config, family, sizes["dim_head"]),
    )
    return net, decoder
