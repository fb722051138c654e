"""Import of Hugging Face transformers checkpoints: `config.json`'s
`model_type` picks a family module in `axw.families` (GPT-2, Llama, Mistral,
Qwen2 / Qwen3, Gemma / Gemma 2 / Gemma 3, SmolLM3, OLMo 2, Phi-3), which
maps the config onto an ordinary axw `TransformerWrapper` and renames the
checkpoint's tensors into axw's names. Weights come only from safetensors
files (`hub.load_safetensors`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import hub
from .families import FAMILIES
from .families.gpt2 import GPT2_ACTIVATIONS
from .families.gpt2 import arguments as gpt2_arguments
from .families.gpt2 import state as gpt2_state
from .families.llama import arguments as llama_arguments
from .families.llama import state as llama_state
from .transformer import Decoder, TransformerWrapper
from .utils import default, exists

__all__ = [
    "FAMILIES", "GPT2_ACTIVATIONS", "build_net", "from_transformers_folder", "gpt2_arguments", "gpt2_state",
    "llama_arguments", "llama_state", "special_token_ids", "transformers_arguments",
]


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
    net.to_empty(device="cpu")  # the rotary frequencies, not saved, are computed afresh (`RotaryEmbedding._apply`)
    net.load_state_dict(mapped, strict=True)
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
