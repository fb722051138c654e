"""Compare's numbers for a text: where it departs from greedy's, how varied it is, how likely the model finds it."""

from __future__ import annotations

import torch

from ..render import shared_length


def departure(ids: list[int], reference: list[int]) -> int | None:
    """The first step (0-based) where `ids` differs from `reference` (where one ends before the other counts),
    or None when they are the same."""
    return None if ids == reference else shared_length(ids, reference)


def distinct_n(ids: list[int], n: int = 2) -> float | None:
    """Distinct-n (Li et al. 2016, arXiv:1510.03055): the share of the text's n-grams that are different, or
    None when it has none."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_share(ids: list[int], n: int = 4) -> float | None:
    """The share of the text's n-grams that already occurred earlier in it (a loop repeats nearly all of them),
    or None when it has none."""
    seen, repeated, total = set(), 0, 0
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        repeated += gram in seen
        total += 1
        seen.add(gram)
    return repeated / total if total else None


@torch.no_grad()
def mean_logprob(model, prompt_ids: list[int], new_ids: list[int]) -> float | None:
    """The mean log-probability the model gives the new tokens, each given what precedes it, from one forward
    pass over the prompt and the text (past the model's context, over its last max_seq_len tokens)."""
    if not new_ids:
        return None
    seq = (prompt_ids + new_ids)[-(model.max_seq_len + 1):]
    n = min(len(new_ids), len(seq) - 1)
    x = torch.tensor([seq[:-1]], dtype=torch.long, device=model.device)
    logp = model.net(x)[0].float().log_softmax(-1)
    targets = torch.tensor(seq[1:], device=logp.device)
    picked = logp[torch.arange(len(seq) - 1, device=logp.device), targets]
    return float(picked[-n:].mean())


def column_numbers(model, run, seconds: float, reference: list[int] | None) -> dict:
    """A Compare column's numbers once its text is done: tokens per second (over `seconds` spent generating),
    where it departs from `reference` (greedy's ids; None while greedy has not run), distinct-2, the share of
    repeated 4-grams and the mean log-probability under `model`."""
    ids = run.new_ids
    return dict(speed=len(ids) / seconds if seconds > 0 else None,
                departs=departure(ids, reference) if reference is not None else None,
                distinct2=distinct_n(ids, 2), repeated4=repeated_ngram_share(ids, 4),
                logprob=mean_logprob(model, run.prompt_ids, ids))
