"""What every decoding strategy shares: the run's prompts and settings,
checked before any compute (`Run`), one runner per model over its KV cache
(`ModelRunner`: `prefill` once, then `decode_one_token`), the draw (`sample`),
and what a run yields (`Step`) and leaves behind.

A strategy is a function `steps(run) -> Iterator[Step]` in a module of its
own (`sampling`, `beam_search`, `contrastive_search`, `speculative`, `dola`), which
imports from here; `generation` picks the one the settings ask for. This
module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from einops import rearrange
from torch import Tensor

from . import structured
from .attention import KVCache
from .filters import FILTER_LOGITS_FN, filter_name, is_stateful
from .generation_config import DRY_BREAKERS, GenerationConfig
from .logit_lens import candidate_layers, is_tied
from .ngrams import NgramDatastore
from .processors import Pipeline, build_pipeline
from .row_generators import RowGenerators, uniform
from .shared import drawn, shared_forwards
from .specs import STRATEGY_STEPS
from .trace import StepTrace, new_trace
from .utils import check_number, exists

INT_DTYPES = (torch.long, torch.int, torch.int16, torch.int8, torch.uint8)


@dataclass
class Step:
    """One decoding step, as `stream` yields it.

    tokens: (batch,) the token each row chose (`pad_value` once a row has
        stopped); for beam search, the last token of each row's best beam.
    sequences: (batch, generated so far) the continuation of each row (the best
        beam for beam search, which may change from step to step).
    finished: (batch,) rows that have emitted EOS.
    trace: the teaching trace of this step, when asked for.
    probs: beam search: (batch, generated so far) the model's probability of
        each token of the best beam, given what it saw when the token was chosen.
    stats: speculative decoding: the run's counts so far (rounds, drafted,
        accepted and copied tokens, the model's forwards).
    """

    step: int
    tokens: Tensor
    sequences: Tensor
    finished: Tensor
    trace: StepTrace | None = None
    probs: Tensor | None = None
    stats: SpeculativeStats | None = None


@dataclass
class SpeculativeStats:
    """A speculative run's counts so far: `Run.stats`, and the `stats` of
    each `Step` it yields (one object, kept up to date). Rows stopped at EOS
    count for nothing."""

    rounds: int = 0  # rounds of drafting and verifying
    drafted: int = 0  # drafted tokens, over the rows
    accepted: int = 0  # drafted tokens the model accepted
    emitted: int = 0  # tokens emitted per row: the accepted drafts and one of the model's a round
    target_forwards: int = 0  # the model's forwards, one a round
    copied: int = 0  # drafted tokens copied from the text or the datastore rather than the assistant's

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    def count(self, gamma: int, n_row: Tensor, copied: Tensor, finished: Tensor):
        """One round of `gamma` drafts, of which each row accepted `n_row`."""
        live = ~finished
        self.rounds += 1
        self.target_forwards += 1
        self.drafted += gamma * int(live.sum())
        self.accepted += int(n_row[live].sum())
        self.copied += int((copied & live[:, None]).sum())


@dataclass
class GenerateOutput:
    """What `generate(..., return_dict_in_generate=True)` returns: the output
    and what the strategy knows beside it (transformers' names where it has
    the same thing).

    sequences: what `generate` returns without it, (batch, prompt + seq_len)
        or 1-D for a 1-D prompt.
    sequences_scores: beam search: (batch,) the best beam's score, its tokens'
        summed log-probabilities (after the penalties) divided by
        length ** length_penalty when that is not 0, as transformers'; None
        for the other strategies.
    beams, beam_scores: beam search: every beam best first, (beams, batch,
        prompt + seq_len), and their (beams, batch) scores.
    stats: speculative decoding: the run's `SpeculativeStats`; None otherwise.
    strategy: the strategy's name, as the docs and the playground name it.
    scores, logits: with `output_scores=True` / `output_logits=True`, one
        tensor per step the run took (it stops early once every row has
        emitted EOS), as transformers' `scores` and `logits`; None otherwise.
        `logits` are the model's raw next-token logits; `scores` what the
        strategy chose from, each (rows, vocab), rows as in `sequences`
        (each prompt's `num_return_sequences` rows included) even for a 1-D
        prompt:
        - sampling: the logits after the whole pipeline (penalties, filters
          with -inf where they removed a token, temperature), the
          distribution each token was drawn from (axw's temperature shifts
          the best token to 0: transformers' logits / T, less their max);
        - greedy: after the penalties only (greedy skips filters and
          temperature), whose argmax each token is;
        - contrastive decoding: the same, its score (1 + beta) * expert -
          beta * amateur (-inf past the plausibility cut) as their first stage;
        - DoLa: the same, its contrast of the last layer with an early one
          (-inf past the plausibility cut) as their first stage;
        - contrastive search: after the penalties, the scores its k
          candidates are the most likely of;
        - beam search: (batch * beams, vocab), one row per live beam in
          rank order (the first step: each prompt's row repeated `beams`
          times, as transformers lays it out): each token's log-probability
          after the penalties, what a beam's score adds up; `logits` the
          same rows' raw logits;
        - speculative decoding keeps neither (it refuses both).
    With EOS, a finished row's rows go on being recorded, as in transformers.
    """

    sequences: Tensor
    sequences_scores: Tensor | None = None
    beams: Tensor | None = None
    beam_scores: Tensor | None = None
    stats: SpeculativeStats | None = None
    strategy: str = "sampling"  # its name in axw.specs.STRATEGIES
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None


# --- prompts, checked before any compute ---


def prepare_prompts(prompts, prompt_lens, pad_value: int, num_tokens: int, aligned: bool = False):
    """Left-pad prompts into (batch, n); returns (tokens, seq_start_pos or
    None, whether the caller gave a single unbatched prompt). `aligned`: a
    tensor given with `prompt_lens` is left-padded already (else each row
    starts at 0, x-transformers' layout)."""
    squeeze = False
    if isinstance(prompts, (list, tuple)):
        if len(prompts) == 0:
            raise ValueError("prompts is an empty list: give at least one prompt")
        if exists(prompt_lens):
            raise ValueError("prompt_lens is derived from a list of prompts; give one or the other")
        rows = [torch.as_tensor(p) for p in prompts]
        for i, row in enumerate(rows):
            if row.ndim != 1 or row.numel() == 0:
                raise ValueError(f"prompt {i} must be a non-empty 1-D tensor of token ids, got shape {tuple(row.shape)}")
        prompt_lens = torch.tensor([r.numel() for r in rows], device=rows[0].device)
        n = int(prompt_lens.max())
        tokens = torch.full((len(rows), n), pad_value, dtype=torch.long, device=rows[0].device)
        for i, row in enumerate(rows):
            tokens[i, n - row.numel():] = row.to(tokens.device, torch.long)
        aligned = True
    else:
        if not isinstance(prompts, Tensor):
            raise ValueError("prompts must be a tensor of token ids or a list of 1-D tensors")
        if prompts.ndim == 1:
            prompts, squeeze = prompts[None], True
        if prompts.ndim != 2 or prompts.shape[1] == 0 or prompts.shape[0] == 0:
            raise ValueError(f"prompts must be (batch, n) or (n,) with n >= 1, got shape {tuple(prompts.shape)}")
        tokens = prompts
    if tokens.dtype not in INT_DTYPES:
        raise ValueError(f"prompts must hold integer token ids, got {tokens.dtype}")
    tokens = tokens.long()
    b, n = tokens.shape

    seq_start_pos = None
    if exists(prompt_lens):
        prompt_lens = torch.as_tensor(prompt_lens, device=tokens.device)
        if prompt_lens.shape != (b,) or (prompt_lens < 1).any() or (prompt_lens > n).any():
            raise ValueError(f"prompt_lens must be ({b},) lengths in [1, {n}]")
        if not aligned:
            # x-transformers' layout: each row starts at 0 and is padded on the
            # right; move the padding to the left
            shift = (n - prompt_lens)[:, None]
            index = (torch.arange(n, device=tokens.device)[None, :] - shift) % n
            tokens = tokens.gather(1, index)
            tokens = tokens.masked_fill(torch.arange(n, device=tokens.device)[None, :] < shift, pad_value)
        seq_start_pos = n - prompt_lens
        if not bool(seq_start_pos.any()):
            seq_start_pos = None

    real = torch.ones_like(tokens, dtype=torch.bool)
    if exists(seq_start_pos):
        real = torch.arange(n, device=tokens.device)[None, :] >= seq_start_pos[:, None]
    bad = ((tokens < 0) | (tokens >= num_tokens)) & real
    if bool(bad.any()):
        raise ValueError(f"prompts hold token ids outside the vocabulary [0, {num_tokens})")
    return tokens, seq_start_pos, squeeze


def masked_prompts(input_ids, attention_mask, pad_value: int) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """transformers' padded batch as axw reads one: `input_ids` (batch, n)
    (or (n,)) and `attention_mask` of the same shape, 1 on each row's tokens
    and 0 on its padding, the tokens one run of columns: at the right end
    (left padding), at the left (right padding) or between. Returns the rows
    left-padded with `pad_value`, their lengths, `input_ids` as given when
    every row was left-padded (the output starts with them) else None, and
    whether one 1-D row was given."""
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in INT_DTYPES:
        raise ValueError("attention_mask goes with input_ids as an integer tensor (batch, n): a list of 1-D prompts "
                         "needs no mask (generate left-pads it)")
    mask = torch.as_tensor(attention_mask, device=input_ids.device)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    squeeze = input_ids.ndim == 1
    ids, mask = (input_ids[None], mask[None]) if squeeze else (input_ids, mask)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, n) or (n,) with n >= 1, got shape {tuple(input_ids.shape)}")
    if mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask holds 1 (a token) and 0 (padding) only")
    mask = mask.bool()
    b, n = ids.shape
    lens, first = mask.sum(1), mask.long().argmax(1)
    columns = torch.arange(n, device=ids.device)[None, :]
    block = (columns >= first[:, None]) & (columns < (first + lens)[:, None])
    if not bool((lens > 0).all()) or not bool((block == mask).all()):
        raise ValueError("each row of attention_mask must be its tokens' one run of 1s (at least one), the 0s of "
                         "padding before it (left padding) or after it (right padding)")
    shift = (n - first - lens)[:, None]  # how far each row's tokens move right
    tokens = ids.long().gather(1, (columns - shift) % n).masked_fill(columns < (n - lens)[:, None], pad_value)
    left = not bool(shift.any())
    return tokens, lens, (ids.long() if left else None), squeeze


def as_net(model):
    return getattr(model, "net", model)


# --- the model side: prefill once, then one token at a time ---


def prefill(net, tokens: Tensor, cache, keep_layers: dict | None = None) -> Tensor:
    """Run the prompt (b, n) once into an empty cache; its final hidden states
    (and the layers' in `keep_layers`, as `Decoder.forward` takes it)."""
    return net.decode(tokens, cache, keep_layers=keep_layers)


def prompt_cut(net, n: int, restrict: bool = True) -> int:
    """How many of an n-token prompt's first tokens a run leaves out: all but
    the model's last max_seq_len (`restrict_to_max_seq_len`), else none."""
    return max(0, n - net.max_seq_len) if restrict else 0


def read_prompt(net, prompt: Tensor, cache, seq_start_pos: Tensor | None = None, cut: int = 0,
                keep_layers: dict | None = None) -> Tensor:
    """`prefill` with a run's bookkeeping: the prompt (b, n) but its first
    `cut` tokens, which the cache counts as its `offset` (so positions and
    later reads line up with the whole sequence), and each row's left
    padding `seq_start_pos`; the final hidden states of what it read."""
    if cut:
        prompt = prompt[:, cut:]
        seq_start_pos = (seq_start_pos - cut).clamp(min=0) if exists(seq_start_pos) else None
    cache.seq_start_pos, cache.offset = seq_start_pos, cut
    return prefill(net, prompt, cache, keep_layers)


def decode_one_token(net, cache, token: Tensor, keep_layers: dict | None = None) -> Tensor:
    """One position per row through the cache: (b,) tokens -> (b, dim) hidden; in a forward shared with the
    network's other runs in flight when its forwards are shared (`axw.shared`) and no layer is kept."""
    shared = shared_forwards(net) if keep_layers is None else None
    if shared is not None:
        return shared.decode(token[:, None], cache)[:, 0]
    return net.decode(token[:, None], cache, keep_layers=keep_layers)[:, 0]


def window(x: Tensor, start: Tensor | None, size: int) -> tuple[Tensor, Tensor | None]:
    """The last `size` tokens of x (and the left padding inside them)."""
    if x.shape[1] > size:
        cut = x.shape[1] - size
        x = x[:, cut:]
        start = (start - cut).clamp(min=0) if exists(start) else None
    return x, start


class ModelRunner:
    """One network's side of a run: its KV cache, and how much of the
    sequence it has read. `hidden(seq, end)` runs only the positions of
    `seq[:, :end]` it has not seen (x-transformers' cache contract): the whole
    prompt the first time, then usually one token. Without a cache it
    recomputes the sequence, restricted to the last max_seq_len tokens. A
    cache passed in may already hold the first tokens of the sequence."""

    def __init__(self, net, seq_start_pos: Tensor | None, capacity: int, cache_kv: bool, restrict: bool,
                 cache=None):
        self.net, self.start, self.restrict = net, seq_start_pos, restrict
        if exists(cache):
            # an empty cache given to the run gets the room the run's own would have: the same buffer layout, so
            # the same arithmetic (and bits), and no reallocation as the text grows
            cache.reserve(capacity)
        self.cache = cache if exists(cache) else (net.new_cache(capacity) if cache_kv else None)

    @property
    def fed(self) -> int:
        """Tokens of the sequence the cache has read."""
        return self.cache.seq_length if exists(self.cache) else 0

    def _window(self, x: Tensor, start: Tensor | None):
        return window(x, start, self.net.max_seq_len) if self.restrict else (x, start)

    def hidden(self, seq: Tensor, end: int, last: int = 1, keep_layers: dict | None = None) -> Tensor:
        """Final hidden states (b, last, dim) of positions end - last .. end - 1; `keep_layers` (with a cache):
        the layers' hidden states of the positions run, as `Decoder.forward` takes it."""
        if self.cache is None:
            x, start = self._window(seq[:, :end], self.start)
            return self.net(x, seq_start_pos=start, return_embeddings=True)[:, -last:]
        fed = self.fed
        if fed == 0:
            hidden = read_prompt(self.net, seq[:, :end], self.cache, self.start,
                                 prompt_cut(self.net, end, self.restrict), keep_layers)
        elif end - fed == 1:
            hidden = decode_one_token(self.net, self.cache, seq[:, end - 1], keep_layers)[:, None]
        else:
            hidden = self.net.decode(seq[:, fed:end], self.cache, keep_layers=keep_layers)
        return hidden[:, -last:]

    def logits(self, seq: Tensor, end: int) -> Tensor:
        """Next-token logits (b, vocab) after `seq[:, :end]` (those of a draw done with other runs' at this step
        when there is one: `axw.shared.drawing`)."""
        hidden = self.hidden(seq, end)[:, -1]
        done = drawn(self.net)
        return done.logits if done is not None else self.net.logits(hidden)

    def rollback(self, n: int, exact: bool = True):
        """Forget the last n positions read (rejected drafts)."""
        if self.cache is not None and n:
            self.cache.rollback(n, exact)

    def reorder(self, index: Tensor):
        """Rows follow `index` (beam search)."""
        if self.cache is not None:
            self.cache.reorder(index)
        if exists(self.start):
            self.start = self.start.index_select(0, index)


def sample(probs_or_logits: Tensor, generator: torch.Generator | RowGenerators | None,
           logits: bool = True) -> Tensor:
    """One token per row, by inverse transform: the token where the
    cumulative distribution first passes one uniform draw. Every step of
    every sampler takes exactly one draw per row, so two runs with the same
    seed share their random numbers: where their distributions agree they
    pick the same token (what the Compare view relies on)."""
    probs = probs_or_logits.float().softmax(dim=-1) if logits else probs_or_logits.float()
    cdf = probs.cumsum(dim=-1)
    u = uniform(probs.shape[0], 1, probs.device, generator) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True)[:, 0]
    # rounding can put u at the very top: the last token that has any probability
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).long().argmax(dim=-1)
    return torch.minimum(token, last)


