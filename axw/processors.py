"""The logits processor pipeline: every stage between the model's logits and
the token a strategy picks.

Each processor is a small object: `processor(logits, context)` returns the
logits `(batch, vocab)` with removed tokens at -inf (transformers'
`LogitsProcessor` idea); its docstring gives the math and the paper. The
pipeline runs them in one ordered list, which is also what the teaching trace
records stage by stage, so the stage names a learner sees are these names.

Order (`GenerationConfig.sampler_order`):

    filters_first (x-transformers):     [grammar] [contrastive decoding] penalties | filters, xtc, temperature [, mirostat]
    temperature_first (transformers):   [grammar] [contrastive decoding] penalties | temperature, filters, xtc [, mirostat]

The stages left of `|` shape the scores for every strategy; those right of it
shape the distribution sampled from, so greedy decoding, beam search and
contrastive search skip them (stochastic beam search keeps them).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .filters import (FILTER_LOGITS_FN, NEG_INF, check_filter_kwargs, entropy_nats, filter_name, identity,
                      is_stateful, keep_top1)
from .row_generators import RowGenerators, uniform
from .utils import check_number, exists

LN2 = math.log(2.0)
XTC_SEED = 0x5851F42D4C957F2D  # XTC's coins: the run's seed, scrambled


class Processor:
    """`processor(logits, tokens, valid)`: logits (b, vocab) of the next
    position; tokens (b, t) every token so far, prompt included; valid
    (b, t) False on left padding, or None when there is none."""

    name: str = "processor"
    sampling_only: bool = False  # shapes the sampling distribution only (skipped by greedy and beams)
    # each row's output depends on that row's logits alone: no text, no state, no random draw (so rows of
    # several positions can go through in one call, as speculative decoding's checked positions do)
    row_wise: bool = False

    def __call__(self, logits: Tensor, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def signature(self) -> tuple | None:
        """What this stage computes, comparable across runs: two row-wise stages with equal signatures give any
        row the same numbers, so several runs' rows can go through one of them together (`axw.shared`). None
        for a stage that is not row-wise, or whose settings cannot be compared."""
        if not self.row_wise:
            return None
        return _frozen((type(self), tuple(sorted(vars(self).items()))))

    def update(self, chosen: Tensor, logits: Tensor):
        """After the choice, with the final logits (stateful processors)."""

    def reorder(self, index: Tensor):
        """Rows follow `index` (beam search's kept beams; processors with per-row state)."""


def _frozen(value):
    """`value` with its dicts, lists and tuples made hashable tuples, or None when something in it is not
    hashable (a tensor's hash is its identity, not its values: not comparable either)."""
    if isinstance(value, dict):
        value = tuple(sorted(value.items()))
    if isinstance(value, (list, tuple)):
        items = tuple(_frozen(v) for v in value)
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, Tensor):
        return None
    try:
        hash(value)
    except TypeError:
        return None
    return value


# --- scores: contrastive decoding and penalties ---


def contrastive_decode_fn(expert_logits: Tensor, amateur_logits: Tensor, alpha: float = 0.1, beta: float = 0.5):
    """Contrastive decoding (Li et al. 2022, arXiv:2210.15097) in the logit form
    of O'Brien & Lewis 2023 (arXiv:2309.09117, Algorithm 2):
    score = (1 + beta) * expert - beta * amateur, over the plausible tokens only,
    those whose expert logit is within log(alpha) of the best one."""
    cutoff = math.log(alpha) + expert_logits.amax(dim=-1, keepdim=True)
    scores = (1 + beta) * expert_logits - beta * amateur_logits.to(expert_logits.dtype)
    return scores.masked_fill(expert_logits < cutoff, -math.inf)


