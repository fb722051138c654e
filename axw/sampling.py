"""Sampling and greedy decoding (and contrastive decoding, whose amateur is a
stage of the pipeline): each step draws one token from the processed
distribution, or takes its argmax at temperature 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .processors import ContrastiveDecoding
from .runtime import Run, Step, sample
from .utils import exists


@dataclass
class Scores:
    """What one step draws from: the model's logits (traced as its distribution), the scores the pipeline starts
    from (None: the logits themselves; DoLa: a contrast of them), and what the source adds to the step's trace:
    `stage(trace)` before the pipeline's stages, `note(trace)` after the choice."""

    logits: Tensor
    scores: Tensor | None = None
    stage: Callable | None = None
    note: Callable | None = None


def steps(run: Run) -> Iterator[Step]:
    out = run.new_output()
    if run.seq_len == 0:
        return
    model = run.runner(run.net)
    pipeline = run.pipeline([(run.runner(a), kw["alpha"], kw["beta"]) for a, kw in zip(run.amateurs, run.cd_kwargs)])

    def explain(trace):
        explained = {proc.name: proc.explain(trace.candidates) for proc in pipeline.scores
                     if isinstance(proc, ContrastiveDecoding)}
        trace.contrastive_decoding = explained or None

    yield from draw(run, out, pipeline, lambda end: Scores(model.logits(out, end), note=explain))


def draw(run: Run, out: Tensor, pipeline, source: Callable[[int], Scores]) -> Iterator[Step]:
    """Sampling's loop, which greedy and DoLa share: each step the pipeline processes what `source(end)` scored
    after `out[:, :end]`, and one token is drawn from it (its argmax at temperature 0)."""
    b, t = run.tokens.shape
    eos, greedy = run.config.eos_token, run.config.greedy
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)

    scored = source(t)
    for step in range(run.seq_len):
        cur = t + step
        logits = scored.logits
        trace = run.new_trace(step, logits)
        if trace and scored.stage is not None:
            scored.stage(trace)
        processed = pipeline(logits if scored.scores is None else scored.scores, *run.context(out, cur, valid), trace,
                             sampling=not greedy)
        run.keep(logits, processed)
        chosen = processed.argmax(dim=-1) if greedy else sample(processed, run.generator)
        pipeline.update(chosen, processed)
        if exists(eos):
            chosen = chosen.masked_fill(finished, run.pad)
        if trace:
            trace.choose(chosen, logits, processed)
            if scored.note is not None:
                scored.note(trace)
        out[:, cur] = chosen
        if exists(eos):
            finished = finished | run.is_eos(chosen)
        yield Step(step, chosen, out[:, t:cur + 1], finished, trace)
        # without EOS nothing here waits on the device
        if step == run.seq_len - 1 or (exists(eos) and bool(finished.all())):
            break
        scored = source(cur + 1)
