"""Sampling filters: pure functions over logits.

Each takes logits `(batch, vocab)` and returns them with the removed tokens
set to -inf, always keeping at least the most likely token. The first four
have x-transformers' signatures; the others are the truncation samplers
compared in the literature since. Any of them is usable by name in
`generate(filter_logits_fn=...)`, where a list chains them in order.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .specs import filter_param_spec

NEG_INF = -math.inf


def identity(logits: Tensor, **kwargs) -> Tensor:
    return logits


def keep_top1(remove: Tensor, logits: Tensor) -> Tensor:
    """Never remove the most likely token (or the tokens tied with it)."""
    return remove & (logits < logits.amax(dim=-1, keepdim=True))


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep the k most likely tokens (Fan et al. 2018, arXiv:1805.04833);
    k defaults to ceil(frac_num_tokens * vocab). Tokens tied with the k-th are
    kept too, as transformers' `TopKLogitsWarper` does."""
    vocab = logits.shape[-1]
    k = min(k if k is not None else math.ceil(frac_num_tokens * vocab), vocab)
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


NUCLEUS_PROBE = 256  # on the CPU, top_p looks for the nucleus among this many most likely tokens first


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2019, arXiv:1904.09751): keep the
    smallest set of most likely tokens whose probabilities sum to >= thres."""
    if thres >= 1.0:
        return logits  # everything; rounding in the cumulative sum must not cut the tail
    if logits.device.type == "cpu" and NUCLEUS_PROBE < logits.shape[-1] and logits.numel():
        # the nucleus is usually a few dozen tokens: a partial top-k finds it for a fraction of a full sort (on
        # a GPU the sort is cheap and this check would wait for the device)
        order = logits.topk(NUCLEUS_PROBE, dim=-1).indices
        probs = logits.softmax(dim=-1).gather(-1, order)
        mass = probs.cumsum(dim=-1)
        fits = mass[..., -1] >= thres  # the row's cut falls among those tokens
        if bool(fits.all()):
            return _cut_nucleus(logits, order, probs, mass, thres)
        if bool(fits.any()):  # each row as it goes alone (its numbers): the probe's cut where it fits, else a sort
            out = _cut_nucleus(logits, order, probs, mass, thres)
            out[~fits] = _sorted_nucleus(logits[~fits], thres)
            return out
    return _sorted_nucleus(logits, thres)


def _sorted_nucleus(logits: Tensor, thres: float) -> Tensor:
    """top_p's cut from a full sort of each row."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    return _cut_nucleus(logits, order, probs, probs.cumsum(dim=-1), thres)


def _cut_nucleus(logits: Tensor, order: Tensor, probs: Tensor, mass: Tensor, thres: float) -> Tensor:
    """top_p's cut, given the most likely tokens `order` (all of them, or a prefix holding the nucleus), their
    probabilities and cumulative mass, in that order: a token is needed while the mass strictly before it is
    still short of thres; every token not in `order` is removed."""
    remove_sorted = mass - probs >= thres
    remove_sorted[..., 0] = False
    remove = torch.ones_like(logits, dtype=torch.bool).scatter(-1, order, remove_sorted)
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


def entropy_nats(log_probs: Tensor) -> Tensor:
    """Entropy in nats of each row, (b, 1); removed tokens (-inf) add nothing."""
    probs = log_probs.exp()
    return -torch.where(probs > 0, probs * log_probs, 0.0).sum(dim=-1, keepdim=True)


def typical_p(logits: Tensor, mass: float = 0.9) -> Tensor:
    """Locally typical sampling (Meister et al. 2022, arXiv:2202.00666): rank
    tokens by how far their surprise -log p is from the entropy H, and keep the
    closest ones until their probabilities sum to `mass`."""
    if mass >= 1.0:
        return logits
    log_probs = logits.float().log_softmax(dim=-1)
    distance = (-log_probs - entropy_nats(log_probs)).abs()
    sorted_distance, order = distance.sort(dim=-1)
    cumulative = logits.gather(-1, order).float().softmax(dim=-1).cumsum(dim=-1)
    # the last kept token is the first whose cumulative mass reaches `mass`
    last = (cumulative < mass).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    remove_sorted = sorted_distance > sorted_distance.gather(-1, last)
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def epsilon_cutoff(logits: Tensor, epsilon: float = 3e-4) -> Tensor:
    """Epsilon sampling (Hewitt et al. 2022, arXiv:2210.15191): keep tokens with
    p >= epsilon, a fixed floor on probability."""
    probs = logits.float().softmax(dim=-1)
    return logits.masked_fill(keep_top1(probs < epsilon, logits), NEG_INF)