class ContrastiveDecoding(Processor):
    """`contrastive_decode_fn` against an amateur model, which runs beside the
    expert through its own KV cache (`amateur` is a decoding `ModelRunner`)."""

    def __init__(self, amateur, alpha: float, beta: float, name: str = "contrastive_decoding"):
        self.amateur, self.alpha, self.beta, self.name = amateur, alpha, beta, name
        self.last: tuple[Tensor, Tensor] | None = None  # (expert, amateur) logits of the latest step

    def __call__(self, logits, tokens, valid=None):
        amateur_logits = self.amateur.logits(tokens, tokens.shape[1])
        self.last = (logits, amateur_logits)
        return contrastive_decode_fn(logits, amateur_logits, self.alpha, self.beta)

    def explain(self, candidates: Tensor) -> dict[str, Tensor]:
        """The latest step over `candidates` (b, n): each model's log-probability,
        whether the token passed the plausibility cut, and its score."""
        expert, amateur = self.last
        score = contrastive_decode_fn(expert, amateur, self.alpha, self.beta)
        return dict(expert=expert.float().log_softmax(dim=-1).gather(-1, candidates),
                    amateur=amateur.float().log_softmax(dim=-1).gather(-1, candidates),
                    plausible=torch.isfinite(score).gather(-1, candidates), score=score.float().gather(-1, candidates))


class RepetitionPenalty(Processor):
    """CTRL's repetition penalty (Keskar et al. 2019, arXiv:1909.05858): for
    every token already in the sequence (prompt included), divide a positive
    logit by `penalty` and multiply a negative one by it."""

    name = "repetition_penalty"

    def __init__(self, penalty: float):
        self.penalty = check_number(penalty, "repetition_penalty", 0, low_open=True,
                                    allowed="a finite number > 0 (1 = off)")

    def __call__(self, logits, tokens, valid=None):
        weight = torch.ones_like(tokens, dtype=logits.dtype) if valid is None else valid.to(logits.dtype)
        seen = torch.zeros_like(logits).scatter_add_(1, tokens, weight) > 0
        penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        # an extreme penalty must not overflow a finite logit to +-inf (NaN later)
        big = torch.finfo(logits.dtype).max
        penalised = torch.where(torch.isfinite(logits), penalised.clamp(-big, big), logits)
        return torch.where(seen, penalised, logits)


