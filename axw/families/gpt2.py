"""GPT-2 (gpt2, gpt2-medium, gpt2-large, distilgpt2): learned absolute
positions, LayerNorm with bias, tanh-GELU MLP, biased projections."""

from __future__ import annotations

import re

from torch import Tensor

from ..utils import exists
from .common import net_arguments, positive_int, reader, require

# transformers' activation names -> axw FeedForward activations
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",  # same tanh formula as gelu_new, written differently
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def arguments(config: dict) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments of a `GPT2Config`."""
    f = "gpt2"
    dim = positive_int(config, f, "n_embd")
    heads = positive_int(config, f, "n_head")
    if dim % heads:
        raise ValueError(f"gpt2 config: n_embd ({dim}) must be a multiple of n_head ({heads})")
    require(config, f, "scale_attn_weights", [True], True)
    require(config, f, "scale_attn_by_inverse_layer_idx", [False], False)
    require(config, f, "reorder_and_upcast_attn", [False], False)
    require(config, f, "add_cross_attention", [False], False)
    activation = require(config, f, "activation_function", list(GPT2_ACTIVATIONS), "gelu_new")
    inner = config.get("n_inner")
    net = net_arguments(config, f, "n_positions", absolute=True, tie_default=True)
    decoder = dict(
        dim=dim,
        depth=positive_int(config, f, "n_layer"),
        heads=heads,
        dim_head=dim // heads,
        attn_bias=True,
        ff_inner_dim=positive_int(config, f, "n_inner") if exists(inner) else 4 * dim,
        ff_activation=GPT2_ACTIVATIONS[activation],
        norm_bias=True,
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
    )
    return net, decoder


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    """axw tensors from a GPT-2 checkpoint, and the checkpoint keys used.
    GPT-2's Conv1D stores weights as (in, out), the transpose of nn.Linear;
    its fused c_attn output is [q; k; v], as axw's to_qkv is."""
    # GPT2LMHeadModel saves under `transformer.`, the original repos without it
    prefix = "transformer." if "transformer.wte.weight" in state else ""
    get, used = reader(state, "gpt2")
    out = {
        "token_emb.weight": get(f"{prefix}wte.weight"),
        "pos_emb.weight": get(f"{prefix}wpe.weight"),
        "attn_layers.final_norm.weight": get(f"{prefix}ln_f.weight"),
        "attn_layers.final_norm.bias": get(f"{prefix}ln_f.bias"),
    }
    for i in range(net.attn_layers.depth):
        src, dst = f"{prefix}h.{i}.", f"attn_layers.layers.{i}."
        for s, d, conv in (
            ("ln_1", "attn_norm", False), ("attn.c_attn", "attn.to_qkv", True), ("attn.c_proj", "attn.to_out", True),
            ("ln_2", "ff_norm", False), ("mlp.c_fc", "ff.proj_in", True), ("mlp.c_proj", "ff.proj_out", True),
        ):
            w = get(f"{src}{s}.weight")
            out[f"{dst}{d}.weight"] = w.t() if conv else w
            out[f"{dst}{d}.bias"] = get(f"{src}{s}.bias")
    if exists(net.to_logits):
        out["to_logits.weight"] = get("lm_head.weight")
    # the causal-mask buffers older checkpoints carry, and a tied head saved anyway
    ignorable = re.compile(rf"^{re.escape(prefix)}h\.\d+\.attn\.(bias|masked_bias)$|^lm_head\.weight$")
    return out, used | {k for k in state if ignorable.match(k)}
