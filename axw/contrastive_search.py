"""Contrastive search (Su et al. 2022, arXiv:2202.06417): among the k most
likely tokens pick argmax (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j), h
the last layer's hidden states of the context and of the candidate, so a
likely token that would make the text repeat itself loses to one that moves
it on. The k candidates run in one forward through the cache, each attending
to the cache and itself; the chosen one's keys and values are kept."""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import Run, Step
from .utils import exists


def degeneration_penalty(candidate_hidden: Tensor, context_unit: Tensor, context_ok: Tensor) -> Tensor:
    """max_j cos(h_candidate, h_j) over the context (SimCTG's degeneration
    penalty): (b, k, d) candidates, (b, t, d) unit-norm context, (b, t) which
    context positions count -> (b, k)."""
    cand = F.normalize(candidate_hidden.float(), dim=-1)
    cos = cand @ context_unit.float().transpose(1, 2)
    return cos.masked_fill(~context_ok[:, None, :], -math.inf).amax(dim=-1)


def contrastive_scores(confidence: Tensor, penalty: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * confidence - alpha * penalty; a candidate the penalties
    banned (probability 0) never wins, whatever its penalty."""
    score = (1.0 - alpha) * confidence - alpha * penalty
    return score.masked_fill(confidence <= 0, -math.inf)


def steps(run: Run) -> Iterator[Step]:
    net, c = run.net, run.config
    b, t = run.tokens.shape
    total = t + run.seq_len
    out = run.new_output()
    if run.seq_len == 0:
        return
    alpha, k = float(c.penalty_alpha), min(c.contrastive_k, net.num_tokens)
    eos = c.eos_token
    model = run.runner(net, extra=k)
    pipeline = run.pipeline()
    valid = run.valid(total)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)

    n_prefill = min(t, net.max_seq_len) if c.restrict_to_max_seq_len else t
    hidden = model.hidden(out, t, last=n_prefill)
    logits = net.logits(hidden[:, -1])
    # unit-norm hidden states of the context; padding never counts
    context_h = hidden.new_zeros((b, total, hidden.shape[-1]))
    context_h[:, t - n_prefill:t] = F.normalize(hidden.float(), dim=-1).to(hidden.dtype)
    context_ok = torch.zeros((b, total), dtype=torch.bool, device=out.device)
    context_ok[:, t - n_prefill:t] = True if valid is None else valid[:, t - n_prefill:t]
    rows = torch.arange(b, device=out.device)

    for step in range(run.seq_len):
        cur = t + step
        trace = run.new_trace(step, logits)
        processed = pipeline(logits, *run.context(out, cur, valid), trace, sampling=False)
        run.keep(logits, processed)
        top_probs, top_ids = processed.float().softmax(dim=-1).topk(k, dim=-1)

        cand_h = net.decode(top_ids, model.cache, parallel=True)
        penalty = degeneration_penalty(cand_h, context_h[:, :cur], context_ok[:, :cur])
        score = contrastive_scores(top_probs, penalty, alpha)
        pick = score.argmax(dim=-1)
        chosen = top_ids[rows, pick]
        if exists(eos):
            chosen = chosen.masked_fill(finished, run.pad)
        model.cache.keep_candidate(pick)
        context_h[:, cur] = F.normalize(cand_h[rows, pick].float(), dim=-1).to(context_h.dtype)
        context_ok[:, cur] = True
        next_logits = net.logits(cand_h[rows, pick])

        if trace:
            trace.choose(chosen, logits, processed)
            trace.contrastive = dict(tokens=top_ids, confidence=top_probs, degeneration_penalty=penalty, score=score)
        out[:, cur] = chosen
        if exists(eos):
            finished = finished | run.is_eos(chosen)
        yield Step(step, chosen, out[:, t:cur + 1], finished, trace)
        if exists(eos) and bool(finished.all()):
            break
        logits = next_logits
