"""Mistral: Llama's layers with sliding-window attention in every layer
(Jiang et al. 2023, arXiv:2310.06825) when `sliding_window` is set (v0.1;
later versions attend everything). As transformers' MistralModel, any
`layer_types` in the config is ignored: the window is every layer's."""

from __future__ import annotations

from torch import Tensor

from .common import causal_lm_arguments, decoder_state, positive_int


def arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = causal_lm_arguments(config, "mistral")
    if config.get("sliding_window") is not None:
        decoder["sliding_window"] = positive_int(config, "mistral", "sliding_window")
    return net, decoder


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "mistral")
