"""Contrastive search's choice at one step as alpha moves, recomputed from the traced scores."""

from __future__ import annotations

import math

SWEEP_ALPHAS = [i / 10 for i in range(11)]


def alpha_sweep(row: dict, alphas: list[float] = SWEEP_ALPHAS) -> list[dict]:
    """Contrastive search's choice at this step for each alpha, recomputed from the traced confidence and
    degeneration penalty (no forward needed: neither depends on alpha): per alpha the scores
    (1 - alpha) confidence - alpha penalty (a candidate with no probability never wins) and the `winner`'s
    index among the candidates and its `token`."""
    c = row["contrastive"]
    out = []
    for alpha in alphas:
        scores = [(1 - alpha) * p - alpha * d if p > 0 else -math.inf
                  for p, d in zip(c["confidence"], c["degeneration_penalty"])]
        best = max(range(len(scores)), key=scores.__getitem__)
        out.append(dict(alpha=alpha, scores=scores, winner=best, token=c["tokens"][best]))
    return out
