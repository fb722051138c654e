"""Import of Hugging Face transformers checkpoints, one small module per
family. Each maps its config's options onto `TransformerWrapper` / `Decoder`
arguments (named, documented options, usable from scratch too), refusing
options axw does not compute the same way, and its tensors onto axw's names.

`FAMILIES`: config.json's `model_type` -> (arguments, state), where
`arguments(config)` gives (TransformerWrapper kwargs, Decoder kwargs) and
`state(tensors, net)` gives (axw state dict, the checkpoint keys it used).
"""

from __future__ import annotations

from . import gemma, gpt2, llama, mistral, olmo2, phi3, qwen, smollm3

FAMILIES = {
    "gpt2": (gpt2.arguments, gpt2.state),
    "llama": (llama.arguments, llama.state),
    "mistral": (mistral.arguments, mistral.state),
    "qwen2": (qwen.qwen2_arguments, qwen.qwen2_state),
    "qwen3": (qwen.qwen3_arguments, qwen.qwen3_state),
    "gemma": (gemma.gemma_arguments, gemma.gemma_state),
    "gemma2": (gemma.gemma2_arguments, gemma.gemma2_state),
    "gemma3_text": (gemma.gemma3_arguments, gemma.gemma3_state),
    "smollm3": (smollm3.arguments, smollm3.state),
    "olmo2": (olmo2.arguments, olmo2.state),
    "phi3": (phi3.arguments, phi3.state),
}

__all__ = ["FAMILIES"]
