"""The decoding loop behind `AutoregressiveWrapper.generate`, `stream` and
`beam_search`.

prompt ids -> prefill once -> per step: logits -> processors (penalties,
filters, temperature) -> choose (sample / argmax / beams / contrastive) ->
one new position through the KV cache. Streaming and the teaching trace are
by-products of this one loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .filters import build_filters, build_penalties, top_k
from .search import BeamState, contrastive_decode_fn, degeneration_penalty, gumbel_noise
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
    """

    step: int
    tokens: Tensor
    sequences: Tensor
    finished: Tensor
    trace: StepTrace | None = None


# --- prompts and settings, all checked before any compute ---


def prepare_prompts(prompts, prompt_lens, pad_value: int, num_tokens: int):
    """Left-pad prompts into (batch, n); returns (tokens, seq_start_pos or
    None, whether the caller gave a single unbatched prompt)."""
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
        tokens, aligned = prompts, False
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


def _as_net(model):
    return getattr(model, "net", model)


class Decoding:
    """One generation run: settings checked at construction, steps yielded by
    iteration, the full output from `output()` afterwards."""

    def __init__(
        self,
        wrapper,
        prompts,
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn=top_k,
        filter_kwargs: dict | list = None,
        prompt_lens: Tensor | None = None,
        restrict_to_max_seq_len: bool = True,
        amateur_model=None,
        contrastive_decode_kwargs: dict | list | tuple = None,
        cache_kv: bool = True,
        beams: int = 1,
        penalty_alpha: float | None = None,
        contrastive_k: int = 4,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        length_penalty: float = 0.0,
        stochastic: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        trace: bool = False,
        trace_top: int = 10,
    ):
        net = wrapper.net
        self.wrapper, self.net = wrapper, net
        self.pad = wrapper.pad_value

        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        check_number(seq_len, "seq_len", 0, integer=True)
        check_number(temperature, "temperature", 0, allowed="a finite number >= 0 (0 = greedy)")
        check_number(beams, "beams", 1, integer=True)
        check_number(contrastive_k, "contrastive_k", 1, integer=True)
        if penalty_alpha is not None:
            check_number(penalty_alpha, "penalty_alpha", 0, 1, allowed="in [0, 1] (None = off)")
        if eos_token is not None:
            check_number(eos_token, "eos_token", 0, net.num_tokens, integer=True, high_open=True,
                         allowed=f"a token id in [0, {net.num_tokens})")
        check_number(length_penalty, "length_penalty")
        check_number(trace_top, "trace_top", 1, integer=True)
        if seed is not None:
            check_number(seed, "seed", 0, 2**63, integer=True, high_open=True)
        need(generator is None or isinstance(generator, torch.Generator), "generator must be a torch.Generator")
        need(beams <= net.num_tokens, f"beams must be at most the vocabulary size {net.num_tokens}, got {beams}")
        need(beams == 1 or penalty_alpha is None, "beam search and contrastive search cannot be combined")
        need(amateur_model is None or (beams == 1 and penalty_alpha is None),
             "contrastive decoding (amateur_model) combines with sampling or greedy, not beams or contrastive search")

        self.penalties = build_penalties(repetition_penalty, no_repeat_ngram_size)
        self.filters = build_filters(filter_logits_fn, filter_kwargs if exists(filter_kwargs) else {})
        self.seq_len, self.eos, self.temperature = seq_len, eos_token, float(temperature)
        self.beams, self.penalty_alpha, self.contrastive_k = beams, penalty_alpha, contrastive_k
        self.length_penalty, self.stochastic = float(length_penalty), stochastic
        self.trace, self.trace_top = trace, trace_top
        self.restrict = restrict_to_max_seq_len

        self.amateurs, self.cd_kwargs = [], []
        if exists(amateur_model):
            amateurs = list(amateur_model) if isinstance(amateur_model, (list, tuple)) else [amateur_model]
            kwargs = contrastive_decode_kwargs if exists(contrastive_decode_kwargs) else dict(beta=0.5, alpha=0.1)
            kwargs = list(kwargs) if isinstance(kwargs, (list, tuple)) else [kwargs] * len(amateurs)
            need(len(kwargs) == len(amateurs), f"got {len(amateurs)} amateur models but {len(kwargs)} kwargs")
            for amateur, kw in zip(amateurs, kwargs):
                amateur = _as_net(amateur)
                need(isinstance(amateur, torch.nn.Module) and getattr(amateur, "num_tokens", None) == net.num_tokens,
                     f"an amateur model must be an axw model sharing the expert's vocabulary of {net.num_tokens} "
                     f"tokens, got {getattr(amateur, 'num_tokens', type(amateur).__name__)}")
                need(isinstance(kw, dict), f"contrastive_decode_kwargs must be a dict of alpha and beta, got {kw!r}")
                unknown = set(kw) - {"alpha", "beta"}
                need(not unknown, f"contrastive_decode_kwargs take alpha and beta, got {sorted(unknown)}")
                alpha, beta = kw.get("alpha", 0.1), kw.get("beta", 0.5)
                check_number(alpha, "contrastive decoding alpha", 0, 1, low_open=True)
                check_number(beta, "contrastive decoding beta", 0)
                self.amateurs.append(amateur)
                self.cd_kwargs.append(dict(alpha=alpha, beta=beta))

        tokens, seq_start_pos, self.squeeze = prepare_prompts(prompts, prompt_lens, self.pad, net.num_tokens)
        self.prompt_len = tokens.shape[1]
        # contrastive search scores candidates through the cache; the rest may recompute
        self.cache_kv = cache_kv or exists(penalty_alpha)
        for model in [net, *self.amateurs]:
            self._check_length(model, self.prompt_len, seq_len)

        self.generator = generator
        if exists(seed):
            self.generator = torch.Generator(device=tokens.device).manual_seed(seed)
        self.tokens, self.seq_start_pos = tokens, seq_start_pos
        self._out: Tensor | None = None
        self._scores: Tensor | None = None

    def _check_length(self, net, n: int, seq_len: int):
        window = net.max_seq_len
        if n > window and not self.restrict:
            raise ValueError(f"the prompt has {n} tokens, past max_seq_len={window}; "
                             "allow restrict_to_max_seq_len to keep only the last ones")
        if self.cache_kv and not net.can_cache_kv_outside_max_seq_len and seq_len > 0:
            last = min(n, window) + seq_len - 1  # positions fed to the net
            if last > window:
                raise ValueError(
                    f"{min(n, window)} prompt tokens + {seq_len} new ones need {last} positions, past "
                    f"max_seq_len={window} of a model with absolute positions: shorten them, pass cache_kv=False "
                    "(recompute on a sliding window), or use a rotary model"
                )

    # --- running ---

    def __iter__(self) -> Iterator[Step]:
        if self.beams > 1:
            return self._beam_steps()
        if exists(self.penalty_alpha):
            return self._contrastive_steps()
        return self._sample_steps()

    def output(self) -> Tensor:
        """The prompt followed by the generated tokens, (batch, prompt + seq_len)
        (or 1-D for an unbatched prompt); stopped rows padded with pad_value."""
        if self._out is None:
            for _ in self:
                pass
        out = self._out
        return out[0] if self.squeeze else out

    # --- the model ---

    def _window(self, x: Tensor, start: Tensor | None, net) -> tuple[Tensor, Tensor | None]:
        """Keep the last max_seq_len tokens (and the padding inside them)."""
        w = net.max_seq_len
        if self.restrict and x.shape[1] > w:
            cut = x.shape[1] - w
            x = x[:, cut:]
            start = (start - cut).clamp(min=0) if exists(start) else None
        return x, start

    def _prefill(self, net, tokens, start, capacity, hidden_all=False):
        """Run the prompt once; returns (last logits, cache, hidden states)."""
        x, start = self._window(tokens, start, net)
        cache = net.new_cache(capacity) if self.cache_kv else None
        hidden = net(x, cache=cache, input_not_include_cache=True, seq_start_pos=start, return_embeddings=True)
        return net.logits(hidden[:, -1]), cache, (hidden if hidden_all else None)

    def _next_logits(self, net, cache, out, cur, start, last_tokens):
        """Logits for the position after `out[:, :cur]`: one cached step, or a
        recompute of the (windowed) sequence."""
        if exists(cache):
            hidden = net(last_tokens[:, None], cache=cache, input_not_include_cache=True, return_embeddings=True)
        else:
            x, s = self._window(out[:, :cur], start, net)
            hidden = net(x, seq_start_pos=s, return_embeddings=True)
        return net.logits(hidden[:, -1])

    def _capacity(self, net) -> int:
        total = min(self.prompt_len, net.max_seq_len) + self.seq_len
        if net.can_cache_kv_outside_max_seq_len:
            total = min(total, 2 * net.max_seq_len)
        return total

    def _valid(self, total, start, device) -> Tensor | None:
        if start is None:
            return None
        return torch.arange(total, device=device)[None, :] >= start[:, None]

    def _new_output(self) -> Tensor:
        """(batch, prompt + seq_len): the prompt, then pad_value to be overwritten."""
        b, t = self.tokens.shape
        out = torch.full((b, t + self.seq_len), self.pad, dtype=torch.long, device=self.tokens.device)
        out[:, :t] = self.tokens
        self._out = out
        return out

    def _process(self, logits, context, valid, trace: StepTrace | None, sampling: bool, filters: bool = True):
        """Penalties, then (when sampling) the filters and temperature. A stage
        that would leave a row no token at all (say no-repeat-n-gram banning
        the one token contrastive decoding kept) is skipped for that row."""
        procs = [*self.penalties, *(self.filters if sampling and filters else ())]
        for proc in procs:
            out = proc(logits, context, valid)
            nothing_left = ~torch.isfinite(out).any(dim=-1, keepdim=True)
            logits = torch.where(nothing_left, logits, out)
            if trace:
                trace.record(proc.name, logits)
        if not sampling:
            return logits
        # subtract the max first and divide in float64: a tiny temperature then
        # drives the rest to -inf instead of giving inf - inf or 0 / 0 = NaN
        if self.temperature != 1.0:
            shifted = logits.double() - logits.amax(dim=-1, keepdim=True).double()
            logits = (shifted / self.temperature).to(logits.dtype)
        if trace:
            trace.record("temperature", logits)
        return logits

    def _sample(self, logits: Tensor) -> Tensor:
        probs = logits.float().softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    # --- sampling, greedy and contrastive decoding ---

    def _sample_steps(self) -> Iterator[Step]:
        net, tokens, start = self.net, self.tokens, self.seq_start_pos
        b, t = tokens.shape
        device = tokens.device
        out = self._new_output()
        valid = self._valid(t + self.seq_len, start, device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        greedy = self.temperature == 0.0
        if self.seq_len == 0:
            return

        logits, cache, _ = self._prefill(net, tokens, start, self._capacity(net))
        amateur_state = [self._prefill(a, tokens, start, self._capacity(a))[:2] for a in self.amateurs]

        cur = t
        for step in range(self.seq_len):
            trace = new_trace(step, logits, self.trace_top) if self.trace else None
            model_logits = logits
            for i, (a_logits, _) in enumerate(amateur_state):
                logits = contrastive_decode_fn(logits, a_logits, **self.cd_kwargs[i])
                if trace:
                    trace.record("contrastive_decoding" if len(self.amateurs) == 1 else f"contrastive_decoding_{i}",
                                 logits)
            context = out[:, :cur]
            ctx_valid = valid[:, :cur] if exists(valid) else None
            if greedy:
                logits = self._process(logits, context, ctx_valid, trace, sampling=False)
                chosen = logits.argmax(dim=-1)
            else:
                # contrastive decoding's plausibility cut replaces the filters (as x-transformers)
                logits = self._process(logits, context, ctx_valid, trace, sampling=True, filters=not self.amateurs)
                chosen = self._sample(logits)
            if exists(self.eos):
                chosen = chosen.masked_fill(finished, self.pad)
            if trace:
                trace.choose(chosen, model_logits, logits)
            out[:, cur] = chosen
            cur += 1
            if exists(self.eos):
                finished |= chosen == self.eos
            yield Step(step, chosen, out[:, t:cur], finished.clone(), trace)
            if step == self.seq_len - 1 or bool(finished.all()):
                break
            logits = self._next_logits(net, cache, out, cur, start, chosen)
            amateur_state = [
                (self._next_logits(a, c, out, cur, start, chosen), c) for a, (_, c) in zip(self.amateurs, amateur_state)
            ]

    # --- contrastive search ---

    def _contrastive_steps(self) -> Iterator[Step]:
        """Contrastive search (Su et al. 2022, arXiv:2202.06417): among the k most
        likely tokens pick argmax (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j),
        h the last layer's hidden states of the context and of the candidate.
        The k candidates run in one forward on the cache, each attending to the
        cache and itself; the chosen one's keys and values are kept."""
        net, tokens, start = self.net, self.tokens, self.seq_start_pos
        b, t = tokens.shape
        device = tokens.device
        total = t + self.seq_len
        out = self._new_output()
        valid = self._valid(total, start, device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        if self.seq_len == 0:
            return
        alpha, k = float(self.penalty_alpha), min(self.contrastive_k, net.num_tokens)

        logits, cache, hidden = self._prefill(net, tokens, start, self._capacity(net) + k, hidden_all=True)
        # unit-norm hidden states of the context; padding never counts
        context_h = hidden.new_zeros((b, total, hidden.shape[-1]))
        n_prefill = hidden.shape[1]
        context_h[:, t - n_prefill:t] = F.normalize(hidden.float(), dim=-1).to(hidden.dtype)
        context_ok = torch.zeros((b, total), dtype=torch.bool, device=device)
        context_ok[:, t - n_prefill:t] = True if valid is None else valid[:, t - n_prefill:t]
        rows = torch.arange(b, device=device)

        cur = t
        for step in range(self.seq_len):
            trace = new_trace(step, logits, self.trace_top) if self.trace else None
            model_logits = logits
            logits = self._process(logits, out[:, :cur], valid[:, :cur] if exists(valid) else None, trace, False)
            probs = logits.float().softmax(dim=-1)
            top_probs, top_ids = probs.topk(k, dim=-1)

            cand_h = net(top_ids, cache=cache, input_not_include_cache=True, parallel=True, return_embeddings=True)
            penalty = degeneration_penalty(cand_h, context_h[:, :cur], context_ok[:, :cur])
            score = (1.0 - alpha) * top_probs - alpha * penalty
            pick = score.argmax(dim=-1)
            chosen = top_ids[rows, pick]
            if exists(self.eos):
                chosen = chosen.masked_fill(finished, self.pad)
            cache.keep_candidate(pick)
            context_h[:, cur] = F.normalize(cand_h[rows, pick].float(), dim=-1).to(context_h.dtype)
            context_ok[:, cur] = True
            next_logits = net.logits(cand_h[rows, pick])

            if trace:
                trace.choose(chosen, model_logits, logits)
                trace.contrastive = dict(tokens=top_ids, confidence=top_probs, degeneration_penalty=penalty,
                                         score=score)
            out[:, cur] = chosen
            cur += 1
            if exists(self.eos):
                finished |= chosen == self.eos
            yield Step(step, chosen, out[:, t:cur], finished.clone(), trace)
            if bool(finished.all()):
                break
            logits = next_logits

    # --- beam search ---

    def _beam_steps(self) -> Iterator[Step]:
        net, tokens, start = self.net, self.tokens, self.seq_start_pos
        b, t = tokens.shape
        device = tokens.device
        total = t + self.seq_len
        n_beams = self.beams
        out = self._new_output()
        state = BeamState(b, n_beams, out, self.pad, self.eos, self.length_penalty)
        if self.seq_len == 0:
            self._scores = torch.zeros((1, b), device=device)
            self._beam_out = out[None]
            return
        sampling = self.stochastic and self.temperature > 0

        logits, cache, _ = self._prefill(net, tokens, start, self._capacity(net))
        starts = start
        cur = t
        for step in range(self.seq_len):
            seqs = state.sequences  # (b * live beams, total)
            valid = self._valid(total, starts, device)
            ctx_valid = valid[:, :cur] if exists(valid) else None
            trace = new_trace(step, logits, self.trace_top) if self.trace else None
            processed = self._process(logits, seqs[:, :cur], ctx_valid, None, sampling=False)
            log_probs = processed.float().log_softmax(dim=-1)
            keys = None
            if sampling:
                # stochastic beam search: per-step Gumbel-top-k over the sampling
                # distribution (Kool et al. 2019, arXiv:1903.06059)
                filtered = self._process(logits, seqs[:, :cur], ctx_valid, None, sampling=True)
                keys = filtered.float().log_softmax(dim=-1) + gumbel_noise(filtered, self.generator)
            parents = state.advance(log_probs, keys, cur)
            if exists(cache):
                cache.reorder(parents)
            if exists(starts):
                starts = starts.index_select(0, parents)
            cur += 1
            if trace:
                trace.beams = rearrange(state.sequences[:, t:cur], "(b beams) n -> b beams n", b=b)
                trace.beam_scores = state.ranked_scores().view(b, n_beams)
                trace.beam_finished = state.finished.view(b, n_beams)
            best = state.best(t, cur)
            yield Step(step, best[:, -1], best, state.finished.view(b, n_beams).all(dim=-1), trace)
            if step == self.seq_len - 1 or state.all_finished():
                break
            logits = self._next_logits(net, cache, state.sequences, cur, starts, state.last_tokens(cur))
        self._beam_out, self._scores = state.final(t)
        self._out = self._beam_out[0]

    def beams_and_scores(self) -> tuple[Tensor, Tensor]:
        """(beams, batch, prompt + seq_len) best first, and (beams, batch) scores."""
        self.output()
        beams, scores = self._beam_out, self._scores
        return (beams[:, 0], scores[:, 0]) if self.squeeze else (beams, scores)
