"""Sample a step N times: N tokens drawn from a step's final distribution, beside its exact probabilities."""

from __future__ import annotations

import torch

from ..caps import MAX_DRAWS
from ..settings import number


def draw(row: dict, n, seed: int = 0) -> tuple[list[float], list[int]]:
    """Draw `n` tokens from a step's final distribution, as the sampler would: (the exact probability of each
    traced candidate and, last, of all other tokens together; how many of the draws fell on each)."""
    n = number("draws", n, 1, MAX_DRAWS, integer=True)
    exact = list(row["probs"][row["stages"][-1]])
    exact.append(max(0.0, 1.0 - sum(exact)))
    weights = torch.tensor(exact, dtype=torch.float64)
    if float(weights.sum()) <= 0:
        raise ValueError("this step's final distribution holds no probability to draw from")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(row["step"]))
    picks = torch.multinomial(weights, n, replacement=True, generator=generator)
    return exact, torch.bincount(picks, minlength=len(exact)).tolist()
