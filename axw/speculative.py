"""Speculative decoding (Leviathan et al. 2023, arXiv:2211.17192; Chen et al.
2023, arXiv:2302.01318): a cheap drafter proposes several tokens, the model
checks them all in one forward pass through its KV cache, and the rejected
positions are rolled back in both caches. Greedy, the output is token for
token the model's own; sampling, it has exactly the model's distribution.

Drafters: an assistant model (any axw model with the same vocabulary size),
or prompt lookup (Saxena 2023, transformers' `prompt_lookup_num_tokens`),
which copies what followed the latest earlier occurrence of the text's last
n-gram and costs no model at all, or both (`assistant_lookup_ngram`): where
the text's last n tokens occurred before, the token that followed them is
copied as the draft and the assistant does not run. Small models' greedy
text repeats itself, and there the copy is both free and more often right
than a small draft (benchmarks/speculative.py).

A round has four parts, read top to bottom in `steps`: the `Drafter`
proposes; `verify` runs the model once over the drafts and, at each checked
position, the pipeline (penalties, filters, temperature) plain decoding
applies; `accept` is the accept/reject rule; `emit` yields the kept tokens
and their trace rows, once both caches have forgotten the rejected positions.
`SpeculativeStats` (in `runtime`, beside the `Step` that carries it) counts
the rounds; the n-gram tables the copies come from are in `ngrams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .ngrams import NgramDatastore, NgramIndex  # noqa: F401  (NgramDatastore: its name here before axw.ngrams)
from .processors import Pipeline
from .runtime import ModelRunner, Run, SpeculativeStats, Step, sample
from .trace import StepTrace
from .utils import exists

MAX_DRAFT = 64  # the heuristic schedule never drafts more per round
COPY_CAP = 2  # with copies beside the assistant, a round drafts at most this many times its tokens
# where a draft came from: the assistant model, or copied from the text (prompt lookup) or a datastore
ASSISTANT, TEXT, DATASTORE = 0, 1, 2


def lookup_drafts(index: NgramIndex, seq: Tensor, end: int, n_draft: int, pad: int) -> Tensor:
    """Prompt-lookup drafts (b, n_draft): for each row, the tokens that followed
    the latest earlier occurrence of the longest suffix of `seq[:, :end]` that
    occurs earlier (`index`, updated to `end`, holds the n-gram sizes tried);
    `pad` where there is none."""
    drafts = []
    for row, q in zip(index.rows, index.positions(index.tails(), end)):
        found = row[q:q + n_draft] if q is not None else []
        drafts.append(found + [pad] * (n_draft - len(found)))
    return torch.tensor(drafts, dtype=torch.long, device=seq.device).view(len(drafts), n_draft)


# --- the run's counts, and what a round hands from one part to the next ---


@dataclass
class Round:
    """One round's drafts, as the drafter hands them to the model."""

    cur: int  # the first drafted position
    step: int  # the step of the round's first emitted token
    drafts: Tensor  # (b, gamma) the proposed tokens
    q: list[Tensor]  # per draft (b, vocab): the drafter's processed distribution, one-hot for a copy; when needed
    sources: Tensor  # (b, gamma) where each draft came from: ASSISTANT, TEXT or DATASTORE
    drafter: str  # "assistant", "prompt lookup" or "datastore"

    @property
    def gamma(self) -> int:
        return self.drafts.shape[1]

    @property
    def copied(self) -> Tensor:
        return self.sources != ASSISTANT


@dataclass
class Checked:
    """The model's view of a round's positions cur + j, j = 0..gamma."""

    logits: Tensor  # (b, gamma + 1, vocab)
    processed: list[Tensor] | None  # per position, after the pipeline (None: sampled untraced, in one call)
    p: list[Tensor | None]  # per position (b, vocab): the processed distribution, when sampling or tracing
    choice: Tensor | None  # greedy: (b, gamma + 1) the model's own token
    traces: list[StepTrace | None]


