"""The teaching trace: what happened to the distribution at each decoding step.

It is recorded by the decoding loop itself while it runs (never by a second
implementation), only when asked for, and holds tensors over the batch; `row(i)`
turns one row into plain Python for display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

LOG2 = math.log(2.0)


@dataclass
class StepTrace:
    step: int
    candidates: Tensor  # (b, n) token ids: the model's n most likely
    stages: list[str] = field(default_factory=list)  # "model", then each processor of the pipeline
    probs: list[Tensor] = field(default_factory=list)  # per stage (b, n): probability after it (0 = removed)
    kept: list[Tensor] = field(default_factory=list)  # per stage (b,): vocabulary tokens still possible
    mass: list[Tensor] = field(default_factory=list)  # per stage (b,): the model's probability of those tokens
    entropy: list[Tensor] = field(default_factory=list)  # per stage (b,): entropy in bits after it
    chosen: Tensor | None = None  # (b,)
    chosen_rank: Tensor | None = None  # (b,) rank in the model's distribution, 0 = most likely
    chosen_prob: Tensor | None = None  # (b,) probability it was chosen with
    beams: Tensor | None = None  # beam search: (b, beams, generated so far)
    beam_scores: Tensor | None = None  # (b, beams)
    beam_finished: Tensor | None = None  # (b, beams)
    beam_tree: dict[str, Tensor] | None = None  # beam search: every candidate expanded this step
    contrastive: dict[str, Tensor] | None = None  # contrastive search: per candidate (b, k)
    contrastive_decoding: dict[str, dict[str, Tensor]] | None = None  # per amateur stage: over the candidates
    speculative: dict | None = None  # speculative decoding: the round this token came from
    _model_probs: Tensor | None = field(default=None, repr=False)

    def record(self, name: str, logits: Tensor):
        log_probs = logits.float().log_softmax(dim=-1)
        probs = log_probs.exp()
        if self._model_probs is None:
            self._model_probs = probs
        possible = torch.isfinite(logits)
        self.stages.append(name)
        self.probs.append(probs.gather(-1, self.candidates))
        self.kept.append(possible.sum(dim=-1))
        self.mass.append(torch.where(possible, self._model_probs, 0.0).sum(dim=-1))
        self.entropy.append(-torch.where(probs > 0, probs * log_probs, 0.0).sum(dim=-1) / LOG2)

    def choose(self, tokens: Tensor, model_logits: Tensor, final_logits: Tensor):
        self.chosen = tokens
        chosen_logit = model_logits.gather(-1, tokens[:, None])
        self.chosen_rank = (model_logits > chosen_logit).sum(dim=-1)
        self.chosen_prob = final_logits.float().softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]

    def row(self, i: int = 0) -> dict:
        """One batch row as plain Python: lists and numbers."""
        out = dict(step=self.step, candidates=self.candidates[i].tolist(), stages=list(self.stages),
                   probs={s: p[i].tolist() for s, p in zip(self.stages, self.probs)},
                   kept={s: int(k[i]) for s, k in zip(self.stages, self.kept)},
                   mass={s: float(m[i]) for s, m in zip(self.stages, self.mass)},
                   entropy={s: float(h[i]) for s, h in zip(self.stages, self.entropy)})
        if self.chosen is not None:
            out.update(chosen=int(self.chosen[i]))
        if self.chosen_rank is not None:
            out.update(chosen_rank=int(self.chosen_rank[i]), chosen_prob=float(self.chosen_prob[i]))
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
        if self.speculative is not None:
            out.update(speculative={k: v[i].tolist() if isinstance(v, Tensor) else v
                                    for k, v in self.speculative.items()})
        return out


def new_trace(step: int, model_logits: Tensor, top: int) -> StepTrace:
    candidates = model_logits.topk(min(top, model_logits.shape[-1]), dim=-1).indices
    trace = StepTrace(step=step, candidates=candidates)
    trace.record("model", model_logits)
    return trace
