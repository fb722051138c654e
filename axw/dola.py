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

from .runtime import Run, Step, sample
from .utils import exists

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
    net, c = run.net, run.config
    b, t = run.tokens.shape
    out = run.new_output()
    if run.seq_len == 0:
        return
    layers = run.dola_layers
    eos, greedy = c.eos_token, c.greedy
    model = run.runner(net)
    pipeline = run.pipeline()
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)

    logits, premature = layer_logits(model, net, out, t, layers)
    for step in range(run.seq_len):
        cur = t + step
        scores, pick, divergence = select_and_contrast(logits, premature)
        trace = run.new_trace(step, logits)
        if trace:
            trace.record("dola", scores)
        processed = pipeline(scores, *run.context(out, cur, valid), trace, sampling=not greedy)
        run.keep(logits, processed)
        chosen = processed.argmax(dim=-1) if greedy else sample(processed, run.generator)
        pipeline.update(chosen, processed)
        if exists(eos):
            chosen = chosen.masked_fill(finished, run.pad)
        if trace:
            trace.choose(chosen, logits, processed)
            trace.dola = explain(layers, premature, pick, divergence)
        out[:, cur] = chosen
        if exists(eos):
            finished = finished | run.is_eos(chosen)
        yield Step(step, chosen, out[:, t:cur + 1], finished, trace)
        if step == run.seq_len - 1 or (exists(eos) and bool(finished.all())):
            break
        logits, premature = layer_logits(model, net, out, cur + 1, layers)
