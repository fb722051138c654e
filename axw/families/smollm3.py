"""SmolLM3: Llama's layers, with no positions at all in some of them (every
fourth by default; `no_rope_layers` holds 1 for a rotary layer, 0 for one
without: NoPE, Kazemnejad et al. 2023, arXiv:2305.19466), and a sliding
window in the NoPE layers only when `use_sliding_window` is set."""

from __future__ import annotations

from torch import Tensor

from .common import causal_lm_arguments, decoder_state, positive_int, sliding_arguments


def arguments(config: dict) -> tuple[dict, dict]:
    f = "smollm3"
    net, decoder = causal_lm_arguments(config, f)
    depth = decoder["depth"]
    rope = config.get("no_rope_layers")
    if rope is None:  # as SmolLM3Config derives it
        interval = positive_int(config, f, "no_rope_layer_interval", 4)
        rope = [int((i + 1) % interval != 0) for i in range(depth)]
    if len(rope) != depth or not set(rope) <= {0, 1}:
        raise ValueError(f"{f} config's no_rope_layers must hold 0 or 1 for each of its {depth} layers, got {rope!r}")
    decoder["nope_layers"] = [i for i, r in enumerate(rope) if not r]
    if config.get("use_sliding_window", False):
        def layer_types(n):  # as SmolLM3Config derives them
            return ["sliding_attention" if not rope[i] else "full_attention" for i in range(n)]

        decoder.update(sliding_arguments(config, f, layer_types))
    return net, decoder


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "smollm3")