@dataclass
class Verdict:
    """What the accept/reject rule decided for a round."""

    accepted: Tensor  # (b, gamma) each draft's test
    n_row: Tensor  # (b,) each row's accepted prefix (gamma for a stopped row)
    n: int  # the batch's: the shortest
    replacement: Tensor  # (b,) the token drawn after a row's prefix
    emitted: Tensor  # (b, n + 1) the round's tokens
    model_p: Tensor | None  # (b, gamma) p(d) of each draft d, when sampling or tracing
    draft_p: Tensor | None  # (b, gamma) q(d)


# --- draft ---


class Drafter:
    """A run's drafters and how many tokens a round drafts: prompt lookup
    alone, or the assistant model (with its own cache and pipeline) and/or
    the n-gram datastore, with copies from the text (`assistant_lookup_ngram`)
    in place of the assistant's tokens where the text knows what follows."""

    def __init__(self, run: Run, valid: Tensor | None):
        c = run.config
        self.run, self.valid = run, valid
        self.starts = [0] * run.tokens.shape[0] if run.seq_start_pos is None else run.seq_start_pos.tolist()
        self.lookup = exists(c.prompt_lookup_num_tokens)
        self.model = run.runner(run.assistant, extra=MAX_DRAFT + 1) if exists(run.assistant) else None
        self.pipeline = run.pipeline()
        self.store = run.datastore
        self.index = None
        if self.lookup:  # the longest suffix that occurred before, up to max_matching_ngram_size tokens
            self.index = NgramIndex(c.max_matching_ngram_size, self.starts, min_n=1)
        elif c.assistant_lookup_ngram:
            self.index = NgramIndex(c.assistant_lookup_ngram, self.starts)
        self.name = "prompt lookup" if self.lookup else "assistant" if exists(self.model) else "datastore"
        self.n_draft = c.prompt_lookup_num_tokens if self.lookup else c.num_assistant_tokens

    def propose(self, out: Tensor, cur: int, room: int, finished: Tensor, need_q: bool) -> tuple[Tensor, list, Tensor]:
        """Drafts for positions cur, cur + 1, ..., at most `room`: the tokens
        (b, gamma), the drafter's processed distribution at each when `need_q`,
        and where each came from (b, gamma)."""
        c, gamma = self.run.config, min(self.n_draft, room)
        if exists(self.index):
            self.index.update(out, cur)
        if self.lookup:  # each token proposed with certainty: q(d) = 1
            drafts = lookup_drafts(self.index, out, cur, gamma, self.run.pad)
            return drafts, [self.one_hot(d) for d in drafts.unbind(1)] if need_q else [], torch.full_like(drafts, TEXT)
        # copies cost no forward: beside an assistant they do not count towards its tokens
        copying = exists(self.model) and (exists(self.index) or exists(self.store))
        cap = min(room, COPY_CAP * gamma) if copying else gamma
        stopped = finished.tolist() if exists(c.eos_token) and bool(finished.any()) else None
        return self.chain(out, cur, gamma, cap, need_q or c.assistant_confidence_threshold > 0, stopped)

    def chain(self, out: Tensor, cur: int, n: int, cap: int, need_q: bool,
              stopped: list[bool] | None) -> tuple[Tensor, list, Tensor]:
        """Up to `n` of the assistant's tokens, with copies between them where
        the text or the datastore knows what comes next, `cap` drafts at most;
        without an assistant, copies until a position where some row has none.
        Rows `stopped` at EOS draft padding, never making the others wait."""
        b, device, threshold = out.shape[0], out.device, self.run.config.assistant_confidence_threshold
        tokens, q, sources = [], [], []  # per position, each row's
        tails = self.tails(out, cur)
        written = ran = 0
        while len(tokens) < cap and ran < n:
            j = len(tokens)
            found, source = self.copies(tails, cur + j, stopped)
            if min(found) >= 0:  # every row's next token is known: the assistant does not run
                chosen, probs = found, self.one_hot(torch.tensor(found, device=device)) if need_q else None
            elif self.model is None:
                break  # no assistant to ask
            else:
                if written < j:  # the assistant reads the drafts before it
                    out[:, cur + written:cur + j] = torch.tensor(tokens[written:], device=device).T
                ran, written = ran + 1, j
                chosen, probs = self.ask(out, cur + j, found, need_q)
            tokens.append(chosen)
            sources.append(source)
            q += [probs] if need_q else []
            if exists(tails):
                tails = [tail + [t] for tail, t in zip(tails, chosen)]
            # the draft stops once it is unsure of what it proposed (transformers' assistant confidence)
            if threshold > 0 and bool((probs[torch.arange(b, device=device), torch.tensor(chosen, device=device)]
                                       < threshold).any()):
                break
        if not tokens:
            none = torch.empty((b, 0), dtype=torch.long, device=device)
            return none, [], none
        return torch.tensor(tokens, device=device).T, q, torch.tensor(sources, device=device).T

    def tails(self, out: Tensor, cur: int) -> list[list[int]] | None:
        """Each row's last tokens before `cur`, none from its left padding, as
        many as the copies match on; None when nothing is copied."""
        if not (exists(self.index) or exists(self.store)):
            return None
        keep = max(self.index.n if exists(self.index) else 0, self.store.max_n if exists(self.store) else 0)
        base = max(cur - keep, 0)
        return [row[max(first - base, 0):] for row, first in zip(out[:, base:cur].tolist(), self.starts)]

    def copies(self, tails: list | None, end: int, stopped: list[bool] | None) -> tuple[list[int], list[int]]:
        """Per row, the token the text (else the datastore) says follows its
        `tails`, -1 where neither knows (padding for a stopped row), and its source."""
        found = self.index.next_tokens(tails, end) if exists(self.index) else [-1] * len(self.starts)
        source = [TEXT if f >= 0 else ASSISTANT for f in found]
        if exists(self.store) and min(found) < 0:
            stored = self.store.next_tokens(tails)
            source = [DATASTORE if f < 0 <= s else kind for f, s, kind in zip(found, stored, source)]
            found = [f if f >= 0 else s for f, s in zip(found, stored)]
        if stopped is not None:
            found = [self.run.pad if done else f for f, done in zip(found, stopped)]
        return found, source

    def ask(self, out: Tensor, end: int, found: list[int], need_q: bool) -> tuple[list[int], Tensor | None]:
        """The assistant's token after `out[:, :end]` where a row has no copy
        (`found` < 0), and, when `need_q`, its processed distribution (one-hot
        where a row copies)."""
        run, greedy = self.run, self.run.config.greedy
        processed = self.pipeline(self.model.logits(out, end), *run.context(out, end, self.valid), sampling=not greedy)
        probs = processed.float().softmax(dim=-1) if need_q or not greedy else None
        token = processed.argmax(dim=-1) if greedy else sample(probs, run.generator, logits=False)
        chosen = [f if f >= 0 else t for f, t in zip(found, token.tolist())]
        if need_q and max(found) >= 0:
            copy = torch.tensor(found, device=out.device)
            probs = torch.where((copy >= 0)[:, None], self.one_hot(copy.clamp(min=0)), probs)
        return chosen, probs

    def one_hot(self, tokens: Tensor) -> Tensor:
        """A copy's distribution: its token, certain."""
        return F.one_hot(tokens, self.run.net.num_tokens).float()

    def rollback(self, end: int):
        """The assistant forgets what it read from position `end` on."""
        if exists(self.model):
            self.model.rollback(max(self.model.fed - end, 0), exact=False)

    def adapt(self, n: int, gamma: int):
        """transformers' heuristic schedule: draft more after a round that was
        all accepted, fewer after one that was not."""
        if self.run.config.num_assistant_tokens_schedule == "heuristic" and not self.lookup:
            self.n_draft = min(self.n_draft + 2, MAX_DRAFT) if n == gamma else max(1, self.n_draft - 1)


