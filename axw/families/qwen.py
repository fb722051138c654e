"""Qwen2 / Qwen2.5 and Qwen3: Llama's layers with
- qwen2: biased q, k and v projections (the output one unbiased);
- qwen3: per-head RMSNorm of queries and keys (qk-norm, Dehghani et al.
  2023, arXiv:2302.05442) and a `head_dim` set apart from the hidden size.
Both may slide a window over keys in the layers from `max_window_layers` on,
only when `use_sliding_window` is set (no released checkpoint sets it)."""

from __future__ import annotations

from torch import Tensor

from .common import causal_lm_arguments, decoder_state, sliding_arguments


def _sliding(config: dict, family: str) -> dict:
    if not config.get("use_sliding_window", False):
        return {}  # transformers drops sliding_window then (Qwen2Config.__post_init__)
    first = config.get("max_window_layers", 28)

    def layer_types(depth):  # as Qwen2Config derives them
        return ["sliding_attention" if i >= first else "full_attention" for i in range(depth)]

    return sliding_arguments(config, family, layer_types)


def qwen2_arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = causal_lm_arguments(config, "qwen2")
    decoder.update(attn_bias=False, attn_qkv_bias=True, **_sliding(config, "qwen2"))
    return net, decoder


def qwen3_arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = causal_lm_arguments(config, "qwen3")
    decoder.update(attn_qk_norm="head", **_sliding(config, "qwen3"))
    return net, decoder


def qwen2_state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "qwen2")


def qwen3_state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "qwen3")
