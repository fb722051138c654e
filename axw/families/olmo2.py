"""OLMo 2 (OLMo et al. 2025, arXiv:2501.00656): Llama's layers with the
norms moved onto each branch's output (no norm before attention or the
MLP), and RMSNorm of queries and keys over the whole projection."""

from __future__ import annotations

from torch import Tensor

from .common import POST_NORMS, causal_lm_arguments, decoder_state


def arguments(config: dict) -> tuple[dict, dict]:
    net, decoder = causal_lm_arguments(config, "olmo2")
    decoder.update(pre_norm=False, post_branch_norm=True, attn_qk_norm="full")
    return net, decoder


def state(state: dict[str, Tensor], net) -> tuple[dict[str, Tensor], set[str]]:
    return decoder_state(state, net, "olmo2", norms=POST_NORMS)