# --- verify ---


def verify(run: Run, target: ModelRunner, pipeline: Pipeline, valid: Tensor | None, out: Tensor,
           rnd: Round) -> Checked:
    """The model's one forward over the last token and the drafts, and the
    pipeline plain decoding applies, at each checked position (the trace
    records it there)."""
    c, b, positions = run.config, out.shape[0], range(rnd.gamma + 1)
    logits = run.net.logits(target.hidden(out, rnd.cur + rnd.gamma, last=rnd.gamma + 1))
    traces = [run.new_trace(rnd.step + j, logits[:, j]) for j in positions]
    none = [None] * len(positions)
    if c.greedy and not pipeline.scores and not c.trace:  # no stage changes greedy scores
        return Checked(logits, list(logits.unbind(1)), none, logits.argmax(dim=-1), traces)
    if not c.greedy and not c.trace and pipeline.row_wise:
        # sampling through stages that read no text (temperature, the filters): every position in one call
        p = pipeline(logits.flatten(0, 1), None).float().softmax(dim=-1).view(b, len(positions), -1).unbind(1)
        return Checked(logits, None, list(p), None, traces)
    processed = [pipeline(logits[:, j], *run.context(out, rnd.cur + j, valid), traces[j], sampling=not c.greedy)
                 for j in positions]
    p = [pr.float().softmax(dim=-1) for pr in processed] if not c.greedy or c.trace else none
    choice = torch.stack([pr.argmax(dim=-1) for pr in processed], dim=1) if c.greedy else None
    return Checked(logits, processed, p, choice, traces)


