"""Import of Hugging Face transformers checkpoints: the GPT-2 family (gpt2,
gpt2-medium, gpt2-large, distilgpt2) and the Llama family (SmolLM2,
TinyLlama, ...), mapped onto an ordinary axw `TransformerWrapper`.

Each family is a pair of functions: one reads the transformers config into
`TransformerWrapper` / `Decoder` arguments, refusing options axw does not
compute the same way; the other renames (and where the layouts differ,
transposes or concatenates) the checkpoint's tensors into axw's names.
Weights come only from safetensors files (`hub.load_safetensors`).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import hub
from .attention import RotaryEmbedding
from .transformer import Decoder, TransformerWrapper
from .utils import check_number, default, exists

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


def _require(config: dict, family: str, key: str, allowed, default_value=None):
    """The config value if it is one axw computes the same way, else a ValueError."""
    value = config.get(key, default_value)
    if value not in allowed:
        raise ValueError(
            f"{family} checkpoint has {key}={value!r}, which axw does not support; supported: "
            + ", ".join(repr(a) for a in allowed)
        )
    return value


def _positive_int(config: dict, family: str, key: str, default_value=None) -> int:
    value = config.get(key)
    value = default_value if value is None else value  # some configs write null for "the default"
    return check_number(value, f"{family} config's {key}", 1, integer=True)


# --- GPT-2 ---


def gpt2_arguments(config: dict) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments of a `GPT2Config`."""
    f = "gpt2"
    dim = _positive_int(config, f, "n_embd")
    heads = _positive_int(config, f, "n_head")
    if dim % heads:
        raise ValueError(f"gpt2 config: n_embd ({dim}) must be a multiple of n_head ({heads})")
    _require(config, f, "scale_attn_weights", [True], True)
    _require(config, f, "scale_attn_by_inverse_layer_idx", [False], False)
    _require(config, f, "reorder_and_upcast_attn", [False], False)
    _require(config, f, "add_cross_attention", [False], False)
    activation = _require(config, f, "activation_function", list(GPT2_ACTIVATIONS), "gelu_new")
    inner = config.get("n_inner")
    net = dict(
        num_tokens=_positive_int(config, f, "vocab_size"),
        max_seq_len=_positive_int(config, f, "n_positions"),
        use_abs_pos_emb=True,
        tie_embedding=bool(config.get("tie_word_embeddings", True)),
    )
    decoder = dict(
        dim=dim,
        depth=_positive_int(config, f, "n_layer"),
        heads=heads,
        dim_head=dim // heads,
        attn_bias=True,
        ff_inner_dim=_positive_int(config, f, "n_inner") if exists(inner) else 4 * dim,
        ff_activation=GPT2_ACTIVATIONS[activation],
        norm_bias=True,
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
    )
    return net, decoder


def gpt2_state(state: dict[str, Tensor], net: TransformerWrapper) -> tuple[dict[str, Tensor], set[str]]:
    """axw tensors from a GPT-2 checkpoint, and the checkpoint keys used.
    GPT-2's Conv1D stores weights as (in, out), the transpose of nn.Linear;
    its fused c_attn output is [q; k; v], as axw's to_qkv is."""
    # GPT2LMHeadModel saves under `transformer.`, the original repos without it
    prefix = "transformer." if "transformer.wte.weight" in state else ""
    get, used = _reader(state, "gpt2")
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


# --- Llama ---


