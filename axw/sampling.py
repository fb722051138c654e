"""Sampling and greedy decoding (and contrastive decoding, whose amateur is a
stage of the pipeline): each step draws one token from the processed
distribution, or takes its argmax at temperature 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .processors import ContrastiveDecoding, Pipeline
from .row_generators import RowGenerators
from .runtime import Run, Step, sample
from .shared import drawing, in_lockstep
from .trace import StepTrace, new_trace
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

    together = _together_key(run, model.net, pipeline)
    yield from draw(run, out, pipeline, lambda end: Scores(model.logits(out, end), note=explain), together)


@dataclass(eq=False)  # a draw is itself: compared by identity
class Together:
    """One run's draw at one step (its head, pipeline, draw and trace), done with the draws of the other runs of
    a shared forward whose `key` is equal (`axw.shared.drawing`): their rows go through one head, pipeline, draw
    and trace each, as one batch goes, and each run gets the numbers it gets alone. Only runs of one row whose
    stages are row-wise and equal (`Pipeline.signature`) and that draw from a generator of their own (or take
    the argmax) share a key."""

    key: tuple
    net: object
    pipeline: Pipeline
    generator: torch.Generator | RowGenerators | None
    greedy: bool
    top: int | None  # the trace's candidates, None without a trace
    step: int
    done: bool = False
    error: BaseException | None = None
    logits: Tensor | None = None
    trace: StepTrace | None = None
    processed: Tensor | None = None
    chosen: Tensor | None = None

    @staticmethod
    def together(draws: list[Together], hiddens: list[Tensor]):
        """Do `draws` (equal keys) from their steps' hidden states (1, 1, dim): the rows' logits, each row's the
        bits it gets alone (`TransformerWrapper.logits_rows`), then the rest in one pass over the rows."""
        first = draws[0]
        with torch.no_grad():
            logits = first.net.logits_rows(torch.cat([hidden[:, 0] for hidden in hiddens]))
            for d, row in zip(draws, logits.split(1)):
                d.logits = row
            trace = new_trace(0, logits, first.top) if first.top is not None else None
            processed = first.pipeline(logits, None, None, trace, sampling=not first.greedy)
            chosen = (processed.argmax(dim=-1) if first.greedy
                      else sample(processed, RowGenerators.of([d.generator for d in draws])))
            if trace:
                trace.choose(chosen, logits, processed)
        for i, d in enumerate(draws):
            d.processed, d.chosen = processed[i:i + 1], chosen[i:i + 1]
            d.trace = trace.take_row(i, d.step) if trace else None
            d.done = True


def _together_key(run: Run, net, pipeline: Pipeline) -> tuple | None:
    """The key of this run's draws (`Together`), or None when they are its own to do."""
    signature = pipeline.signature()
    if run.tokens.shape[0] != 1 or signature is None:
        return None
    greedy = run.config.greedy
    if not greedy and not (isinstance(run.generator, torch.Generator)
                           or (isinstance(run.generator, RowGenerators) and len(run.generator) == 1)):
        return None  # torch's own generator: the runs' draws would come in the order they run
    return (id(net), signature, greedy, run.config.trace_top if run.config.trace else None)


def draw(run: Run, out: Tensor, pipeline, source: Callable[[int], Scores], together: tuple | None = None
         ) -> Iterator[Step]:
    """Sampling's loop, which greedy and DoLa share: each step the pipeline processes what `source(end)` scored
    after `out[:, :end]`, and one token is drawn from it (its argmax at temperature 0). With a `together` key
    (`_together_key`), a step whose forward is shared with other runs taking turns (`axw.shared.Lockstep`) may
    have its draw done with theirs (`Together`): the same numbers."""
    b, t = run.tokens.shape
    eos, greedy = run.config.eos_token, run.config.greedy
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)

    top = run.config.trace_top if run.config.trace else None
    scored, done = source(t), None
    for step in range(run.seq_len):
        cur = t + step
        logits = scored.logits
        if done is not None:  # drawn with other runs
            trace, processed, chosen = done.trace, done.processed, done.chosen
        else:
            trace = run.new_trace(step, logits)
            if trace and scored.stage is not None:
                scored.stage(trace)
            processed = pipeline(logits if scored.scores is None else scored.scores, *run.context(out, cur, valid),
                                 trace, sampling=not greedy)
            chosen = processed.argmax(dim=-1) if greedy else sample(processed, run.generator)
        run.keep(logits, processed)
        pipeline.update(chosen, processed)
        if exists(eos):
            chosen = chosen.masked_fill(finished, run.pad)
        if trace:
            if done is None:
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
        done = None  # a run that left the turns draws its own from then on
        if together is not None and in_lockstep():
            with drawing(Together(together, run.net, pipeline, run.generator, greedy, top, step + 1)) as plan:
                scored = source(cur + 1)
            if plan.error is not None:
                raise plan.error
            done = plan if plan.done else None
        else:
            scored = source(cur + 1)
