"""Each layer's next-token distribution: the final norm and the head applied to
a layer's hidden states (the logit lens, nostalgebraist 2020), which shows
where in the network a choice formed; and which of those early exits DoLa
(Chuang et al. 2023, arXiv:2309.03883) contrasts with the last layer.

Layers are numbered as transformers' `hidden_states` are: 0 the embeddings,
i the output of the i-th layer, `depth` the last (whose exit is the model's
own distribution).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .specs import DOLA_NAMES, check_dola_layers


def candidate_layers(dola_layers, depth: int, tied: bool) -> list[int]:
    """DoLa's candidate premature layers of a `depth`-layer network, as
    transformers picks them: "low" every other layer of the first half, "high"
    of the second half (of the first and last 20 past 40 layers); with a head
    tied to the embeddings, "low" starts at layer 2 (1 for two layers), since
    the embeddings' own exit says little but the input token. A list names its
    layers, each below `depth` (the last layer is the mature one). ValueError,
    saying what is allowed, for anything else."""
    value = check_dola_layers(dola_layers)
    if value in DOLA_NAMES:
        start = 0 if not tied else 2 if depth > 2 else 1 if depth == 2 else 0
        if value == "low":
            layers = list(range(start, depth // 2, 2) if depth <= 40 else range(start, 20, 2))
        else:
            layers = list(range(depth // 2, depth, 2) if depth <= 40 else range(depth - 20, depth, 2))
        return layers or [min(start, depth - 1)]  # a shallow network: its one early layer
    outside = [i for i in value if i >= depth]
    if outside:
        raise ValueError(f"dola_layers {outside} lie outside this network's early layers: give layer numbers in "
                         f"[0, {depth}) (0: the embeddings; layer {depth}, the last, is the one contrasted with "
                         "them), or \"low\" / \"high\"")
    return value


def is_tied(net) -> bool:
    """The head is the token embedding's transpose."""
    return getattr(net, "to_logits", None) is None


@torch.no_grad()
def layer_hidden(net, tokens: Tensor) -> Tensor:
    """(depth + 1, dim): the last position's hidden states after each layer
    (0: the embeddings), from one full forward over `tokens` (n,), its last
    max_seq_len tokens."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of token ids, got shape {tuple(tokens.shape)}")
    if bool(((tokens < 0) | (tokens >= net.num_tokens)).any()):
        raise ValueError(f"tokens hold ids outside the vocabulary [0, {net.num_tokens})")
    x = tokens[-net.max_seq_len:][None].to(net.token_emb.weight.device)
    depth = net.attn_layers.depth
    keep = dict.fromkeys(range(depth + 1))
    net.decode(x, net.new_cache(x.shape[1]), keep_layers=keep)
    return torch.stack([keep[i][0, -1] for i in range(depth + 1)])


@torch.no_grad()
def logit_lens(net, tokens: Tensor, chosen: int | None = None, top: int = 5) -> dict:
    """What each layer would predict after `tokens` (n,): per layer 0 ..
    depth, its `top` most likely tokens and their probabilities, its entropy
    in bits and, given the `chosen` token, that token's rank (0 = most likely)
    and probability. Plain Python, layer by layer."""
    hidden = layer_hidden(net, tokens)
    logits = net.layer_logits(hidden).float()
    log_probs = logits.log_softmax(dim=-1)
    probs = log_probs.exp()
    top_probs, top_ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1) / torch.log(torch.tensor(2.0))
    out = dict(layers=list(range(hidden.shape[0])), top=top_ids.tolist(), top_probs=top_probs.tolist(),
               entropy=entropy.clamp(min=0).tolist())
    if chosen is not None:
        chosen = int(chosen)
        if not 0 <= chosen < net.num_tokens:
            raise ValueError(f"chosen must be a token id in [0, {net.num_tokens}), got {chosen}")
        out.update(chosen=chosen, chosen_rank=(logits > logits[:, chosen:chosen + 1]).sum(-1).tolist(),
                   chosen_prob=probs[:, chosen].tolist())
    return out