def llama_arguments(config: dict) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments of a `LlamaConfig`."""
    f = "llama"
    dim = _positive_int(config, f, "hidden_size")
    heads = _positive_int(config, f, "num_attention_heads")
    kv_heads = _positive_int(config, f, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise ValueError(f"llama config: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    if config.get("head_dim") is None and dim % heads:
        raise ValueError(f"llama config: hidden_size ({dim}) must be a multiple of num_attention_heads ({heads})")
    dim_head = _positive_int(config, f, "head_dim", dim // heads)
    _require(config, f, "hidden_act", ["silu"], "silu")

    # transformers >= 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`
    rope = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(
            f"llama checkpoint uses rope scaling of type {rope_type!r}, which axw does not implement; "
            "supported: plain rotary embeddings (rope_type 'default')"
        )
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"llama checkpoint has partial_rotary_factor={partial!r}; axw supports only 1.0")

    net = dict(
        num_tokens=_positive_int(config, f, "vocab_size"),
        max_seq_len=_positive_int(config, f, "max_position_embeddings"),
        use_abs_pos_emb=False,
        tie_embedding=bool(config.get("tie_word_embeddings", False)),
    )
    decoder = dict(
        dim=dim,
        depth=_positive_int(config, f, "num_hidden_layers"),
        heads=heads,
        dim_head=dim_head,
        attn_kv_heads=kv_heads,
        attn_bias=bool(config.get("attention_bias", False)),
        ff_glu=True,
        ff_swish=True,
        ff_no_bias=not config.get("mlp_bias", False),
        ff_inner_dim=_positive_int(config, f, "intermediate_size"),
        use_rmsnorm=True,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rotary_pos_emb=True,
        rotary_emb_base=float(theta),
    )
    return net, decoder


def llama_state(state: dict[str, Tensor], net: TransformerWrapper) -> tuple[dict[str, Tensor], set[str]]:
    """axw tensors from a Llama checkpoint, and the checkpoint keys used:
    q, k, v stack into to_qkv; gate and up stack into proj_in, whose first
    half axw's gated FeedForward passes through the activation."""
    # LlamaForCausalLM saves the body under `model.`; a bare LlamaModel without
    prefix = "model." if "model.embed_tokens.weight" in state else ""
    get, used = _reader(state, "llama")
    layers = net.attn_layers
    out = {
        "token_emb.weight": get(f"{prefix}embed_tokens.weight"),
        "attn_layers.final_norm.weight": get(f"{prefix}norm.weight"),
    }
    for i in range(layers.depth):
        src, dst = f"{prefix}layers.{i}.", f"attn_layers.layers.{i}."
        attn, mlp = f"{src}self_attn.", f"{src}mlp."
        params = ("weight", "bias") if layers.config["attn_bias"] else ("weight",)
        for p in params:
            out[f"{dst}attn.to_qkv.{p}"] = torch.cat([get(f"{attn}{n}_proj.{p}") for n in "qkv"])
            out[f"{dst}attn.to_out.{p}"] = get(f"{attn}o_proj.{p}")
        params = ("weight",) if layers.config["ff_no_bias"] else ("weight", "bias")
        for p in params:
            out[f"{dst}ff.proj_in.{p}"] = torch.cat([get(f"{mlp}gate_proj.{p}"), get(f"{mlp}up_proj.{p}")])
            out[f"{dst}ff.proj_out.{p}"] = get(f"{mlp}down_proj.{p}")
        out[f"{dst}attn_norm.weight"] = get(f"{src}input_layernorm.weight")
        out[f"{dst}ff_norm.weight"] = get(f"{src}post_attention_layernorm.weight")
    if exists(net.to_logits):
        out["to_logits.weight"] = get("lm_head.weight")
    # rotary frequencies older checkpoints carry (recomputed here), and a tied head saved anyway
    ignorable = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^lm_head\.weight$")
    return out, used | {k for k in state if ignorable.match(k)}


FAMILIES = {
    "gpt2": (gpt2_arguments, gpt2_state),
    "llama": (llama_arguments, llama_state),
}


def _reader(state: dict[str, Tensor], family: str):
    used: set[str] = set()

    def get(key: str) -> Tensor:
        if key not in state:
            raise ValueError(f"{family} checkpoint is missing the tensor {key!r}")
        used.add(key)
        return state[key]

    return get, used


# --- the import ---


