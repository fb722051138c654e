"""The teaching trace: what happened to the distribution at each decoding step.

It is recorded by the decoding loop itself while it runs (never by a second
implementation), only when asked for (`stream(..., trace=True)`; `trace_top`
sets how many candidates each step records), and holds tensors over the
batch; `row(i)` turns one row into plain Python for display, and
`kept_ids(stage, i)` lists the tokens a stage left possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

LOG2 = math.log(2.0)
# the numbers a trace holds for each stage (`StepTrace`): those `row` shows, and each stage's mask of kept tokens
_NUMBERS = ("probs", "kept", "mass", "entropy")
_PER_STAGE = (*_NUMBERS, "kept_mask")


@dataclass
class StepTrace:
    """One decoding step, stage by stage. The stages are "model" (the
    network's distribution), then each processor of the pipeline in the
    order it ran (`stages`); every per-stage list below has one entry per
    stage, in that order, each over the batch.

    step: the step, 0 for the first generated token.
    candidates: (b, trace_top) token ids, the model's `trace_top` most likely,
        most likely first; `probs` follows them through the stages.
    stages: the stages' names.
    probs: per stage (b, trace_top), each candidate's probability after the
        stage (0: the stage, or one before it, removed it).
    kept: per stage (b,), how many vocabulary tokens are still possible
        (have a finite score) after it; `kept_ids` lists them.
    kept_mask: per stage (b, vocab) bools, which tokens are still possible; a
        stage that removed nothing shares the tensor of the stage before it.
    mass: per stage (b,), the model's probability (before any stage) of the
        tokens still possible: how much of what the model believed survives.
    entropy: per stage (b,), the entropy in bits of the distribution after it.
    chosen: (b,) the token chosen at this step.
    chosen_rank: (b,) its rank under the model, 0 = most likely.
    chosen_prob: (b,) the probability it was chosen with (after every stage).
    beams, beam_scores, beam_finished: beam search, the live beams (b, beams,
        generated so far), their scores and which have ended.
    beam_tree: beam search, every candidate expanded this step.
    contrastive: contrastive search, per candidate (b, k): tokens, confidence,
        degeneration penalty, score.
    contrastive_decoding: contrastive decoding, per amateur stage, its numbers
        over the candidates.
    speculative: speculative decoding, the round this token came from.
    dola: DoLa, per row: the candidate layers (b, L), each one's divergence
        from the last layer (b, L), the layer contrasted (b,), and each
        candidate layer's most likely tokens and probabilities (b, L, top).
    """

    step: int
    candidates: Tensor
    stages: list[str] = field(default_factory=list)
    chosen: Tensor | None = None
    chosen_rank: Tensor | None = None
    chosen_prob: Tensor | None = None
    beams: Tensor | None = None
    beam_scores: Tensor | None = None
    beam_finished: Tensor | None = None
    beam_tree: dict[str, Tensor] | None = None
    contrastive: dict[str, Tensor] | None = None
    contrastive_decoding: dict[str, dict[str, Tensor]] | None = None
    speculative: dict | None = None
    dola: dict[str, Tensor] | None = None
    _model_probs: Tensor | None = field(default=None, repr=False)
    # the stages' numbers: those recorded so far in `_settled` (per-stage lists, and while they came in one go
    # their stacks over the stages, which `row` reads at once); the scores of stages recorded since in `_recorded`
    _settled: dict = field(default_factory=lambda: {name: [] for name in _PER_STAGE}, repr=False)
    _stacked: dict | None = field(default=None, repr=False)
    _recorded: list = field(default_factory=list, repr=False)
    _unchanged: list = field(default_factory=list, repr=False)  # per stage, per row: it removed nothing there
    _row_of: tuple | None = field(default=None, repr=False)  # (trace, i): this trace is row i of that one's
    _plain: dict | None = field(default=None, repr=False)  # the stacks as Python lists, for the rows taken (`row`)

    def record(self, name: str, logits: Tensor):
        """Stage `name` left these scores. Its numbers are computed when first read, every stage recorded by
        then in one pass over their stack (the same numbers, stage by stage, in a few operations rather than a
        dozen a stage): a step's stages are all recorded before anything reads them. The scores are kept until
        then, so a stage must not change in place the scores it was given."""
        self.stages.append(name)
        self._recorded.append(logits)

    probs = property(lambda self: self._numbers("probs"))
    kept = property(lambda self: self._numbers("kept"))
    kept_mask = property(lambda self: self._numbers("kept_mask"))
    mass = property(lambda self: self._numbers("mass"))
    entropy = property(lambda self: self._numbers("entropy"))

    def _numbers(self, name: str) -> list[Tensor]:
        self._ready()
        return self._settled[name]

    def _ready(self):
        """Every stage's numbers in `_settled`."""
        if self._row_of is not None:
            self._take_numbers()
        if self._recorded:
            self._settle()

    def _settle(self):
        """The numbers of the stages recorded since the last read (`record`)."""
        scores = torch.stack([logits.float() for logits in self._recorded])  # (stages, b, vocab)
        self._recorded, self._plain = [], None
        log_probs = scores.log_softmax(dim=-1)
        probs = log_probs.exp()
        if self._model_probs is None:
            self._model_probs = probs[0]
        possible = scores.abs() < math.inf  # torch.isfinite, in fewer passes
        # p log p is 0 where p is 0 (there log p is -inf, or p underflowed): nan_to_num takes those to 0
        numbers = dict(probs=probs.gather(-1, self.candidates.expand(len(scores), *self.candidates.shape)),
                       kept=possible.sum(dim=-1), mass=torch.where(possible, self._model_probs, 0.0).sum(dim=-1),
                       entropy=-(probs * log_probs).nan_to_num(0.0, 0.0, 0.0).sum(dim=-1) / LOG2)
        settled = self._settled
        masks = settled["kept_mask"]
        self._stacked = None if masks else numbers
        for name, values in numbers.items():
            settled[name].extend(values.unbind(0))
        # most stages remove nothing: such a stage shares the mask of the stage before it rather than a copy
        if masks:
            unchanged = (possible == torch.cat([masks[-1][None], possible[:-1]])).all(dim=-1).tolist()
        else:
            unchanged = [[False] * possible.shape[1]] + (possible[1:] == possible[:-1]).all(dim=-1).tolist()
        for mask, rows in zip(possible.unbind(0), unchanged):
            masks.append(masks[-1] if all(rows) else mask)
        self._unchanged += unchanged

    def take_row(self, i: int, step: int) -> StepTrace:
        """Batch row `i` as a trace of its own, at step `step`: what a run of that row alone records, for rows
        processed together (`axw.sampling`'s draws done together, each row one run's). Its per-stage numbers
        are taken from this trace when first read; `row` reads their stacks."""
        self._ready()
        rows = slice(i, i + 1)
        one = StepTrace(step=step, candidates=self.candidates[rows], stages=list(self.stages), _row_of=(self, i))
        for name in ("chosen", "chosen_rank", "chosen_prob"):
            value = getattr(self, name)
            setattr(one, name, value[rows] if value is not None else None)
        return one

    def plain(self) -> dict | None:
        """(a batch's trace whose rows were taken, `take_row`) Its per-stage numbers and candidates as Python lists,
        [stage][row], converted once for all its rows; None unless its stages' numbers came in one go."""
        if self._plain is None and self._stacked is not None and not self._recorded:
            self._plain = {name: t.tolist() for name, t in self._stacked.items()}
            self._plain["candidates"] = self.candidates.tolist()
        return self._plain

    def _take_numbers(self):
        """(a row taken from a batch's trace, `take_row`) Its per-stage numbers, from that trace."""
        (batch, i), self._row_of = self._row_of, None
        rows = slice(i, i + 1)
        self._model_probs = batch._model_probs[rows]
        self._unchanged = [[u[i]] for u in batch._unchanged]
        for name in _NUMBERS:
            self._settled[name] = [t[rows] for t in batch._settled[name]]
        masks = self._settled["kept_mask"]
        for mask, unchanged in zip(batch._settled["kept_mask"], batch._unchanged):
            masks.append(masks[-1] if unchanged[i] else mask[rows])

    def choose(self, tokens: Tensor, model_logits: Tensor, final_logits: Tensor):
        self.chosen = tokens
        chosen_logit = model_logits.gather(-1, tokens[:, None])
        self.chosen_rank = (model_logits > chosen_logit).sum(dim=-1)
        self.chosen_prob = final_logits.float().softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]

    def kept_ids(self, stage: str | int = -1, i: int = 0) -> list[int]:
        """The token ids still possible after `stage` (its name or its index in
        `stages`; default the last) in batch row `i`, most likely under the
        model first (ties by id)."""
        index = self._stage_index(stage)
        ids = self.kept_mask[index][i].nonzero()[:, 0]
        order = self._model_probs[i, ids].argsort(descending=True, stable=True)
        return ids[order].tolist()

    def _stage_index(self, stage: str | int) -> int:
        if isinstance(stage, str):
            if stage not in self.stages:
                raise ValueError(f"no stage {stage!r} in this trace; its stages are {self.stages}")
            return self.stages.index(stage)
        if not isinstance(stage, int) or isinstance(stage, bool) or not -len(self.stages) <= stage < len(self.stages):
            raise ValueError(f"stage must be a name in {self.stages} or an index in [-{len(self.stages)}, "
                             f"{len(self.stages)}), got {stage!r}")
        return stage

    def row(self, i: int = 0, kept_ids: bool = False) -> dict:
        """One batch row as plain Python: lists and numbers, per stage keyed by
        its name. Probabilities and masses are clipped to [0, 1] (float
        rounding may sum them to 1.0000002) and entropies to >= 0 (no -0.0).
        `kept_ids=True` adds each stage's `kept_ids` (a list per stage: can be
        the whole vocabulary)."""
        if self._recorded:
            self._ready()
        plain = self._row_of[0].plain() if self._row_of is not None else None
        if plain is not None:  # a row taken from a batch's trace (`take_row`): the batch's lists, converted once
            j = self._row_of[1] + i
            probs, kept, mass, entropy = ([stage[j] for stage in plain[name]] for name in _NUMBERS)
            candidates = plain["candidates"][j]
        else:
            # each number as a stack over the stages: one conversion for all of them
            stacked = self._stacked
            if stacked is None:
                stacked = {name: torch.stack(self._numbers(name)) for name in _NUMBERS}
            probs, kept, mass, entropy = (stacked[name][:, i].tolist() for name in _NUMBERS)
            candidates = self.candidates[i].tolist()
        out = dict(step=self.step, candidates=candidates, stages=list(self.stages),
                   probs={s: [min(max(p, 0.0), 1.0) for p in ps] for s, ps in zip(self.stages, probs)},
                   kept=dict(zip(self.stages, kept)),
                   mass={s: _unit(m) for s, m in zip(self.stages, mass)},
                   entropy={s: max(h, 0.0) + 0.0 for s, h in zip(self.stages, entropy)})
        if kept_ids:
            out.update(kept_ids={s: self.kept_ids(j, i) for j, s in enumerate(self.stages)})
        if self.chosen is not None:
            out.update(chosen=int(self.chosen[i]))
        if self.chosen_rank is not None:
            out.update(chosen_rank=int(self.chosen_rank[i]), chosen_prob=_unit(self.chosen_prob[i]))
        if self.beams is not None:
            out.update(beams=self.beams[i].tolist(), beam_scores=self.beam_scores[i].tolist(),
                       beam_finished=self.beam_finished[i].tolist())
        if self.beam_tree is not None:
            out.update(beam_tree={k: v[i].tolist() for k, v in self.beam_tree.items()})
        if self.contrastive is not None:
            out.update(contrastive={k: v[i].tolist() for k, v in self.contrastive.items()})
        if self.contrastive_decoding is not None:
            out.update(contrastive_decoding={name: {k: v[i].tolist() for k, v in d.items()}
                                             for name, d in self.contrastive_decoding.items()})
        if self.dola is not None:
            out.update(dola={k: v[i].tolist() for k, v in self.dola.items()})
        if self.speculative is not None:
            out.update(speculative={k: v[i].tolist() if isinstance(v, Tensor) else v
                                    for k, v in self.speculative.items()})
        return out


def _unit(x: Tensor | float) -> float:
    """A probability for display: in [0, 1], never -0.0."""
    return min(max(float(x), 0.0), 1.0) + 0.0


def new_trace(step: int, model_logits: Tensor, top: int) -> StepTrace:
    candidates = model_logits.topk(min(top, model_logits.shape[-1]), dim=-1).indices
    trace = StepTrace(step=step, candidates=candidates)
    trace.record("model", model_logits)
    return trace