# --- one run ---


STRATEGIES = ("sample", "beam", "contrastive", "speculative", "dola")


def require(cond, msg: str):
    """A ValueError with `msg` unless `cond`."""
    if not cond:
        raise ValueError(msg)


GENERATOR_TYPES = "generator must be a torch.Generator, or RowGenerators (one per row)"


class Run:
    """One generation run: the settings and models, checked at construction,
    and what the strategies share. Its strategy, a function of the run,
    yields its steps (`generation.Decoding` iterates the one the settings
    chose); the output is read from `output()` afterwards, or from the fields
    the strategy fills as it goes:

    sequences: (batch, prompt + seq_len) the prompt and the tokens chosen so
        far, pad_value after them (`new_output`); beam search's best beam
        once it ends.
    beams, beam_scores: beam search, once it ends: every beam best first,
        (beams, batch, prompt + seq_len), and their (beams, batch) scores.
    stats: speculative decoding's counts, from its first step on.
    """

    sequences: Tensor | None
    beams: Tensor | None
    beam_scores: Tensor | None
    stats: SpeculativeStats | None

    def __init__(
        self,
        wrapper,
        prompts,
        seq_len: int,
        config: GenerationConfig,
        *,
        amateur_model=None,
        assistant_model=None,
        assistant_datastore=None,
        prompt_lens: Tensor | None = None,
        generator: torch.Generator | None = None,
        cache=None,
        strategy: str | None = None,
        attention_mask=None, pad_token_id: int | None = None, num_return_sequences: int = 1,
        output_scores: bool = False, output_logits: bool = False,
    ):
        net = self.net = wrapper.net
        self.wrapper, (self.config, self.constraint) = wrapper, structured.prepare(wrapper, config)

        need = require
        check_number(seq_len, "seq_len", 0, integer=True)
        c = config = self.config
        for eos in (c.eos_token if isinstance(c.eos_token, list) else [c.eos_token] if exists(c.eos_token) else []):
            check_number(eos, "eos_token", 0, net.num_tokens, integer=True, high_open=True,
                         allowed=f"a token id in [0, {net.num_tokens})")
        need(generator is None or isinstance(generator, (torch.Generator, RowGenerators)), GENERATOR_TYPES)
        need(c.beams <= net.num_tokens, f"beams must be at most the vocabulary size {net.num_tokens}, got {c.beams}")
        need(c.beams == 1 or c.penalty_alpha is None, "beam search and contrastive search cannot be combined")
        speculative = exists(assistant_model) or exists(assistant_datastore) or exists(c.prompt_lookup_num_tokens)
        if strategy is None:
            strategy = ("beam" if c.beams > 1 else "contrastive" if exists(c.penalty_alpha)
                        else "speculative" if speculative else "dola" if exists(c.dola_layers) else "sample")
        self.strategy = strategy
        self.dola_layers = self._dola(exists(amateur_model) or speculative)
        need(amateur_model is None or strategy == "sample",
             "contrastive decoding (amateur_model) combines with sampling or greedy, not beams, contrastive search "
             "or speculative decoding")
        need(not speculative or strategy == "speculative",
             "speculative decoding (assistant_model / assistant_datastore / prompt_lookup_num_tokens) combines with "
             "sampling or greedy, not beam search or contrastive search")
        need(not (exists(assistant_model) and exists(c.prompt_lookup_num_tokens)),
             "speculative decoding drafts with an assistant model or by prompt lookup, not both")
        need(not (exists(assistant_datastore) and exists(c.prompt_lookup_num_tokens)),
             "prompt lookup drafts from the text alone: to copy from the text beside a datastore, pass "
             "assistant_lookup_ngram instead of prompt_lookup_num_tokens")
        need(c.mirostat_tau is None or strategy == "sample",
             "mirostat is a sampler: it combines with sampling, not beam search, contrastive search or "
             "speculative decoding")
        fns = c.filter_logits_fn if isinstance(c.filter_logits_fn, list) else [c.filter_logits_fn]
        fns = [FILTER_LOGITS_FN.get(f) if isinstance(f, str) else f for f in fns]
        stateful = [filter_name(f) for f in fns if is_stateful(f)]
        need(not stateful or strategy == "sample",
             f"{stateful[0] if stateful else ''} keeps state from token to token: it combines with sampling, not "
             "beam search, contrastive search or speculative decoding")

        self.amateurs, self.cd_kwargs = self._amateurs(amateur_model)
        self.assistant = self._assistant(assistant_model)
        self.datastore = self._datastore(assistant_datastore)
        self.breakers = self._dry_breakers() if c.dry_multiplier > 0 else None

        self._transformers_arguments(pad_token_id, num_return_sequences, output_scores, output_logits, cache)
        tokens, seq_start_pos = self._prompts(prompts, prompt_lens, attention_mask)
        self.tokens, self.seq_start_pos = tokens, seq_start_pos
        self.cache = self._given_cache(cache, tokens)
        self.prompt_len, self.seq_len = tokens.shape[1], seq_len
        # contrastive search and DoLa read the cache as they run, speculative decoding rolls it back
        self.cache_kv = c.cache_kv or strategy in ("contrastive", "speculative", "dola")
        for model in [net, *self.amateurs, *([self.assistant] if exists(self.assistant) else [])]:
            self._check_length(model, self.prompt_len, seq_len)

        # the stop ids: one compares with ==, several with isin
        self.eos = torch.tensor(c.eos_token, device=tokens.device) if exists(c.eos_token) else None
        self.generator = RowGenerators.check(generator, tokens.shape[0])
        if exists(c.seed):
            self.generator = torch.Generator(device=tokens.device).manual_seed(c.seed)
        self.sequences = self.beams = self.beam_scores = self.stats = None
        self.runners: list[ModelRunner] = []  # what `runner` made, left from shared forwards at the end

    def _dola(self, combined: bool) -> list[int] | None:
        """DoLa's candidate layers, checked against this network (None: another strategy); `combined`: an amateur
        or an assistant was given too."""
        if self.config.dola_layers is None:
            return None
        if self.strategy != "dola" or combined:
            raise ValueError("DoLa (dola_layers) contrasts the model's own layers: it combines with sampling or "
                             "greedy, not beam search, contrastive search, contrastive decoding (amateur_model) or "
                             "speculative decoding")
        return candidate_layers(self.config.dola_layers, self.net.attn_layers.depth, is_tied(self.net))

    def _transformers_arguments(self, pad: int | None, n: int, output_scores: bool, output_logits: bool, cache):
        """transformers' arguments of generate, checked: the pad of this run, how many sequences each prompt
        returns (`num_return_sequences`), and whether per-step scores and logits are kept."""
        self.pad = self.wrapper.pad_value
        if pad is not None:
            self.pad = check_number(pad, "pad_token_id", 0, self.net.num_tokens, integer=True, high_open=True,
                                    allowed=f"a token id in [0, {self.net.num_tokens})")
        self.num_return = check_number(n, "num_return_sequences", 1, integer=True)
        self.kept_scores = [] if output_scores else None
        self.kept_logits = [] if output_logits else None
        keep = output_scores or output_logits
        if n > 1 and self.strategy == "beam" and n > self.config.beams:
            raise ValueError(f"num_return_sequences={n} best beams of {self.config.beams}: give at most beams")
        if n > 1 and self.strategy != "beam" and (self.config.greedy or self.strategy == "contrastive"):
            raise ValueError(f"num_return_sequences={n} needs sampling or beam search: greedy decoding and contrastive "
                             "search give one sequence per prompt (as in transformers)")
        if n > 1 and cache is not None:
            raise ValueError("num_return_sequences > 1 runs each prompt several times: it cannot continue from a cache")
        if keep and self.strategy == "speculative":
            raise ValueError("output_scores / output_logits: speculative decoding does not keep them (sampling, "
                             "greedy, contrastive decoding, contrastive search and beam search do)")

    def _prompts(self, prompts, prompt_lens, attention_mask) -> tuple[Tensor, Tensor | None]:
        """The prompts as the run reads them, left-padded, and that padding;
        sets `squeeze` (one 1-D prompt given) and `given` (the caller's
        left-padded input_ids, which the output starts with)."""
        aligned, self.given = False, None
        if attention_mask is not None:
            if exists(prompt_lens):
                raise ValueError("attention_mask and prompt_lens both say where each row's tokens are: give one")
            prompts, prompt_lens, self.given, squeeze = masked_prompts(prompts, attention_mask, self.pad)
            aligned = True
        tokens, start, self.squeeze = prepare_prompts(prompts, prompt_lens, self.pad, self.net.num_tokens, aligned)
        if attention_mask is not None:
            self.squeeze = squeeze
        if self.num_return > 1 and self.strategy != "beam":  # transformers' order: each prompt's rows together
            n = self.num_return
            tokens = tokens.repeat_interleave(n, 0)
            start = start.repeat_interleave(n, 0) if exists(start) else None
            self.given = self.given.repeat_interleave(n, 0) if exists(self.given) else None
        if exists(self.constraint):  # a constrained text the prompt has begun must fit, before any compute
            self.constraint.check_prompt(tokens, self.config.constrained_prompt_tail)
        return tokens, start

    def keep(self, logits: Tensor, scores: Tensor, repeat: int = 1):
        """A step's raw logits and the scores the strategy chose from, when asked for (`output_logits`,
        `output_scores`); `repeat`: each row stands for that many (beam search's first step)."""
        if self.kept_logits is not None:
            self.kept_logits.append(logits.repeat_interleave(repeat, 0) if repeat > 1 else logits)
        if self.kept_scores is not None:
            self.kept_scores.append(scores.repeat_interleave(repeat, 0) if repeat > 1 else scores)

    def _amateurs(self, amateur_model):
        if amateur_model is None:
            return [], []
        amateurs = list(amateur_model) if isinstance(amateur_model, (list, tuple)) else [amateur_model]
        kwargs = self.config.contrastive_decode_kwargs
        kwargs = list(kwargs) if isinstance(kwargs, list) else [kwargs] * len(amateurs)
        if len(kwargs) != len(amateurs):
            raise ValueError(f"got {len(amateurs)} amateur models but {len(kwargs)} kwargs")
        nets = []
        for amateur in amateurs:
            amateur = as_net(amateur)
            vocab = getattr(amateur, "num_tokens", None)
            if not (isinstance(amateur, torch.nn.Module) and vocab == self.net.num_tokens):
                raise ValueError(
                    f"an amateur model must be an axw model sharing the expert's vocabulary of {self.net.num_tokens} "
                    f"tokens, got {getattr(amateur, 'num_tokens', type(amateur).__name__)}")
            nets.append(amateur)
        return nets, [dict(alpha=kw.get("alpha", 0.1), beta=kw.get("beta", 0.5)) for kw in kwargs]

    def _assistant(self, assistant_model):
        if assistant_model is None:
            return None
        draft = as_net(assistant_model)
        if not (isinstance(draft, torch.nn.Module) and getattr(draft, "num_tokens", None) == self.net.num_tokens):
            raise ValueError(
                f"an assistant (draft) model must be an axw model with the target's vocabulary size "
                f"{self.net.num_tokens}, got {getattr(draft, 'num_tokens', type(draft).__name__)}")
        return draft

    def _datastore(self, datastore):
        if datastore is None:
            return None
        if not isinstance(datastore, NgramDatastore) or datastore.vocab_size != self.net.num_tokens:
            raise ValueError(
                f"assistant_datastore must be an NgramDatastore over the target's vocabulary of {self.net.num_tokens} "
                f"tokens, got {getattr(datastore, 'vocab_size', type(datastore).__name__)}")
        return datastore

    def _given_cache(self, cache, tokens: Tensor):
        """A KV cache to fill, or to continue from: it holds the first tokens
        of these prompts (a fork of an earlier run's, rolled back to where a
        branch starts), and only the rest of the prompt runs."""
        if cache is None:
            return None
        if not isinstance(cache, KVCache) or cache.num_layers != self.net.attn_layers.depth:
            raise ValueError(f"cache must be a KVCache of this model ({self.net.attn_layers.depth} layers), "
                             f"got {cache!r}")
        if self.strategy == "contrastive":
            raise ValueError("contrastive search needs the whole prompt's hidden states: it cannot continue from a "
                             "cache")
        held = cache.seq_length
        if cache.seen and cache.batch != tokens.shape[0]:
            raise ValueError(f"the cache holds {cache.batch} rows, the prompts {tokens.shape[0]}")
        if held >= tokens.shape[1]:
            raise ValueError(f"the cache holds {held} tokens; the prompt ({tokens.shape[1]} tokens) must go on past "
                             "them by at least one")
        return cache

    def _dry_breakers(self) -> Tensor:
        """DRY's sequence breakers as token ids: ids as given; text through the
        model's tokenizer, as every token whose text contains it."""
        breakers, tokenizer = self.config.dry_sequence_breakers, self.wrapper.tokenizer
        if breakers is None:
            breakers = list(DRY_BREAKERS) if exists(tokenizer) else []
        ids = set()
        texts = [b for b in breakers if isinstance(b, str)]
        for b in breakers:
            if isinstance(b, int):
                check_number(b, "a DRY sequence breaker", 0, self.net.num_tokens, integer=True, high_open=True,
                             allowed=f"a token id in [0, {self.net.num_tokens}) or text")
                ids.add(b)
        if texts:
            if tokenizer is None:
                raise ValueError("DRY sequence breakers given as text need the model's tokenizer; give token ids")
            pieces = tokenizer.decode_batch([[i] for i in range(self.net.num_tokens)])
            ids |= {i for i, piece in enumerate(pieces) if any(t in piece for t in texts)}
        return torch.tensor(sorted(ids), dtype=torch.long)

    def _check_length(self, net, n: int, seq_len: int):
        window_size = net.max_seq_len
        if n > window_size and not self.config.restrict_to_max_seq_len:
            raise ValueError(f"the prompt has {n} tokens, past max_seq_len={window_size}; "
                             "allow restrict_to_max_seq_len to keep only the last ones")
        if self.cache_kv and not net.can_cache_kv_outside_max_seq_len and seq_len > 0:
            last = min(n, window_size) + seq_len - 1  # positions fed to the net
            if last > window_size:
                raise ValueError(
                    f"{min(n, window_size)} prompt tokens + {seq_len} new ones need {last} positions, past "
                    f"max_seq_len={window_size} of a model with absolute positions: shorten them, pass cache_kv=False "
                    "(recompute on a sliding window), or use a rotary model"
                )

    # --- what the strategies share ---

    def runner(self, net, extra: int = 0) -> ModelRunner:
        """A `ModelRunner` for `net` with room for `extra` positions beyond
        the run (the model's runs in the cache given to the run, if any)."""
        total = min(self.prompt_len, net.max_seq_len) + self.seq_len
        if net.can_cache_kv_outside_max_seq_len:
            total = min(total, 2 * net.max_seq_len)
        runner = ModelRunner(net, self.seq_start_pos, total + extra, self.cache_kv,
                             self.config.restrict_to_max_seq_len, self.cache if net is self.net else None)
        self.runners.append(runner)
        return runner

    def leave_shared(self):
        """The run has ended: the shared forwards of its networks (`axw.shared`) stop waiting for its steps."""
        for runner in self.runners:
            shared = shared_forwards(runner.net)
            if shared is not None and runner.cache is not None:
                shared.leave(runner.cache)

    def pipeline(self, amateurs: list = ()) -> Pipeline:
        grammar = None
        if exists(self.constraint):  # its text starts after the prompt, or in its last tokens (a continuation)
            grammar = self.constraint.stage(self.prompt_len - self.config.constrained_prompt_tail)
        return build_pipeline(self.config, amateurs, self.breakers, self.generator, grammar)

    def new_output(self) -> Tensor:
        """(batch, prompt + seq_len): the prompt, then pad_value to be overwritten."""
        b, t = self.tokens.shape
        out = torch.full((b, t + self.seq_len), self.pad, dtype=torch.long, device=self.tokens.device)
        out[:, :t] = self.tokens
        self.sequences = out
        return out

    def is_eos(self, tokens: Tensor) -> Tensor:
        """Where `tokens` is one of the stop ids (all False without any)."""
        if self.eos is None:
            return torch.zeros_like(tokens, dtype=torch.bool)
        return tokens == self.eos if self.eos.ndim == 0 else torch.isin(tokens, self.eos)

    def valid(self, total: int, start: Tensor | None = None) -> Tensor | None:
        """(b, total) False on left padding, or None when there is none."""
        start = self.seq_start_pos if start is None else start
        if start is None:
            return None
        return torch.arange(total, device=start.device)[None, :] >= start[:, None]

    @staticmethod
    def context(seq: Tensor, end: int, valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """What the processors see before position `end`: (tokens, valid)."""
        return seq[:, :end], (valid[:, :end] if exists(valid) else None)

    def new_trace(self, step: int, logits: Tensor) -> StepTrace | None:
        return new_trace(step, logits, self.config.trace_top) if self.config.trace else None

    # --- running ---

    def __iter__(self) -> Iterator[Step]:
        """The run's steps, by its strategy (`generation.Decoding`)."""
        raise NotImplementedError("a Run is stepped by a strategy: use axw.generation.Decoding")

    def output(self) -> Tensor:
        """The prompt followed by the generated tokens, (batch, prompt + seq_len)
        (or 1-D for an unbatched prompt); stopped rows padded with pad_value."""
        if self.sequences is None:
            for _ in self:
                pass
        if self.sequences is None:
            self.new_output()
        if exists(self.given):  # the caller's left-padded prompt, as given
            self.sequences[:, :self.prompt_len] = self.given
            if exists(self.beams):
                self.beams[:, :, :self.prompt_len] = self.given
        out = self.sequences
        if self.num_return > 1 and exists(self.beams):  # each prompt's best beams, together
            out = rearrange(self.beams[:self.num_return], "k b n -> (b k) n")
        return out[0] if self.squeeze and self.num_return == 1 else out

    def beams_and_scores(self) -> tuple[Tensor, Tensor]:
        """(beams, batch, prompt + seq_len) best first, and (beams, batch) scores."""
        self.output()
        beams, scores = self.beams, self.beam_scores
        return (beams[:, 0], scores[:, 0]) if self.squeeze else (beams, scores)

    def result(self) -> GenerateOutput:
        """`output()` with what the strategy knows beside it."""
        sequences = self.output()
        kept = dict(scores=None if self.kept_scores is None else tuple(self.kept_scores),
                    logits=None if self.kept_logits is None else tuple(self.kept_logits))
        if self.beams is None:
            return GenerateOutput(sequences, stats=self.stats, strategy=self.strategy_name, **kept)
        beams, scores = self.beams_and_scores()
        best = rearrange(self.beam_scores[:self.num_return], "k b -> (b k)") if self.num_return > 1 else scores[0]
        return GenerateOutput(sequences, best, beams, scores, self.stats, self.strategy_name, **kept)

    @property
    def strategy_name(self) -> str:
        """The strategy as the docs and the playground name it (axw.specs.STRATEGIES)."""
        if self.strategy == "sample" and self.amateurs:
            return "contrastive decoding"
        return next(name for name, steps in STRATEGY_STEPS.items() if steps == self.strategy)