def transformers_arguments(config: dict) -> tuple[dict, dict]:
    """TransformerWrapper and Decoder arguments for a transformers config, or
    a ValueError naming what axw cannot import."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"cannot import model_type {model_type!r}: axw imports {', '.join(repr(k) for k in FAMILIES)} checkpoints"
        )
    return FAMILIES[model_type][0](config)


def build_net(config: dict, state: dict[str, Tensor]) -> TransformerWrapper:
    """An axw TransformerWrapper holding a transformers checkpoint's weights."""
    net_args, decoder_args = transformers_arguments(config)
    # built on the meta device: randomly initialising weights about to be
    # replaced would cost seconds for the larger checkpoints
    with torch.device("meta"):
        net = TransformerWrapper(**net_args, attn_layers=Decoder(**decoder_args))
    mapped, used = FAMILIES[config["model_type"]][1](state, net)
    unexpected = sorted(set(state) - used)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise ValueError(f"{config['model_type']} checkpoint has tensors axw has no place for: {shown}")
    expected = net.state_dict()
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{config['model_type']} checkpoint tensor for {name} has shape {tuple(tensor.shape)}, "
                f"the config implies {tuple(expected[name].shape)}"
            )
    # copied into freshly allocated parameters, which keep axw's own memory
    # layout (linear weights (in, out)) and dtype; the checkpoint's tensors are
    # views of the memory-mapped file, released once this returns
    net.to_empty(device="cpu")
    net.load_state_dict(mapped, strict=True)
    rotary = net.attn_layers.rotary
    if exists(rotary):
        # its frequencies are a non-persistent buffer, left uninitialised by to_empty
        net.attn_layers.rotary = RotaryEmbedding(rotary.dim, rotary.base)
    return net


def special_token_ids(folder: Path, config: dict, num_tokens: int) -> tuple[int | None, int | None]:
    """(eos, pad) ids: generation_config.json first (what transformers'
    generate uses), then config.json, then tokenizer_config.json's tokens
    looked up in tokenizer.json. A list of EOS ids gives its first in the
    vocabulary.

    An id outside the vocabulary is dropped with a warning, as transformers
    loads such checkpoints with a warning: the model can never produce it
    (tiny models built with `GPT2Config(vocab_size=...)` keep GPT-2's 50256).
    An id that is not an integer is a ValueError, as in transformers."""
    sources = [_read_json(folder / "generation_config.json"), config]
    tokenizer_config = _read_json(folder / "tokenizer_config.json")

    def find(name: str):
        for source in sources:
            value = source.get(f"{name}_token_id")
            if exists(value) and value != []:
                return value
        token = tokenizer_config.get(f"{name}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str):
            tokenizer = hub.load_tokenizer(folder)
            return tokenizer.token_to_id(token) if exists(tokenizer) else None
        return None

    return (
        _token_id(folder, "eos_token_id", find("eos"), num_tokens, "generate stops only at an eos_token passed to it"),
        _token_id(folder, "pad_token_id", find("pad"), num_tokens, "padding uses id 0"),
    )


def _token_id(folder: Path, name: str, value, num_tokens: int, without: str) -> int | None:
    """The first id of `value` (an id or a list of ids) inside the vocabulary."""
    ids = value if isinstance(value, list) else [] if value is None else [value]
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):  # JSON true would otherwise read as id 1
            raise ValueError(
                f"{folder}: {name} {value!r} is not an integer token id; allowed: an integer, "
                "a list of integers, or null"
            )
    inside = [i for i in ids if 0 <= i < num_tokens]
    outside = [i for i in ids if not 0 <= i < num_tokens]
    if outside:
        shown = outside[0] if len(outside) == 1 else outside
        warnings.warn(
            f"{folder}: {name} {shown} is outside the vocabulary [0, {num_tokens}), so the model can "
            f"never produce it; axw drops it" + ("" if inside else f" ({without})"),
            stacklevel=5,  # from_pretrained's caller
        )
    return inside[0] if inside else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def from_transformers_folder(cls, folder: Path, config: dict):
    """An `AutoregressiveWrapper` (`cls`) from a folder holding a transformers
    config and safetensors weights."""
    net_args, _ = transformers_arguments(config)  # refuse unsupported configs before reading weights
    eos, pad = special_token_ids(folder, config, net_args["num_tokens"])
    net = build_net(config, hub.load_safetensors(folder))
    model = cls(net, pad_value=default(pad, 0))
    model.eos_token_id = eos
    return model
