"""Logit processors: penalties, sampling filters and temperature.

Each filter takes logits `(batch, vocab)` and returns them with the removed
tokens set to -inf; the function signatures are x-transformers'. Processors
compose in a list, in order (transformers' `LogitsProcessorList` idea).

Order in `generate`: penalties (repetition, no-repeat-n-gram), then the
filters in the order given, then temperature. As in x-transformers, the
filters see the untempered distribution, so temperature changes how the kept
tokens share the probability, never which tokens are kept. (transformers
applies temperature first, which moves the top-p / min-p / top-a cut.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .utils import check_number

NEG_INF = -math.inf


def identity(logits: Tensor, **kwargs) -> Tensor:
    return logits


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep the k most likely tokens (Fan et al. 2018, arXiv:1805.04833);
    k defaults to ceil(frac_num_tokens * vocab). Tokens tied with the k-th are
    kept too, as transformers' `TopKLogitsWarper` does."""
    vocab = logits.shape[-1]
    k = min(k if k is not None else math.ceil(frac_num_tokens * vocab), vocab)
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2019, arXiv:1904.09751): keep the
    smallest set of most likely tokens whose probabilities sum to >= thres."""
    if thres >= 1.0:
        return logits  # everything; rounding in the cumulative sum must not cut the tail
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # a token is needed while the mass strictly before it is still short of thres
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= thres
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def min_p(logits: Tensor, min_p: float = 0.1) -> Tensor:
    """Min-p sampling (Nguyen et al. 2024, arXiv:2407.01082): keep tokens with
    p >= min_p * p_max."""
    probs = logits.softmax(dim=-1)
    limit = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < limit, NEG_INF)


def top_a(logits: Tensor, min_p_pow: float = 2.0, min_p_ratio: float = 0.02) -> Tensor:
    """Top-a sampling (BlinkDL): keep tokens with p >= min_p_ratio * p_max ** min_p_pow,
    a cut that tightens when the model is confident."""
    probs = logits.softmax(dim=-1)
    limit = probs.amax(dim=-1, keepdim=True).pow(min_p_pow) * min_p_ratio
    return logits.masked_fill(probs < limit, NEG_INF)


FILTER_LOGITS_FN: dict[str, Callable] = dict(top_k=top_k, top_p=top_p, min_p=min_p, top_a=top_a)


def _check_filter_kwargs(fn: Callable, kwargs: dict):
    """The ranges each built-in filter accepts; checked before any compute."""
    allowed = {
        top_k: {"frac_num_tokens", "k"},
        top_p: {"thres"},
        min_p: {"min_p"},
        top_a: {"min_p_pow", "min_p_ratio"},
    }.get(fn)
    if allowed is None:
        return
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"{fn.__name__} takes {sorted(allowed)}, got unknown {sorted(unknown)}")
    if fn is top_k:
        if kwargs.get("k") is not None:
            check_number(kwargs["k"], "top_k's k", 1, integer=True)
        check_number(kwargs.get("frac_num_tokens", 0.1), "top_k's frac_num_tokens", 0, 1, low_open=True)
    elif fn is top_p:
        check_number(kwargs.get("thres", 0.9), "top_p's thres", 0, 1, low_open=True)
    elif fn is min_p:
        check_number(kwargs.get("min_p", 0.1), "min_p", 0, 1)
    elif fn is top_a:
        check_number(kwargs.get("min_p_pow", 2.0), "top_a's min_p_pow", 0, 100, low_open=True)
        check_number(kwargs.get("min_p_ratio", 0.02), "top_a's min_p_ratio", 0, 1)


class Filter:
    """A sampling filter as a processor."""

    def __init__(self, fn: str | Callable, kwargs: dict | None = None):
        if isinstance(fn, str):
            if fn not in FILTER_LOGITS_FN:
                raise ValueError(f"unknown filter {fn!r}: choose from {', '.join(FILTER_LOGITS_FN)} or pass a callable")
            fn = FILTER_LOGITS_FN[fn]
        if not callable(fn):
            raise ValueError(f"a filter must be a name or a callable, got {fn!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"filter_kwargs must be a dict (or a list of dicts), got {kwargs!r}")
        kwargs = dict(kwargs or {})
        _check_filter_kwargs(fn, kwargs)
        self.fn, self.kwargs = fn, kwargs
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, logits: Tensor, context: Tensor, valid: Tensor | None) -> Tensor:
        return self.fn(logits, **self.kwargs)


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al. 2019, arXiv:1909.05858): for
    every token already in the sequence (prompt included), divide a positive
    logit by `penalty` and multiply a negative one by it."""

    name = "repetition_penalty"

    def __init__(self, penalty: float):
        self.penalty = check_number(penalty, "repetition_penalty", 0, low_open=True,
                                    allowed="a finite number > 0 (1 = off)")

    def __call__(self, logits: Tensor, context: Tensor, valid: Tensor | None) -> Tensor:
        weight = torch.ones_like(context, dtype=logits.dtype) if valid is None else valid.to(logits.dtype)
        seen = torch.zeros_like(logits).scatter_add_(1, context, weight) > 0
        penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        # an extreme penalty must not overflow a finite logit to +-inf (NaN later)
        big = torch.finfo(logits.dtype).max
        penalised = torch.where(torch.isfinite(logits), penalised.clamp(-big, big), logits)
        return torch.where(seen, penalised, logits)


class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram already in the sequence
    (Paulus et al. 2017, arXiv:1705.04304)."""

    name = "no_repeat_ngram"

    def __init__(self, n: int):
        self.n = check_number(n, "no_repeat_ngram_size", 1, integer=True, allowed="an integer >= 1 (0 = off)")

    def __call__(self, logits: Tensor, context: Tensor, valid: Tensor | None) -> Tensor:
        n, t = self.n, context.shape[1]
        if t < n:
            return logits
        grams = context.unfold(1, n, 1)  # (b, t - n + 1, n)
        if n == 1:
            match = torch.ones(grams.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            match = (grams[:, :, :-1] == context[:, None, t - n + 1:]).all(dim=-1)
        if valid is not None:
            match &= valid.unfold(1, n, 1).all(dim=-1)
        # add, not scatter: one token may end several n-grams, matching or not
        banned = torch.zeros_like(logits).scatter_add_(1, grams[:, :, -1], match.to(logits.dtype)) > 0
        return logits.masked_fill(banned, NEG_INF)


def build_filters(filter_logits_fn, filter_kwargs) -> list[Filter]:
    """One filter, or a list of filters with a list of kwargs, chained in order."""
    if filter_logits_fn is None or filter_logits_fn is identity:
        return []
    if isinstance(filter_logits_fn, (list, tuple)):
        fns = list(filter_logits_fn)
        kwargs = filter_kwargs if isinstance(filter_kwargs, (list, tuple)) else [filter_kwargs or {}] * len(fns)
        if len(kwargs) != len(fns):
            raise ValueError(f"got {len(fns)} filters but {len(kwargs)} filter_kwargs")
        return [f for fn, kw in zip(fns, kwargs) for f in build_filters(fn, kw)]
    if isinstance(filter_kwargs, (list, tuple)):
        raise ValueError("a list of filter_kwargs needs a list of filters")
    return [Filter(filter_logits_fn, filter_kwargs)]


def build_penalties(repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> list:
    out = []
    if repetition_penalty is None or repetition_penalty != 1.0:
        out.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size is None or no_repeat_ngram_size != 0:
        out.append(NoRepeatNGram(no_repeat_ngram_size))
    return out
