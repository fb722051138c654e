"""The teaching trace: what happened to the distribution at each decoding step.

It is recorded by the decoding loop itself while it runs (never by a second
implementation), only when asked for, and holds tensors over the batch; `row(i)`
turns one row into plain Python for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class StepTrace:
    step: int
    candidates: Tensor  # (b, n) token ids: the model's n most likely
    stages: list[str] = field(default_factory=list)  # "model", each processor, "temperature"
    probs: list[Tensor] = field(default_factory=list)  # per stage (b, n): probability after it (0 = removed)
    kept: list[Tensor] = field(default_factory=list)  # per stage (b,): vocabulary tokens still possible
    chosen: Tensor | None = None  # (b,)
    chosen_rank: Tensor | None = None  # (b,) rank in the model's distribution, 0 = most likely
    chosen_prob: Tensor | None = None  # (b,) probability it was chosen with
    beams: Tensor | None = None  # beam search: (b, beams, generated so far)
    beam_scores: Tensor | None = None  # (b, beams)
    beam_finished: Tensor | None = None  # (b, beams)
    contrastive: dict[str, Tensor] | None = None  # contrastive search: per candidate (b, k)

    def record(self, name: str, logits: Tensor):
        probs = logits.float().softmax(dim=-1)
        self.stages.append(name)
        self.probs.append(probs.gather(-1, self.candidates))
        self.kept.append(torch.isfinite(logits).sum(dim=-1))

    def choose(self, tokens: Tensor, model_logits: Tensor, final_logits: Tensor):
        self.chosen = tokens
        chosen_logit = model_logits.gather(-1, tokens[:, None])
        self.chosen_rank = (model_logits > chosen_logit).sum(dim=-1)
        self.chosen_prob = final_logits.float().softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]

    def row(self, i: int = 0) -> dict:
        """One batch row as plain Python: lists and numbers."""
        out = dict(step=self.step, candidates=self.candidates[i].tolist(), stages=list(self.stages),
                   probs={s: p[i].tolist() for s, p in zip(self.stages, self.probs)},
                   kept={s: int(k[i]) for s, k in zip(self.stages, self.kept)})
        if self.chosen is not None:
            out.update(chosen=int(self.chosen[i]))
        if self.chosen_rank is not None:
            out.update(chosen_rank=int(self.chosen_rank[i]), chosen_prob=float(self.chosen_prob[i]))
        if self.beams is not None:
            out.update(beams=self.beams[i].tolist(), beam_scores=self.beam_scores[i].tolist(),
                       beam_finished=self.beam_finished[i].tolist())
        if self.contrastive is not None:
            out.update(contrastive={k: v[i].tolist() for k, v in self.contrastive.items()})
        return out


def new_trace(step: int, model_logits: Tensor, top: int) -> StepTrace:
    candidates = model_logits.topk(min(top, model_logits.shape[-1]), dim=-1).indices
    trace = StepTrace(step=step, candidates=candidates)
    trace.record("model", model_logits)
    return trace