def eta_cutoff(logits: Tensor, epsilon: float = 3e-4) -> Tensor:
    """Eta sampling (Hewitt et al. 2022, arXiv:2210.15191): keep tokens with
    p >= eta = min(epsilon, sqrt(epsilon) * exp(-H)), a floor that is lower
    when the distribution is flat (high entropy H)."""
    log_probs = logits.float().log_softmax(dim=-1)
    eta = torch.clamp(math.sqrt(epsilon) * torch.exp(-entropy_nats(log_probs)), max=epsilon)
    return logits.masked_fill(keep_top1(log_probs.exp() < eta, logits), NEG_INF)


# Top-H looks at the 100 most likely tokens, as transformers' TopHLogitsWarper does
TOP_H_CANDIDATES = 100


def top_h(logits: Tensor, top_h: float = 0.4) -> Tensor:
    """Top-H sampling (Potraghloo et al. 2025, arXiv:2509.02510): among the
    100 most likely tokens renormalised (entropy H), keep the most likely ones
    while the sum of their entropy terms -p log p stays within top_h * H, so
    the kept set carries a bounded share of the uncertainty."""
    n = min(TOP_H_CANDIDATES, logits.shape[-1])
    top_logits, top_ids = logits.topk(n, dim=-1)
    # computed the way transformers computes them: the last token's
    # membership at top_h = 1 rests on the rounding of the last sum
    normalised = top_logits.float() - top_logits.float().logsumexp(dim=-1, keepdim=True)
    probs = normalised.softmax(dim=-1)
    terms = -(probs * probs.log())
    entropy = -(normalised.clamp(min=torch.finfo(normalised.dtype).min) * probs).sum(dim=-1, keepdim=True)
    limit = top_h * entropy
    keep_sorted = terms.cumsum(dim=-1) <= limit
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_ids, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def top_n_sigma(logits: Tensor, n: float = 1.0) -> Tensor:
    """Top-n-sigma (Tang et al. 2024, arXiv:2411.07641): keep tokens whose
    logit is within n standard deviations of the largest one (mean and
    standard deviation over the tokens still possible). Working on logits, the
    kept set does not change with temperature."""
    finite = torch.isfinite(logits)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    values = torch.where(finite, logits.float(), 0.0)
    mean = values.sum(dim=-1, keepdim=True) / count
    var = torch.where(finite, (values - mean).square(), 0.0).sum(dim=-1, keepdim=True) / count
    limit = logits.float().amax(dim=-1, keepdim=True) - n * var.sqrt()
    return logits.masked_fill(logits.float() < limit, NEG_INF)


def p_less(logits: Tensor) -> Tensor:
    """p-less sampling (arXiv:2509.23234, ICLR 2026): keep the tokens
    with p >= sum of p², the chance that two draws agree, a cut with no
    parameter: it keeps one token where the model is sure and many where it
    is not. (Rounding must not drop a whole flat row: the cut is lowered by a
    millionth of itself.)"""
    probs = logits.float().softmax(dim=-1)
    limit = probs.square().sum(dim=-1, keepdim=True)
    return logits.masked_fill(keep_top1(probs < limit * (1 - 1e-6), logits), NEG_INF)


