"""Sampling and greedy decoding (and contrastive decoding, whose amateur is a
stage of the pipeline): each step draws one token from the processed
distribution, or takes its argmax at temperature 0."""

from __future__ import annotations

from typing import Iterator

import torch

from .processors import ContrastiveDecoding
from .runtime import Run, Step, sample
from .utils import exists


def steps(run: Run) -> Iterator[Step]:
    b, t = run.tokens.shape
    out = run.new_output()
    if run.seq_len == 0:
        return
    eos, greedy = run.config.eos_token, run.config.greedy
    model = run.runner(run.net)
    pipeline = run.pipeline([(run.runner(a), kw["alpha"], kw["beta"]) for a, kw in zip(run.amateurs, run.cd_kwargs)])
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)

    logits = model.logits(out, t)
    for step in range(run.seq_len):
        cur = t + step
        trace = run.new_trace(step, logits)
        processed = pipeline(logits, *run.context(out, cur, valid), trace, sampling=not greedy)
        run.keep(logits, processed)
        chosen = processed.argmax(dim=-1) if greedy else sample(processed, run.generator)
        pipeline.update(chosen, processed)
        if exists(eos):
            chosen = chosen.masked_fill(finished, run.pad)
        if trace:
            trace.choose(chosen, logits, processed)
            explained = {proc.name: proc.explain(trace.candidates) for proc in pipeline.scores
                         if isinstance(proc, ContrastiveDecoding)}
            trace.contrastive_decoding = explained or None
        out[:, cur] = chosen
        if exists(eos):
            finished = finished | run.is_eos(chosen)
        yield Step(step, chosen, out[:, t:cur + 1], finished, trace)
        # without EOS nothing here waits on the device
        if step == run.seq_len - 1 or (exists(eos) and bool(finished.all())):
            break
        logits = model.logits(out, cur + 1)
