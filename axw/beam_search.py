"""Beam search, and stochastic beam search (Kool et al. 2019).

Each step extends every live beam by every token and keeps the best `beams`
per row; the KV cache follows the kept beams by reordering its rows in place.
A beam of one is greedy search.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from einops import rearrange
from torch import Tensor

from .runtime import Run, Step
from .utils import exists


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise, -log(-log(u)), shaped like `like`."""
    u = torch.rand(like.shape, device=like.device, generator=generator).clamp(min=1e-20, max=1 - 1e-7)
    return -torch.log(-torch.log(u))


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def truncated_gumbel(parent: Tensor, g: Tensor, z: Tensor) -> Tensor:
    """Children's Gumbels conditioned on their maximum being the parent's
    (Kool et al. 2019, eq. 23, in the stable form of their appendix B.3):
    -log(exp(-parent) - exp(-z) + exp(-g)), z the max of the children's g."""
    v = parent - g + log1mexp((g - z).clamp(max=0.0))
    out = parent - v.clamp(min=0.0) - torch.log1p(torch.exp(-v.abs()))
    # a child with no probability, or under a parent with none, is never drawn
    return out.masked_fill(torch.isneginf(g) | torch.isneginf(parent), -math.inf)


class BeamState:
    """The live beams of every batch row, their scores and which have ended.

    Scores are summed token log-probabilities. A beam that emits EOS is
    finished: it stays in the beam set with its score frozen (its only
    continuation is padding at log-prob 0), so it competes with the live
    beams until the end. With `length_penalty` != 0, beams are ranked by
    score / length ** length_penalty (length = generated tokens, EOS included).

    Stochastic beam search (Kool et al. 2019, arXiv:1903.06059) ranks by
    `keys` instead: each beam's log-probability under the sampling
    distribution, perturbed by a Gumbel that every child inherits as its
    maximum (a truncated Gumbel), so the final beams are a sample without
    replacement of whole sequences, the first of them a plain sample."""

    def __init__(self, batch: int, beams: int, sequences: Tensor, pad: int, eos: Tensor | None, length_penalty: float,
                 stochastic: bool, generator: torch.Generator | None = None):
        self.b, self.n, self.pad, self.eos, self.lp = batch, beams, pad, eos, length_penalty
        self.stochastic, self.generator = stochastic, generator
        device = sequences.device
        self.sequences = sequences  # (b * current beams, total)
        self.token_logp = torch.zeros(sequences.shape, device=device)  # the model's log-prob of each token
        self.scores = torch.zeros((batch, 1), device=device)
        self.lengths = torch.zeros((batch, 1), device=device)
        self.finished = torch.zeros((batch, 1), dtype=torch.bool, device=device)
        self.phi = torch.zeros((batch, 1), device=device)  # stochastic: log-prob under the sampling distribution
        self.keys = torch.zeros((batch, 1), device=device)  # stochastic: its perturbed value

    def _is_eos(self, token: Tensor) -> Tensor:
        """Where `token` is a stop id (`eos`: none, one id or several)."""
        return torch.isin(token, self.eos) if exists(self.eos) else torch.zeros_like(token, dtype=torch.bool)

    def _rank(self, scores: Tensor, lengths: Tensor) -> Tensor:
        if self.lp == 0:
            return scores
        return scores / lengths.clamp(min=1).pow(self.lp)

    def order(self) -> Tensor:
        """What ranks the current beams, (b, beams)."""
        return self.keys if self.stochastic else self.ranked_scores()

    def advance(self, log_probs: Tensor, cur: int, sample_log_probs: Tensor | None = None,
                model_log_probs: Tensor | None = None, tree_width: int = 0) -> tuple[Tensor, dict | None]:
        """Extend every beam by every token and keep the best `beams` per row.
        `log_probs`: the scores' per-token log-probs (after penalties);
        `sample_log_probs`: the sampling distribution's (stochastic);
        `model_log_probs`: the model's own, recorded per token. Returns, for
        each new beam, the index of the row it came from, and (with
        `tree_width`) each beam's best `tree_width` candidates for the trace."""
        b, nb = self.scores.shape
        vocab = log_probs.shape[-1]
        finished = self.finished[..., None]
        # a finished beam's only continuation: padding, at no cost
        frozen = torch.full((b, nb, vocab), -math.inf, device=log_probs.device)
        frozen[..., self.pad] = 0.0
        candidates = self.scores[..., None] + torch.where(finished, frozen, log_probs.view(b, nb, vocab))
        lengths = (self.lengths + (~self.finished).float())[..., None].expand(b, nb, vocab)
        ranked = self._rank(candidates, lengths)
        phi = keys = None
        if self.stochastic:
            phi = self.phi[..., None] + torch.where(finished, frozen, sample_log_probs.view(b, nb, vocab))
            g = phi + gumbel_noise(phi, self.generator)
            keys = truncated_gumbel(self.keys[..., None], g, g.amax(dim=-1, keepdim=True))
            # a finished beam's one child keeps its key exactly
            keys = torch.where(finished, frozen + self.keys[..., None], keys)
        rank = keys if self.stochastic else ranked

        top = rank.reshape(b, nb * vocab).topk(self.n, dim=-1).indices  # (b, beams)
        parent_beam, token = top // vocab, top % vocab
        parents = (torch.arange(b, device=top.device)[:, None] * nb + parent_beam).reshape(-1)

        tree = self._tree(rank, candidates, ranked, keys, top, tree_width) if tree_width else None
        self.scores = candidates.reshape(b, -1).gather(1, top)
        self.lengths = lengths.reshape(b, -1).gather(1, top)
        if self.stochastic:
            self.phi, self.keys = phi.reshape(b, -1).gather(1, top), keys.reshape(b, -1).gather(1, top)
        was_finished = self.finished.gather(1, parent_beam)
        self.finished = was_finished | self._is_eos(token)
        self.sequences = self.sequences.index_select(0, parents)
        self.sequences[:, cur] = token.reshape(-1)
        self.token_logp = self.token_logp.index_select(0, parents)
        if exists(model_log_probs):
            logp = model_log_probs[parents, token.reshape(-1)]
            self.token_logp[:, cur] = torch.where(was_finished.reshape(-1), 0.0, logp)
        return parents, tree

    def _tree(self, rank, candidates, ranked, keys, top, width) -> dict:
        """Each beam's best `width` candidates this step: (b, beams * width)."""
        b, nb, vocab = rank.shape
        width = min(width, vocab)
        best = rank.topk(width, dim=-1).indices  # (b, nb, width)
        flat = (torch.arange(nb, device=rank.device)[None, :, None] * vocab + best).reshape(b, -1)
        kept_as = torch.full_like(flat, -1)
        match = flat[:, :, None] == top[:, None, :]  # (b, candidates, beams)
        kept_as = torch.where(match.any(-1), match.float().argmax(-1), kept_as)
        token = best.reshape(b, -1)
        tree = dict(parent=(flat // vocab), token=token, score=candidates.reshape(b, -1).gather(1, flat),
                    ranked_score=ranked.reshape(b, -1).gather(1, flat), kept_as=kept_as,
                    possible=torch.isfinite(rank.reshape(b, -1).gather(1, flat)),
                    eos=self._is_eos(token),
                    parent_finished=self.finished.gather(1, flat // vocab))
        if exists(keys):
            tree["key"] = keys.reshape(b, -1).gather(1, flat)
        return tree

    def ranked_scores(self) -> Tensor:
        return self._rank(self.scores, self.lengths)

    def last_tokens(self, cur: int) -> Tensor:
        return self.sequences[:, cur - 1]

    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def best_rows(self) -> Tensor:
        pick = self.order().argmax(dim=-1)
        return torch.arange(self.b, device=pick.device) * self.scores.shape[1] + pick

    def final(self, start: int) -> tuple[Tensor, Tensor]:
        """All beams best first: (beams, b, total) and their (beams, b) scores."""
        order = self.order().argsort(dim=-1, descending=True)
        nb = self.scores.shape[1]
        rows = (torch.arange(self.b, device=order.device)[:, None] * nb + order).reshape(-1)
        seqs = rearrange(self.sequences.index_select(0, rows), "(b beams) n -> beams b n", b=self.b)
        return seqs, rearrange(self.ranked_scores().gather(1, order), "b beams -> beams b")


def steps(run: Run) -> Iterator[Step]:
    """Beam search over the scores (the model after the penalties); with
    `stochastic` (and a temperature above 0), Kool et al.'s stochastic beam
    search over the sampling distribution (penalties, filters, temperature)."""
    c = run.config
    b, t = run.tokens.shape
    total = t + run.seq_len
    n_beams = c.beams
    out = run.new_output()
    state = BeamState(b, n_beams, out, run.pad, run.eos, c.length_penalty,
                      stochastic=c.stochastic and not c.greedy, generator=run.generator)
    if run.seq_len == 0:
        run.beams, run.beam_scores = out[None], torch.zeros((1, b), device=out.device)
        return
    model = run.runner(run.net)
    pipeline = run.pipeline()
    tree_width = min(n_beams + 1, run.net.num_tokens) if c.trace else 0

    logits = model.logits(out, t)
    for step in range(run.seq_len):
        cur = t + step
        valid = run.valid(total, model.start)
        context = run.context(state.sequences, cur, valid)
        trace = run.new_trace(step, logits)
        scores = pipeline(logits, *context, sampling=False)
        sample_log_probs = None
        if state.stochastic:
            sample_log_probs = pipeline.run(pipeline.sampling, scores, *context).float().log_softmax(dim=-1)
        model_log_probs = logits.float().log_softmax(dim=-1)
        log_probs = scores.float().log_softmax(dim=-1) if pipeline.scores else model_log_probs
        run.keep(logits, log_probs, repeat=n_beams if step == 0 else 1)
        parents, tree = state.advance(log_probs, cur, sample_log_probs, model_log_probs, tree_width)
        model.reorder(parents)
        pipeline.reorder(parents)
        if trace:
            trace.beams = rearrange(state.sequences[:, t:cur + 1], "(b beams) n -> b beams n", b=b)
            trace.beam_scores = state.ranked_scores().view(b, n_beams)
            trace.beam_finished = state.finished.view(b, n_beams)
            trace.beam_tree = tree
        best = state.best_rows()
        yield Step(step, state.sequences[best, cur], state.sequences[best, t:cur + 1],
                   state.finished.view(b, n_beams).all(dim=-1), trace, state.token_logp[best, t:cur + 1].exp())
        if step == run.seq_len - 1 or (exists(c.eos_token) and state.all_finished()):
            break
        logits = model.logits(state.sequences, cur + 1)
    run.beams, run.beam_scores = state.final(t)
    run.sequences = run.beams[0]