# --- accept ---


def accept(run: Run, rnd: Round, checked: Checked, finished: Tensor) -> Verdict:
    """The accept/reject rule (Leviathan et al. 2023, arXiv:2211.17192;
    Chen et al. 2023, arXiv:2302.01318), on the model's distribution p and
    the drafter's q after the same pipeline.

    Greedy: a draft is accepted when it is the model's own token, and the
    token after the accepted ones is the model's: the text is token for token
    the model's greedy text. Sampling: a draft d is accepted with probability
    min(1, p(d) / q(d)); at the first rejection the token is drawn from the
    residual max(0, p - q), renormalised; when every draft is accepted, one
    more is drawn from p. Each token then has exactly the distribution p.

    The batch advances by its rows' shortest accepted prefix (a row stopped
    at EOS holds none back); at that position a row that accepted its draft
    keeps it, the others take the token drawn there. Every token still has
    the distribution p: a row's stop point only decides where its next round
    of drafting begins."""
    c, p, q, drafts, gamma = run.config, checked.p, rnd.q, rnd.drafts, rnd.gamma
    model_p = draft_p = None
    if not c.greedy or c.trace:
        model_p, draft_p = chances(p[:gamma], drafts), chances(q, drafts)
    accepted = torch.ones_like(drafts, dtype=torch.bool)
    if c.greedy:
        accepted = drafts == checked.choice[:, :gamma]
    elif gamma:
        u = torch.rand(drafts.shape, device=drafts.device, generator=run.generator)
        accepted = u * draft_p < model_p  # u < p / q, without dividing
    n_row = torch.where(finished, gamma, accepted.long().cumprod(dim=1).sum(dim=1))
    n = int(n_row.min())
    if c.greedy:
        replacement = checked.choice[:, n]
    elif n < gamma:  # some row rejected the draft at n
        residual = (p[n] - q[n]).clamp(min=0)
        residual = torch.where(residual.sum(dim=-1, keepdim=True) <= 0, p[n], residual)  # p = q: nothing to reject
        replacement = sample(residual / residual.sum(dim=-1, keepdim=True), run.generator, logits=False)
    else:
        replacement = sample(p[n], run.generator, logits=False)
    last = torch.where(n_row > n, drafts[:, n], replacement) if n < gamma else replacement
    emitted = torch.cat((drafts[:, :n], last[:, None]), dim=1)
    return Verdict(accepted, n_row, n, replacement, emitted, model_p, draft_p)


