"""Gemma, Gemma 2 and Gemma 3 (text): Llama-like layers with
- embeddings scaled by sqrt(hidden_size), the tied head unscaled;
- RMSNorm with scale 1 + weight; GeGLU with tanh-GELU;
- gemma2 / gemma3_text: norms before and after each attention and MLP
  branch, attention logits scaled by query_pre_attn_scalar ** -0.5, local
  (sliding-window) layers alternating with global ones (Gemma 2 report,
  arXiv:2408.00118);
- gemma2: tanh soft-capping of attention and final logits (same report);
- gemma3_text: per-head qk-norm instead of soft-capping (Gemma 3 report,
  arXiv:2503.19786), and local layers' own rotary base
  (`rope_local_base_freq`, unscaled; the global layers' may be scaled)."""

from __future__ import annotations

from torch import Tensor

from .common import (
    SANDWICH_NORMS,
    causal_lm_arguments,
    decoder_state,
    positive_int,
    refuse_bidirectional,
    rope_parameters,
    rotary_arguments,
    sliding_arguments,
)

# "gelu" in Gemma configs means the tanh approximation: transformers' GemmaConfig rewrites it so
GEGLU = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _gemma_arguments(config: dict, family: str, activation_key: str) -> tuple[dict, dict]:
    refuse_bidirectional(config, family)
    net, decoder = causal_lm_arguments(config, family, GEGLU, activation_key, tie_default=True)
    net.update(scale_emb=True)
    decoder.update(norm_unit_offset=True)
    return net, decoder


def gemma_arguments(config: dict) -> tuple[dict, dict]:
    return _gemma_arguments(config, "gemma", "hidden_act")


def _sandwich(config: dict, family: str, decoder: dict, pattern: int) -> None:
    """What Gemma 2 and 3 add: the sandwich norms, query scale, local layers
    (when the config lists none, one global layer in every `pattern`)."""
    def layer_types(depth):  # as Gemma2Config / Gemma3TextConfig derive them
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(depth)]

    decoder.update(
        post_branch_norm=True,
        attn_scale=positive_int(config, family, "query_pre_attn_scalar", 256) ** -0.5,
        attn_softcap=config.get("attn_logit_softcapping"),
        **sliding_arguments(config, family, layer_types),
    )


def gemma2_arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = _gemma_arguments(config, "gemma2", "hidden_activation")
    _sandwich(config, "gemma2", decoder, pattern=2)
    net.update(logit_softcap=config.get("final_logit_softcapping"))
    return net, decoder


def gemma3_arguments(config: dict) -> tuple[dict, dict]:
    f = "gemma3_text"
    net, decoder = _gemma_arguments(config, f, "hidden_activation")
    _sandwich(config, f, decoder, pattern=config.get("sliding_window_pattern") or 6)
    net.update(logit_softcap=config.get("final_logit_softcapping"))
    # rotary per layer type: global layers' (perhaps scaled) and local layers' own base
    dim_head = decoder["dim_head"]
    decoder.update(rotary_arguments(config, f, dim_head, rope_parameters(config, "full_attention"), 1e6))
    if "sliding_attention" in (config.get("rope_parameters") or {}):
        local = rope_parameters(config, "sliding_attention")
    else:  # configs before transformers 5
        local = dict(rope_type="default", rope_theta=config.get("rope_local_base_freq", 10000.0),
                     partial_rotary_factor=config.get("partial_rotary_factor"))
    local_args = rotary_arguments(config, f, dim_head, local, 10000.0)
    if local_args["rotary_scaling"] is not None or local_args["rotary_emb_dim"] != decoder["rotary_emb_dim"]:
        raise ValueError(f"{f} checkpoint scales the local layers' rope, which axw does not implement; "
                         "supported: plain rotary positions in the sliding layers")
    decoder.update(rotary_emb_base_local=local_args["rotary_emb_base"], attn_qk_norm="head")
    return net, decoder


def gemma_state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "gemma")


def gemma2_state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "gemma2", norms=SANDWICH_NORMS)


def gemma3_state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "gemma3_text", norms=SANDWICH_NORMS)