class NoRepeatNGram(Processor):
    """Forbid any token that would repeat an n-gram already in the sequence
    (Paulus et al. 2017, arXiv:1705.04304)."""

    name = "no_repeat_ngram"

    def __init__(self, n: int):
        self.n = check_number(n, "no_repeat_ngram_size", 1, integer=True, allowed="an integer >= 1 (0 = off)")

    def __call__(self, logits, tokens, valid=None):
        n, t = self.n, tokens.shape[1]
        if t < n:
            return logits
        grams = tokens.unfold(1, n, 1)  # (b, t - n + 1, n)
        if n == 1:
            match = torch.ones(grams.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            match = (grams[:, :, :-1] == tokens[:, None, t - n + 1:]).all(dim=-1)
        if valid is not None:
            match &= valid.unfold(1, n, 1).all(dim=-1)
        # add, not scatter: one token may end several n-grams, matching or not
        banned = torch.zeros_like(logits).scatter_add_(1, grams[:, :, -1], match.to(logits.dtype)) > 0
        return logits.masked_fill(banned, NEG_INF)


# DRY stops extending a match after this many tokens: past it the penalty
# multiplier * base ** (length - allowed_length) is a ban at any useful base,
# and each extra token of match length costs a pass over the context
DRY_MAX_MATCH = 256


class DRY(Processor):
    """DRY, "don't repeat yourself" (Weidmann 2024, text-generation-webui
    #5677): a token v that would extend a repeat of the text's last n tokens
    (those n tokens followed by v occur earlier) gets
    multiplier * base ** (n - allowed_length) subtracted from its logit when
    n >= allowed_length, n the longest such match. Matches never cross a
    sequence breaker (say a newline), so repeated names and formatting go
    unpunished."""

    name = "dry"

    def __init__(self, multiplier: float, base: float, allowed_length: int, breakers: Tensor):
        self.multiplier, self.base, self.allowed = float(multiplier), float(base), int(allowed_length)
        self.breakers = breakers

    def match_lengths(self, tokens: Tensor, valid: Tensor | None, vocab: int) -> Tensor:
        """(b, vocab): for each token, the longest match it would extend."""
        b, t = tokens.shape
        stop = torch.isin(tokens, self.breakers.to(tokens.device))
        if valid is not None:
            stop |= ~valid
        lengths = torch.zeros((b, vocab), dtype=torch.long, device=tokens.device)
        if t < 2:
            return lengths
        starts = torch.arange(t - 1, device=tokens.device)  # earlier positions i, followed by tokens[i + 1]
        # a match ends at i where tokens[i] is the last token (not a breaker), and what follows i is no breaker
        alive = (tokens[:, :-1] == tokens[:, -1:]) & ~stop[:, -1:] & ~stop[:, :-1] & ~stop[:, 1:]
        length = torch.zeros((b, t - 1), dtype=torch.long, device=tokens.device)
        for m in range(1, min(t, DRY_MAX_MATCH + 1)):
            length += alive
            src = starts - m
            ok = (src >= 0)[None, :]
            src = src.clamp(min=0)
            prev = tokens[:, t - 1 - m, None]
            alive = alive & ok & (tokens[:, src] == prev) & ~stop[:, t - 1 - m, None] & ~stop[:, src]
            if not bool(alive.any()):
                break
        else:
            length += alive
        return lengths.scatter_reduce(1, tokens[:, 1:], length, reduce="amax")

    def __call__(self, logits, tokens, valid=None):
        n = self.match_lengths(tokens, valid, logits.shape[-1]).to(torch.float32)
        penalty = torch.where(n >= self.allowed, self.multiplier * self.base ** (n - self.allowed), 0.0)
        return logits - penalty.to(logits.dtype)


# --- the sampling distribution: filters, XTC, temperature, mirostat ---


class Filter(Processor):
    """A sampling filter from `axw.filters` (or any callable of the same
    shape) as a pipeline stage. A filter that keeps state from token to token
    is a class (`stateful`): each run gets a fresh one, built with the
    filter's settings, and hears of each choice (`update`)."""

    sampling_only = True

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
        check_filter_kwargs(fn, kwargs)
        self.fn, self.kwargs = fn, kwargs
        self.name = filter_name(fn)
        self.stateful = is_stateful(fn)
        if self.stateful:
            self.fn, self.kwargs = fn(**kwargs), {}
        # a callable of the user's may look across rows
        self.row_wise = fn in FILTER_LOGITS_FN.values() and not self.stateful
        self.runs_last = getattr(fn, "runs_last", False)

    def __call__(self, logits, tokens, valid=None):
        return self.fn(logits, **self.kwargs)

    def update(self, chosen, logits):
        if self.stateful:
            self.fn.update(chosen, logits)


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


class XTC(Processor):
    """XTC, "exclude top choices" (Weidmann 2024, text-generation-webui
    #6335): with probability `probability` per step and row, remove every
    token whose probability is at least `threshold` except the least likely
    of them, when there are two or more; the model's safest choices make way
    for its other plausible ones. Its coin comes from a generator of its own
    (seeded from the run's), so the run's sampling draws stay those of any
    other sampler with the same seed."""

    name = "xtc"
    sampling_only = True

    def __init__(self, threshold: float, probability: float, generator: torch.Generator | None = None):
        self.threshold, self.probability, self.generator = float(threshold), float(probability), generator

    def __call__(self, logits, tokens, valid=None):
        probs = logits.float().softmax(dim=-1)
        above = probs >= self.threshold
        least = torch.where(above, probs, math.inf).amin(dim=-1, keepdim=True)
        remove = above & (probs > least) & (above.sum(dim=-1, keepdim=True) >= 2)
        if self.probability < 1.0:
            draw = uniform(logits.shape[0], 1, logits.device, self.generator)
            remove &= draw < self.probability
        return logits.masked_fill(remove, NEG_INF)


def apply_temperature(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """logits / temperature, shifted so the best token sits at 0. Without
    float64 (Apple's MPS has none): however small the temperature the best
    token stays at 0 (no 0 / 0), however large a removed token stays at -inf
    (no inf / inf)."""
    logits = logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    scaled = torch.where(shifted == 0, 0.0, shifted / temperature)
    return scaled.masked_fill(shifted == NEG_INF, NEG_INF)


class Temperature(Processor):
    """Divide the logits by the temperature: < 1 sharpens the distribution,
    > 1 flattens it (Ackley et al. 1985)."""

    name = "temperature"
    sampling_only = True
    row_wise = True

    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, logits, tokens, valid=None):
        return logits if self.temperature == 1.0 else apply_temperature(logits, self.temperature)


class DynamicTemperature(Processor):
    """Dynamic temperature (entropy-scaled, kalomaze 2023, as llama.cpp's
    `dynatemp`): T = T_min + (T_max - T_min) * (H / log n) ** exponent, where H
    is the entropy of the distribution over the n tokens still possible and
    [T_min, T_max] = [max(0, temperature - range), temperature + range]: a
    confident model is sampled cold, an unsure one hot."""

    name = "dynamic_temperature"
    sampling_only = True
    row_wise = True

    def __init__(self, temperature: float, temperature_range: float, exponent: float):
        self.low = max(0.0, temperature - temperature_range)
        self.high = temperature + temperature_range
        self.exponent = float(exponent)

    def temperatures(self, logits: Tensor) -> Tensor:
        """(b, 1): the temperature each row gets."""
        n = torch.isfinite(logits).sum(dim=-1, keepdim=True)
        entropy = entropy_nats(logits.float().log_softmax(dim=-1))
        normalised = torch.where(n > 1, entropy / n.clamp(min=2).float().log(), 0.0).clamp(0.0, 1.0)
        return self.low + (self.high - self.low) * normalised.pow(self.exponent)

    def __call__(self, logits, tokens, valid=None):
        return apply_temperature(logits, self.temperatures(logits))


class Mirostat(Processor):
    """Mirostat 2.0 (Basu et al. 2020, arXiv:2007.14966): keep the tokens whose
    surprise -log2 p is at most mu, then after each choice move mu by
    eta * (tau - observed surprise), so the text's surprise stays near the
    target tau. mu starts at 2 tau and is kept per row."""

    name = "mirostat"
    sampling_only = True

    def __init__(self, tau: float, eta: float):
        self.tau, self.eta = float(tau), float(eta)
        self.mu: Tensor | None = None

    def __call__(self, logits, tokens, valid=None):
        if self.mu is None:
            self.mu = torch.full((logits.shape[0], 1), 2 * self.tau, device=logits.device)
        surprise = -logits.float().log_softmax(dim=-1) / LN2
        return logits.masked_fill(keep_top1(surprise > self.mu, logits), NEG_INF)

    def update(self, chosen, logits):
        if self.mu is None:  # greedy decoding never sampled through it
            return
        # surprise of the choice under the truncated, renormalised distribution
        observed = -logits.float().log_softmax(dim=-1).gather(-1, chosen[:, None]) / LN2
        self.mu = self.mu - self.eta * (observed - self.tau)


# --- the pipeline ---


def keep_some(out: Tensor, logits: Tensor) -> Tensor:
    """A stage that would leave a row no token at all (say no-repeat-n-gram
    banning the one token contrastive decoding kept) is skipped for that row."""
    nothing_left = ~torch.isfinite(out).any(dim=-1, keepdim=True)
    return torch.where(nothing_left, logits, out)


class Pipeline:
    """The processors in order: `scores` shape every strategy's scores,
    `sampling` the distribution sampled from."""

    def __init__(self, scores: list[Processor], sampling: list[Processor]):
        self.scores, self.sampling = scores, sampling

    @property
    def processors(self) -> list[Processor]:
        return [*self.scores, *self.sampling]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.processors]

    @property
    def row_wise(self) -> bool:
        """Every stage is row-wise: rows of several positions can go through in one call."""
        return all(p.row_wise for p in self.processors)

    def signature(self) -> tuple | None:
        """The stages' signatures (`Processor.signature`): two pipelines with equal ones process any row alike.
        None when a stage has none."""
        signatures = tuple(p.signature() for p in self.processors)
        return None if any(s is None for s in signatures) else signatures

    @staticmethod
    def run(processors: list[Processor], logits: Tensor, tokens: Tensor, valid: Tensor | None = None,
            trace=None) -> Tensor:
        for proc in processors:
            logits = keep_some(proc(logits, tokens, valid), logits)
            if trace is not None:
                trace.record(proc.name, logits)
        return logits

    def __call__(self, logits: Tensor, tokens: Tensor, valid: Tensor | None = None, trace=None,
                 sampling: bool = True) -> Tensor:
        logits = self.run(self.scores, logits, tokens, valid, trace)
        return self.run(self.sampling, logits, tokens, valid, trace) if sampling else logits

    def update(self, chosen: Tensor, logits: Tensor):
        for proc in self.processors:
            proc.update(chosen, logits)

    def reorder(self, index: Tensor):
        for proc in self.processors:
            proc.reorder(index)