def chances(dists: list[Tensor], tokens: Tensor) -> Tensor:
    """(b, gamma): the probability `dists[j]` gives `tokens[:, j]`."""
    if not dists:
        return torch.ones(tokens.shape, device=tokens.device)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return torch.stack([d[rows, tokens[:, j]] for j, d in enumerate(dists)], dim=1)


# --- emit ---


def emit(run: Run, out: Tensor, rnd: Round, checked: Checked, verdict: Verdict, finished: Tensor,
         stats: SpeculativeStats) -> Generator[Step, None, Tensor]:
    """Yield the round's tokens, one step each, with pad_value after a row's
    EOS and, traced, what the round did; return which rows have stopped."""
    t, n, eos = run.tokens.shape[1], verdict.n, run.config.eos_token
    about = round_trace(rnd, verdict, stats) if run.config.trace else None
    for j in range(n + 1):
        cur, token = rnd.cur + j, verdict.emitted[:, j]
        if exists(eos):
            token = token.masked_fill(finished, run.pad)
            finished = finished | run.is_eos(token)
        out[:, cur] = token
        trace = checked.traces[j]
        if trace:
            trace.choose(token, checked.logits[:, j], checked.processed[j])
            trace.speculative = dict(about, position=j, emitted=n + 1, acceptance_rate=stats.acceptance_rate,
                                     tokens_per_forward=(stats.emitted + j + 1) / stats.target_forwards)
        yield Step(rnd.step + j, token, out[:, t:cur + 1], finished, trace, stats=stats)
    stats.emitted += n + 1
    out[:, rnd.cur + n + 1:rnd.cur + rnd.gamma] = run.pad  # rejected drafts leave nothing behind
    return finished


def round_trace(rnd: Round, verdict: Verdict, stats: SpeculativeStats) -> dict:
    """What the trace shows of a round, beside each token it emitted."""
    return dict(round=stats.rounds - 1, drafted=rnd.drafts, draft_probs=verdict.draft_p, model_probs=verdict.model_p,
                accepted=verdict.accepted, n_accepted=verdict.n_row, replacement=verdict.replacement,
                copied=rnd.copied, sources=rnd.sources, drafter=rnd.drafter)


# --- the loop ---


def steps(run: Run) -> Iterator[Step]:
    """Rounds of draft, verify, accept and emit, until `seq_len` tokens or
    every row's EOS."""
    b, t = run.tokens.shape
    out = run.new_output()
    stats = run.stats = SpeculativeStats()
    if run.seq_len == 0:
        return
    c = run.config
    target, pipeline = run.runner(run.net, extra=MAX_DRAFT + 1), run.pipeline()
    valid = run.valid(t + run.seq_len)
    drafter = Drafter(run, valid)
    need_q = not c.greedy or c.trace  # the drafter's distributions: sampling's test reads them, the trace shows them
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)
    cur, step = t, 0
    while step < run.seq_len:
        room = run.seq_len - step - 1  # never draft past the end: the last emitted token comes from the model
        rnd = Round(cur, step, *drafter.propose(out, cur, room, finished, need_q), drafter.name)
        out[:, cur:cur + rnd.gamma] = rnd.drafts
        checked = verify(run, target, pipeline, valid, out, rnd)
        verdict = accept(run, rnd, checked, finished)
        stats.count(rnd.gamma, verdict.n_row, rnd.copied, finished)
        # both caches forget the rejected positions
        target.rollback(rnd.gamma - verdict.n)
        drafter.rollback(cur + verdict.n)
        finished = yield from emit(run, out, rnd, checked, verdict, finished, stats)
        cur, step = cur + verdict.n + 1, step + verdict.n + 1
        if exists(c.eos_token) and bool(finished.all()):
            break
        drafter.adapt(verdict.n, rnd.gamma)
