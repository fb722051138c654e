"""Phi-3 / Phi-4-mini: Llama's layers with fused projections (`qkv_proj`
stacked [q; k; v] and `gate_up_proj` stacked [gate; up], axw's own layouts,
so they load as they are), unbiased; a sliding window over keys in every
layer when `sliding_window` is set; partial rotary dimensions. Its
`longrope` scaling (the 128k-context checkpoints) is refused."""

from __future__ import annotations

from torch import Tensor

from .common import causal_lm_arguments, decoder_state, positive_int


def arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = causal_lm_arguments(config, "phi3")
    # transformers' Phi3 has no attention_bias / mlp_bias options: its projections have no bias
    decoder.update(attn_bias=False, ff_no_bias=True)
    if config.get("sliding_window") is not None:
        decoder["sliding_window"] = positive_int(config, "phi3", "sliding_window")
    return net, decoder


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "phi3", fused=True)
