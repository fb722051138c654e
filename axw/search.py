"""Search strategies beyond one-token sampling: beam search, contrastive
search's degeneration penalty, and contrastive decoding's expert/amateur score."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .utils import exists


def contrastive_decode_fn(expert_logits: Tensor, amateur_logits: Tensor, alpha: float = 0.1, beta: float = 0.5):
    """Contrastive decoding (Li et al. 2022, arXiv:2210.15097) in the logit form
    of O'Brien & Lewis 2023 (arXiv:2309.09117, Algorithm 2):
    score = (1 + beta) * expert - beta * amateur, over the plausible tokens only,
    those whose expert logit is within log(alpha) of the best one."""
    cutoff = math.log(alpha) + expert_logits.amax(dim=-1, keepdim=True)
    scores = (1 + beta) * expert_logits - beta * amateur_logits.to(expert_logits.dtype)
    return scores.masked_fill(expert_logits < cutoff, -math.inf)


def degeneration_penalty(candidate_hidden: Tensor, context_unit: Tensor, context_ok: Tensor) -> Tensor:
    """max_j cos(h_candidate, h_j) over the context (SimCTG's degeneration
    penalty): (b, k, d) candidates, (b, t, d) unit-norm context, (b, t) which
    context positions count -> (b, k)."""
    cand = F.normalize(candidate_hidden.float(), dim=-1)
    cos = cand @ context_unit.float().transpose(1, 2)
    return cos.masked_fill(~context_ok[:, None, :], -math.inf).amax(dim=-1)


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    u = torch.rand(like.shape, device=like.device, generator=generator).clamp(min=1e-20, max=1 - 1e-7)
    return -torch.log(-torch.log(u))


class BeamState:
    """The live beams of every batch row, their scores and which have ended.

    Scores are summed token log-probabilities. A beam that emits EOS is
    finished: it stays in the beam set with its score frozen (its only
    continuation is padding at log-prob 0), so it competes with the live
    beams until the end. With `length_penalty` != 0, beams are ranked by
    score / length ** length_penalty (length = generated tokens, EOS included)."""

    def __init__(self, batch: int, beams: int, sequences: Tensor, pad: int, eos: int | None, length_penalty: float):
        self.b, self.n, self.pad, self.eos, self.lp = batch, beams, pad, eos, length_penalty
        device = sequences.device
        self.sequences = sequences  # (b * current beams, total)
        self.scores = torch.zeros((batch, 1), device=device)
        self.lengths = torch.zeros((batch, 1), device=device)
        self.finished = torch.zeros((batch, 1), dtype=torch.bool, device=device)

    def _rank(self, scores: Tensor, lengths: Tensor) -> Tensor:
        if self.lp == 0:
            return scores
        return scores / lengths.clamp(min=1).pow(self.lp)

    def advance(self, log_probs: Tensor, keys: Tensor | None, cur: int) -> Tensor:
        """Extend every beam by every token, keep the best `beams` per row;
        returns, for each new beam, the index of the row it came from."""
        b, nb = self.scores.shape
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(b, nb, vocab)
        finished = self.finished[..., None]
        # a finished beam's only continuation: padding, at no cost
        frozen = torch.full_like(log_probs, -math.inf)
        frozen[..., self.pad] = 0.0
        step = torch.where(finished, frozen, log_probs)
        candidates = self.scores[..., None] + step
        lengths = (self.lengths + (~self.finished).float())[..., None].expand(b, nb, vocab)
        if exists(keys):
            rank = self.scores[..., None] + torch.where(finished, frozen, keys.view(b, nb, vocab))
        else:
            rank = self._rank(candidates, lengths)

        top = rank.reshape(b, nb * vocab).topk(self.n, dim=-1).indices  # (b, beams)
        parent_beam, token = top // vocab, top % vocab
        parents = (torch.arange(b, device=top.device)[:, None] * nb + parent_beam).reshape(-1)

        self.scores = candidates.reshape(b, -1).gather(1, top)
        self.lengths = lengths.reshape(b, -1).gather(1, top)
        was_finished = self.finished.gather(1, parent_beam)
        self.finished = was_finished | ((token == self.eos) if exists(self.eos) else torch.zeros_like(was_finished))
        self.sequences = self.sequences.index_select(0, parents)
        self.sequences[:, cur] = token.reshape(-1)
        return parents

    def ranked_scores(self) -> Tensor:
        return self._rank(self.scores, self.lengths)

    def last_tokens(self, cur: int) -> Tensor:
        return self.sequences[:, cur - 1]

    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def best(self, start: int, end: int) -> Tensor:
        """(b, end - start): each row's best beam so far."""
        pick = self.ranked_scores().argmax(dim=-1)
        rows = torch.arange(self.b, device=pick.device) * self.scores.shape[1] + pick
        return self.sequences[rows, start:end]

    def final(self, start: int) -> tuple[Tensor, Tensor]:
        """All beams best first: (beams, b, total) and their (beams, b) scores."""
        ranked = self.ranked_scores()
        order = ranked.argsort(dim=-1, descending=True)
        nb = self.scores.shape[1]
        rows = (torch.arange(self.b, device=order.device)[:, None] * nb + order).reshape(-1)
        seqs = rearrange(self.sequences.index_select(0, rows), "(b beams) n -> beams b n", b=self.b)
        return seqs, rearrange(ranked.gather(1, order), "b beams -> beams b")
