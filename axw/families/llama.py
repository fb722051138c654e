"""Llama (SmolLM2, TinyLlama, Llama 3.x): RMSNorm, SwiGLU, grouped-query
attention, rotary positions with rope scaling `linear` or `llama3`
(or `yarn`); tied or untied head; optional attention / MLP biases."""

from __future__ import annotations

from torch import Tensor

from .common import causal_lm_arguments, decoder_state


def arguments(config: dict) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments of a `LlamaConfig`."""
    return causal_lm_arguments(config, "llama")


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "llama")