def build_pipeline(config, amateurs: list = (), breakers: Tensor | None = None,
                   generator: torch.Generator | None = None, grammar: Processor | None = None) -> Pipeline:
    """The processors a `GenerationConfig` asks for, in its `sampler_order`.
    `amateurs`: (runner, alpha, beta) per contrastive-decoding amateur;
    `breakers`: DRY's sequence breakers as token ids; `generator`: the run's
    random source (XTC draws from it); `grammar`: the constraint's mask
    (`axw.structured.GrammarMask`), the first stage of all."""
    scores: list[Processor] = [grammar] if exists(grammar) else []
    for i, (runner, alpha, beta) in enumerate(amateurs):
        name = "contrastive_decoding" if len(amateurs) == 1 else f"contrastive_decoding_{i}"
        scores.append(ContrastiveDecoding(runner, alpha, beta, name))
    if config.repetition_penalty != 1.0:
        scores.append(RepetitionPenalty(config.repetition_penalty))
    if config.no_repeat_ngram_size != 0:
        scores.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.dry_multiplier > 0:
        breakers = breakers if exists(breakers) else torch.zeros(0, dtype=torch.long)
        scores.append(DRY(config.dry_multiplier, config.dry_base, config.dry_allowed_length, breakers))

    # contrastive decoding's plausibility cut replaces the filters (as in x-transformers)
    filters = [] if amateurs else build_filters(config.filter_logits_fn, config.filter_kwargs)
    if config.xtc_probability > 0:
        coins = None
        if isinstance(generator, RowGenerators):
            coins = generator.derived(XTC_SEED)
        elif exists(generator):
            coins = torch.Generator(device=generator.device).manual_seed(generator.initial_seed() ^ XTC_SEED)
        filters.append(XTC(config.xtc_threshold, config.xtc_probability, coins))
    if config.dynatemp_range > 0:
        temperature = DynamicTemperature(config.temperature, config.dynatemp_range, config.dynatemp_exponent)
    else:
        temperature = Temperature(config.temperature)
    sampling = [*filters, temperature] if config.sampler_order == "filters_first" else [temperature, *filters]
    if exists(config.mirostat_tau):
        sampling.append(Mirostat(config.mirostat_tau, config.mirostat_eta))
    # a filter that transforms the final distribution (adaptive-p) comes after every other stage
    last = [f for f in sampling if getattr(f, "runs_last", False)]
    return Pipeline(scores, [f for f in sampling if f not in last] + last)
