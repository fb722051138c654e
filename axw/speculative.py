"""Speculative decoding (Leviathan et al. 2023, arXiv:2211.17192; Chen et al.
2023, arXiv:2302.01318): a cheap drafter proposes several tokens, the model
checks them all in one forward pass through its KV cache, and the rejected
positions are rolled back in both caches. Greedy, the output is token for
token the model's own; sampling, it has exactly the model's distribution.

Drafters: an assistant model (any axw model with the same vocabulary size),
or prompt lookup (Saxena 2023, transformers' `prompt_lookup_num_tokens`),
which copies what followed the latest earlier occurrence of the text's last
n-gram and costs no model at all.

The accept/reject rule runs on the model's and the draft's distributions
after the same pipeline (penalties, filters, temperature): a drafted token d
is accepted with probability min(1, p(d) / q(d)); at the first rejection the
token is drawn from max(0, p - q), normalised; when all are accepted, one
more comes from p. Greedy, a drafted token is accepted when it is the model's
argmax. A batch advances by the fewest tokens any row accepted in a round
(plus the one token every row then draws); every emitted token still has the
model's distribution, since each row's stop point only decides where its next
round of drafting begins.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .generation import Decoding, Step, sample
from .utils import exists

MAX_DRAFT = 64  # the heuristic schedule never drafts more per round


def lookup_drafts(seq: Tensor, end: int, valid: Tensor | None, n_draft: int, max_ngram: int, pad: int) -> Tensor:
    """Prompt-lookup drafts (b, n_draft): for each row, the tokens that followed
    the latest earlier occurrence of the longest suffix (up to `max_ngram`
    tokens) of `seq[:, :end]` that occurs earlier; `pad` where there is none."""
    b = seq.shape[0]
    drafts = torch.full((b, n_draft), pad, dtype=torch.long, device=seq.device)
    rows = seq[:, :end].tolist()
    starts = [0] * b if valid is None else (~valid[:, :end]).sum(dim=1).tolist()
    for i, (row, first) in enumerate(zip(rows, starts)):
        for n in range(min(max_ngram, end - first - 1), 0, -1):
            suffix = row[end - n:]
            # latest match that ends before the suffix itself and has something after it
            for s in range(end - n - 1, first - 1, -1):
                if row[s:s + n] == suffix:
                    found = row[s + n:s + n + n_draft]
                    drafts[i, :len(found)] = torch.tensor(found, dtype=torch.long)
                    break
            else:
                continue
            break
    return drafts


def steps(run: Decoding) -> Iterator[Step]:
    c = run.config
    b, t = run.tokens.shape
    out = run.new_output()
    if run.seq_len == 0:
        return
    eos, greedy = c.eos_token, c.greedy
    lookup = run.assistant is None
    n_draft = c.prompt_lookup_num_tokens if lookup else c.num_assistant_tokens
    target = run.runner(run.net, extra=MAX_DRAFT + 1)
    draft = None if lookup else run.runner(run.assistant, extra=MAX_DRAFT + 1)
    pipeline, draft_pipeline = run.pipeline(), run.pipeline()
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)
    rows = torch.arange(b, device=out.device)
    stats = run.stats = dict(rounds=0, drafted=0, accepted=0, emitted=0, target_forwards=0)

    cur, step = t, 0
    while step < run.seq_len:
        # never draft past the end: the last emitted token comes from the model
        gamma = min(n_draft, run.seq_len - step - 1)

        # --- draft gamma tokens (and, to sample or trace, the draft's processed distribution q at each) ---
        need_q = not greedy or c.trace
        q = [None] * gamma
        if lookup:
            drafts = lookup_drafts(out, cur, valid, gamma, c.max_matching_ngram_size, run.pad)
        else:
            drafts = torch.empty((b, gamma), dtype=torch.long, device=out.device)
            threshold = c.assistant_confidence_threshold
            for j in range(gamma):
                logits = draft.logits(out, cur + j)
                processed = draft_pipeline(logits, *run.context(out, cur + j, valid), sampling=not greedy)
                token = processed.argmax(dim=-1) if greedy else sample(processed, run.generator)
                if need_q or threshold > 0:
                    q[j] = processed.float().softmax(dim=-1)
                drafts[:, j] = token
                out[:, cur + j] = token
                # the draft stops once it is unsure of what it proposed (transformers' assistant confidence)
                if threshold > 0 and j < gamma - 1 and bool((q[j][rows, token] < threshold).any()):
                    gamma, drafts, q = j + 1, drafts[:, :j + 1], q[:j + 1]
                    break
        out[:, cur:cur + gamma] = drafts

        # --- one forward of the model over the last token and the drafts ---
        hidden = target.hidden(out, cur + gamma, last=gamma + 1)
        model_logits = run.net.logits(hidden)  # (b, gamma + 1, vocab): position cur + j for j = 0..gamma
        stats["target_forwards"] += 1
        traces = [run.new_trace(step + j, model_logits[:, j]) for j in range(gamma + 1)]
        if greedy and not pipeline.scores and not c.trace:
            processed_all = model_logits.unbind(1)  # no stage changes greedy scores
        else:
            processed_all = [pipeline(model_logits[:, j], *run.context(out, cur + j, valid), traces[j],
                                      sampling=not greedy) for j in range(gamma + 1)]
        p = [pr.float().softmax(dim=-1) for pr in processed_all] if need_q else [None] * (gamma + 1)

        # --- accept or reject each drafted token ---
        accepted = torch.ones((b, gamma), dtype=torch.bool, device=out.device)
        model_p = draft_p = torch.ones((b, gamma), device=out.device)
        if gamma:
            if need_q:
                model_p = torch.stack([p[j][rows, drafts[:, j]] for j in range(gamma)], dim=1)
                if not lookup:  # prompt lookup proposes each token with certainty: q(d) = 1
                    draft_p = torch.stack([q[j][rows, drafts[:, j]] for j in range(gamma)], dim=1)
            if greedy:
                accepted = drafts == torch.stack([pr.argmax(dim=-1) for pr in processed_all[:gamma]], dim=1)
            else:
                u = torch.rand((b, gamma), device=out.device, generator=run.generator)
                accepted = u * draft_p < model_p  # u < p / q, without dividing
        n_row = accepted.long().cumprod(dim=1).sum(dim=1)  # (b,) each row's accepted prefix
        n_row = torch.where(finished, gamma, n_row)  # a stopped row never holds the others back
        n = int(n_row.min())

        # --- the token after the accepted prefix: a drafted one some rows accepted, else the model's own ---
        final = processed_all[n]
        if greedy:
            replacement = final.argmax(dim=-1)
        elif n < gamma:
            proposal = F.one_hot(drafts[:, n], p[n].shape[-1]).float() if lookup else q[n]
            residual = (p[n] - proposal).clamp(min=0)
            empty = residual.sum(dim=-1, keepdim=True) <= 0
            residual = torch.where(empty, p[n], residual)
            replacement = sample(residual / residual.sum(dim=-1, keepdim=True), run.generator, logits=False)
        else:
            replacement = sample(final, run.generator)
        last = torch.where(n_row > n, drafts[:, n], replacement) if n < gamma else replacement
        emitted = torch.cat((drafts[:, :n], last[:, None]), dim=1)  # (b, n + 1)

        stats["rounds"] += 1
        stats["drafted"] += gamma * int((~finished).sum())
        stats["accepted"] += int(torch.where(finished, 0, n_row).sum())

        # --- both caches forget the rejected positions ---
        target.rollback(gamma - n)
        if exists(draft):
            draft.rollback(max(draft.fed - (cur + n), 0), exact=False)

        # --- emit, stopping rows at EOS ---
        round_info = None
        if c.trace:
            round_info = dict(round=stats["rounds"] - 1, drafted=drafts, draft_probs=draft_p, model_probs=model_p,
                              accepted=accepted, n_accepted=n_row, replacement=replacement,
                              drafter="prompt lookup" if lookup else "assistant")
        for j in range(n + 1):
            token = emitted[:, j]
            if exists(eos):
                token = token.masked_fill(finished, run.pad)
            out[:, cur] = token
            trace = traces[j]
            if trace:
                trace.choose(token, model_logits[:, j], processed_all[j])
                trace.speculative = dict(round_info, position=j, emitted=n + 1,
                                         acceptance_rate=stats["accepted"] / max(stats["drafted"], 1),
                                         tokens_per_forward=(stats["emitted"] + j + 1) / stats["target_forwards"])
            if exists(eos):
                finished = finished | (token == eos)
            cur, step = cur + 1, step + 1
            yield Step(step - 1, token, out[:, t:cur], finished, trace)
        stats["emitted"] += n + 1
        out[:, cur:cur + gamma - n - 1] = run.pad  # rejected drafts leave nothing behind
        if exists(eos) and bool(finished.all()):
            break
        if c.num_assistant_tokens_schedule == "heuristic" and not lookup:
            # transformers' heuristic: draft more after a round that was all accepted, fewer after one that was not
            n_draft = min(n_draft + 2, MAX_DRAFT) if n == gamma else max(1, n_draft - 1)
