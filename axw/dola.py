"""DoLa, decoding by contrasting layers (Chuang et al. 2023,
arXiv:2309.03883): facts tend to surface in the last layers, so each step
contrasts the last ("mature") layer's distribution with an early
("premature") layer's, both read through the same final norm and head
(`axw.logit_lens`):

    premature layer  j = argmax over the candidates of JSD(p_last || p_j)
    score            log p_last(v) - log p_j(v)   for v with p_last(v) >= alpha * max p_last   (alpha = 0.1)
                     -inf                         otherwise

The candidates are `dola_layers` ("low", "high" or layer numbers:
`logit_lens.candidate_layers`). The scores then go through the usual
pipeline (penalties, filters, temperature) and are sampled from, or their
argmax taken at temperature 0, as transformers does (which recommends a
repetition penalty of about 1.2). One forward per step through the KV cache
gives every candidate layer's hidden states.

Two departures from transformers' implementation, for what the paper says:
each row picks its own premature layer (transformers picks one for the batch,
by the mean divergence), and the divergence is the Jensen-Shannon divergence
0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2, in nats (transformers'
code sums KL(m || p) and KL(m || q), averaged over the vocabulary).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from .runtime import Run, Step
from .sampling import Scores, draw

DOLA_ALPHA = 0.1  # the plausibility cut: tokens at least this share of the last layer's most likely one
TRACE_TOP = 5  # each candidate layer's most likely tokens, in the trace


def js_divergence(mature: Tensor, premature: Tensor) -> Tensor:
    """Jensen-Shannon divergence in nats between the distributions of
    `mature` (b, vocab) logits and each of `premature` (L, b, vocab): (L, b)."""
    p = mature.float().log_softmax(dim=-1)[None]
    q = premature.float().log_softmax(dim=-1)
    m = torch.logaddexp(p, q) - math.log(2.0)

    def kl(a: Tensor) -> Tensor:
        pa = a.exp()
        return torch.where(pa > 0, pa * (a - m), 0.0).sum(dim=-1)

    return (0.5 * (kl(p) + kl(q))).clamp(min=0)


def contrast(mature: Tensor, premature: Tensor, alpha: float = DOLA_ALPHA) -> Tensor:
    """log p_mature - log p_premature over the tokens the mature layer finds
    plausible (p >= alpha * its max), -inf elsewhere: (b, vocab)."""
    log_mature = mature.float().log_softmax(dim=-1)
    log_premature = premature.float().log_softmax(dim=-1)
    plausible = log_mature >= log_mature.amax(dim=-1, keepdim=True) + math.log(alpha)
    return torch.where(plausible, log_mature - log_premature, -math.inf)


def select_and_contrast(mature: Tensor, premature: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(the DoLa scores (b, vocab), each row's chosen candidate index (b,),
    the divergences (L, b)) for the mature logits (b, vocab) and the
    candidate layers' logits (L, b, vocab)."""
    divergence = js_divergence(mature, premature)
    pick = divergence.argmax(dim=0)
    chosen = premature[pick, torch.arange(mature.shape[0], device=mature.device)]
    return contrast(mature, chosen), pick, divergence


def layer_logits(model, net, seq: Tensor, end: int, layers: list[int]) -> tuple[Tensor, Tensor]:
    """(the last layer's logits (b, vocab), the candidate layers' (L, b,
    vocab)) after `seq[:, :end]`: one forward through the cache."""
    keep = dict.fromkeys(layers)
    hidden = model.hidden(seq, end, keep_layers=keep)[:, -1]
    premature = net.layer_logits(torch.stack([keep[i][:, -1] for i in layers]))
    return net.logits(hidden), premature


def explain(layers: list[int], premature: Tensor, pick: Tensor, divergence: Tensor) -> dict[str, Tensor]:
    """The trace's record of one step: per row the candidate layers, the
    divergence of each from the last layer, the layer contrasted, and each
    candidate layer's most likely tokens with their probabilities."""
    b = pick.shape[0]
    top_probs, top_ids = premature.float().softmax(dim=-1).topk(min(TRACE_TOP, premature.shape[-1]), dim=-1)
    candidates = torch.tensor(layers, device=pick.device)
    return dict(layers=candidates.expand(b, -1), divergence=divergence.T, premature=candidates[pick],
                top=top_ids.transpose(0, 1), top_probs=top_probs.transpose(0, 1))


def steps(run: Run) -> Iterator[Step]:
    out = run.new_output()
    if run.seq_len == 0:
        return
    net, layers = run.net, run.dola_layers
    model = run.runner(net)

    def source(end: int) -> Scores:
        logits, premature = layer_logits(model, net, out, end, layers)
        scores, pick, divergence = select_and_contrast(logits, premature)
        return Scores(logits, scores, stage=lambda trace: trace.record("dola", scores),
                      note=lambda trace: setattr(trace, "dola", explain(layers, premature, pick, divergence)))

    yield from draw(run, out, run.pipeline(), source)