class AdaptiveP:
    """Adaptive-p (MrJackSpade; llama.cpp #17927, its formula as in
    llama.cpp's src/llama-sampling.cpp): steer the probability of the chosen
    tokens towards `target` over time. Each step, with p the distribution it
    is given and m the moving average of the chosen tokens' p (weights
    decay^age, started as if every earlier choice had hit the target),
    the token logits become 5 - 10 d² / (1 + d), d = |p - a| / 0.3, around
    the adapted target a = clamp(2 target - m, 0, 1): tokens near a are
    favoured, so after a run of safe choices it reaches for less likely ones
    and after risky ones for safer ones. It keeps state from token to token
    and comes after every other stage."""

    name = "adaptive_p"
    runs_last = True
    WIDTH, PEAK, SHARPNESS = 0.3, 5.0, 10.0

    def __init__(self, target: float = 0.5, decay: float = 0.9):
        self.target, self.decay = float(target), float(decay)
        self.weighted: Tensor | None = None  # per row: sum of the chosen p's, weighted by decay^age
        self.total: Tensor | None = None  # per row: sum of those weights
        self.given: Tensor | None = None  # the latest step's p, for the choice's update

    def adapted(self) -> Tensor:
        return (2 * self.target - self.weighted / self.total).clamp(0.0, 1.0)

    def __call__(self, logits: Tensor) -> Tensor:
        probs = logits.float().softmax(dim=-1)
        if self.weighted is None:
            rows = (logits.shape[0], 1)
            self.weighted = torch.full(rows, self.target / (1 - self.decay), device=logits.device)
            self.total = torch.full(rows, 1 / (1 - self.decay), device=logits.device)
        self.given = probs
        d = ((probs - self.adapted()) / self.WIDTH).abs()
        scores = self.PEAK - self.SHARPNESS * d.square() / (1 + d)
        return scores.masked_fill(~torch.isfinite(logits), NEG_INF).to(logits.dtype)

    def update(self, chosen: Tensor, logits: Tensor):
        if self.given is None:  # greedy decoding never sampled through it
            return
        p = self.given.gather(-1, chosen[:, None])
        self.weighted, self.total = p + self.decay * self.weighted, 1 + self.decay * self.total


FILTER_LOGITS_FN: dict[str, Callable] = dict(
    top_k=top_k, top_p=top_p, min_p=min_p, top_a=top_a, typical_p=typical_p, epsilon_cutoff=epsilon_cutoff,
    eta_cutoff=eta_cutoff, top_h=top_h, top_n_sigma=top_n_sigma, p_less=p_less,
    adaptive_p=AdaptiveP,
)

# each built-in filter's parameters and their defaults; their ranges are declared in axw.specs
FILTER_PARAMS: dict[Callable, dict[str, object]] = {
    top_k: {"k": None, "frac_num_tokens": 0.1}, top_p: {"thres": 0.9}, min_p: {"min_p": 0.1},
    top_a: {"min_p_pow": 2.0, "min_p_ratio": 0.02}, typical_p: {"mass": 0.9}, epsilon_cutoff: {"epsilon": 3e-4},
    eta_cutoff: {"epsilon": 3e-4}, top_h: {"top_h": 0.4}, top_n_sigma: {"n": 1.0}, p_less: {},
    AdaptiveP: {"target": 0.5, "decay": 0.9},
}


def filter_name(fn: Callable) -> str:
    """A filter's name: its registry name (or a callable's own)."""
    for name, builtin in FILTER_LOGITS_FN.items():
        if fn is builtin:
            return name
    return getattr(fn, "__name__", type(fn).__name__)


def is_stateful(fn) -> bool:
    """A filter that keeps state from token to token: a class, built afresh for each run."""
    return isinstance(fn, type)


def check_filter_kwargs(fn: Callable, kwargs: dict):
    """The ranges each built-in filter accepts (declared in axw.specs); checked before any compute."""
    params = FILTER_PARAMS.get(fn)
    if params is None:
        return
    name = filter_name(fn)
    unknown = set(kwargs) - set(params)
    if unknown:
        raise ValueError(f"{name} takes {sorted(params)}, got unknown {sorted(unknown)}")
    for param, default_value in params.items():
        value = kwargs.get(param, default_value)
        if value is None:
            continue
        label = param if param == name else f"{name}'s {param}"
        filter_param_spec(name, param).check(value, label)
