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

The accept/reject rule runs on the model's and the draft's distributions
after the same pipeline (penalties, filters, temperature): a drafted token d
is accepted with probability min(1, p(d) / q(d)); at the first rejection the
token is drawn from max(0, p - q), normalised; when all are accepted, one
more comes from p (when every stage is row-wise, as temperature and the
built-in filters are, the model's checked positions go through the pipeline
in one call). Greedy, a drafted token is accepted when it is the model's
argmax. A batch advances by the fewest tokens any row accepted in a round
(plus the one token every row then draws); every emitted token still has the
model's distribution, since each row's stop point only decides where its next
round of drafting begins.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .generation import Decoding, Step, sample
from .hub import DATASTORE_NAME, push_folder, resolve
from .utils import exists

MAX_DRAFT = 64  # the heuristic schedule never drafts more per round
COPY_CAP = 2  # with copies beside the assistant, a round drafts at most this many times its tokens
# where a draft came from: the assistant model, or copied from the text (prompt lookup) or a datastore
ASSISTANT, TEXT, DATASTORE = 0, 1, 2


class NgramIndex:
    """Where each n-gram of a batch's text last occurred, for n from `max_n`
    down to `min_n` (default `max_n`): for each row, the n tokens before a
    position -> that position, over the text committed so far (`update`).
    Prompt lookup in O(1) a token: `positions` finds, per row, where the
    text went on after the latest earlier occurrence of its longest suffix
    that occurred before."""

    def __init__(self, max_n: int, starts: list[int], min_n: int | None = None):
        self.sizes = range(max_n, (min_n or max_n) - 1, -1)  # longest first
        self.n = max_n
        self.rows: list[list[int]] = [[] for _ in starts]
        self.starts = starts  # each row's first real (not left-pad) position
        self.maps: list[dict] = [{} for _ in starts]  # n-gram (a tuple of any of the sizes) -> next position

    def update(self, seq: Tensor, end: int):
        """Index the text up to `end` (an n-gram counts once its next token is in)."""
        done = len(self.rows[0])
        if end <= done:
            return
        for row, first, found, new in zip(self.rows, self.starts, self.maps, seq[:, done:end].tolist()):
            for token in new:
                q = len(row)
                for n in self.sizes:
                    if q - n >= first:
                        found[tuple(row[q - n:q])] = q
                row.append(token)

    def tails(self) -> list[list[int]]:
        """Each row's last `max_n` committed tokens."""
        return [row[-self.n:] for row in self.rows]

    def positions(self, tails: list[list[int]], end: int) -> list[int | None]:
        """Per row, the position that followed the latest earlier occurrence of
        the longest suffix of `tails` (the row's last tokens before position
        `end`) that occurred before, or None."""
        out = []
        for found, first, tail in zip(self.maps, self.starts, tails):
            out.append(next((found[key] for n in self.sizes
                             if end - n >= first and (key := tuple(tail[-n:])) in found), None))
        return out

    def next_tokens(self, tails: list[list[int]], end: int) -> list[int]:
        """Per row, the token at `positions`, or -1."""
        return [row[q] if q is not None else -1 for row, q in zip(self.rows, self.positions(tails, end))]


DATASTORE_FORMAT = "axw-ngrams"


class NgramDatastore:
    """What most often followed each n-gram of a corpus: a drafter for
    speculative decoding that costs a dictionary lookup a token. For the
    text's last tokens, the longest n-gram held (from `max_n` down to
    `min_n` tokens) gives the next token; built from a model's own greedy
    continuations it drafts what the model would say, and where its corpus
    repeats itself, it is right more often than a small draft model.

    `build` counts a corpus; `save_pretrained`, `push_to_hub` and
    `from_pretrained` store it as safetensors (`ngrams.safetensors` in a
    folder, a draft model's folder among them, or a Hub repo). Pass it as
    `assistant_datastore`."""

    def __init__(self, table: dict[tuple[int, ...], int], vocab_size: int, max_n: int, min_n: int,
                 metadata: dict[str, str] | None = None):
        if not (isinstance(vocab_size, int) and vocab_size > 0):
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if not (isinstance(min_n, int) and isinstance(max_n, int) and 1 <= min_n <= max_n):
            raise ValueError(f"the n-gram sizes must satisfy 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        bad = next((key for key, token in table.items()
                    if not (isinstance(key, tuple) and min_n <= len(key) <= max_n
                            and all(0 <= t < vocab_size for t in (*key, token)))), None)
        if bad is not None:
            raise ValueError(f"the table's n-gram {bad!r} (-> {table[bad]!r}) is not {min_n} to {max_n} token ids "
                             f"followed by one, all in [0, {vocab_size})")
        self.table, self.vocab_size, self.max_n, self.min_n = table, vocab_size, max_n, min_n
        self.sizes = range(max_n, min_n - 1, -1)  # longest first
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (f"NgramDatastore({len(self)} n-grams of {self.min_n} to {self.max_n} tokens, "
                f"vocabulary {self.vocab_size})")

    @classmethod
    def build(cls, sequences: Iterable, vocab_size: int, max_n: int = 4, min_n: int = 2, min_count: int = 1,
              starts: Iterable[int] | None = None, metadata: dict[str, str] | None = None) -> NgramDatastore:
        """Count, in each sequence (1-D tensors or lists of token ids), the
        token after every n-gram of `min_n` to `max_n` tokens, and keep the
        most frequent (the lowest id among equals) where it was seen at least
        `min_count` times. `starts`, per sequence: the first position whose
        token is counted as a next token (say, where a model's continuation
        of a prompt begins); the n-grams before it may be prompt text."""
        if not (isinstance(min_count, int) and min_count >= 1):
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        sequences = [s.tolist() if isinstance(s, Tensor) else list(s) for s in sequences]
        starts = [0] * len(sequences) if starts is None else list(starts)
        if len(starts) != len(sequences):
            raise ValueError(f"got {len(sequences)} sequences but {len(starts)} starts")
        store = cls({}, vocab_size, max_n, min_n, metadata)
        counts: dict[tuple, Counter] = defaultdict(Counter)
        for seq, first in zip(sequences, starts):
            if any(not (isinstance(t, int) and 0 <= t < vocab_size) for t in seq):
                raise ValueError(f"sequences hold token ids outside the vocabulary [0, {vocab_size})")
            for q in range(max(first, min_n), len(seq)):
                for n in store.sizes:
                    if q - n >= 0:
                        counts[tuple(seq[q - n:q])][seq[q]] += 1
        for key, next_counts in counts.items():
            token, count = min(next_counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if count >= min_count:
                store.table[key] = token
        store.metadata.update(min_count=str(min_count))
        return store

    def match(self, tail: list[int]) -> tuple[int, int]:
        """(n, token): the longest n-gram ending `tail` (a row's last tokens)
        that the datastore holds, and the token after it; (0, -1) if none."""
        table = self.table
        return next(((n, table[key]) for n in self.sizes if len(tail) >= n and (key := tuple(tail[-n:])) in table),
                    (0, -1))

    def next_tokens(self, tails: list[list[int]]) -> list[int]:
        """Per row, the token after the longest n-gram ending `tails` (the
        row's last tokens) that the datastore holds, or -1."""
        return [self.match(tail)[1] for tail in tails]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `ngrams.safetensors` into `folder` (made if missing): per
        n-gram size n, a table (entries, n + 1) of the n tokens and the next."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = torch.int16 if self.vocab_size <= 1 << 15 else torch.int32
        by_size: dict[int, list] = defaultdict(list)
        for key, token in self.table.items():
            by_size[len(key)].append((*key, token))
        tensors = {f"ngrams.{n}": torch.tensor(sorted(by_size[n]), dtype=dtype).view(-1, n + 1)
                   for n in self.sizes}
        metadata = {k: str(v) for k, v in self.metadata.items()}
        metadata.update(format=DATASTORE_FORMAT, vocab_size=str(self.vocab_size), max_n=str(self.max_n),
                        min_n=str(self.min_n))
        path = folder / DATASTORE_NAME
        save_file(tensors, path, metadata=metadata)
        return path

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False,
                    commit_message: str = "Upload axw n-gram datastore") -> str:
        """Upload `ngrams.safetensors` to a Hub repo (made if needed), beside
        what it holds, such as the draft model it serves; the commit URL."""
        return push_folder(self.save_pretrained, repo_id, token, private, commit_message)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None,
                        token: str | None = None, cache_dir: str | os.PathLike | None = None) -> NgramDatastore:
        """Load from an `ngrams.safetensors` file, a folder holding one, or a
        Hugging Face Hub repo holding one."""
        from safetensors import safe_open

        path = Path(path_or_repo_id)
        if not path.is_file():
            path = resolve(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir) / DATASTORE_NAME
            if not path.is_file():
                raise ValueError(f"{path_or_repo_id!r} holds no {DATASTORE_NAME}: not an n-gram datastore")
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != DATASTORE_FORMAT:
                raise ValueError(f"{path} is not an axw n-gram datastore (its format is {meta.get('format')!r})")
            try:
                vocab_size, max_n, min_n = int(meta["vocab_size"]), int(meta["max_n"]), int(meta["min_n"])
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}: its metadata lacks the vocabulary size or n-gram sizes ({e})") from e
            table = {}
            for n in range(min_n, max_n + 1):
                rows = f.get_tensor(f"ngrams.{n}").long()
                if rows.ndim != 2 or rows.shape[1] != n + 1:  # the ids' range is checked with the table
                    raise ValueError(f"{path}: its {n}-gram table is malformed")
                rows = rows.tolist()
                table.update(zip(map(tuple, (r[:n] for r in rows)), (r[n] for r in rows)))
        extra = {k: v for k, v in meta.items() if k not in ("format", "vocab_size", "max_n", "min_n")}
        return cls(table, vocab_size, max_n, min_n, extra)


@dataclass
class SpeculativeStats:
    """A speculative run's counts so far: `Decoding.stats`, and the `stats` of
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


def model_drafts(run: Decoding, draft, pipeline, index: NgramIndex | None, store: NgramDatastore | None,
                 starts: list[int], out: Tensor, cur: int, n: int, cap: int, need_q: bool,
                 valid: Tensor | None, stopped: list[bool] | None = None) -> tuple[Tensor, list, Tensor]:
    """Draft up to `n` tokens with the assistant `draft` for positions cur,
    cur + 1, ... of `out`, with copies between them where the text (`index`)
    or the datastore (`store`) knows what comes next, up to `cap` drafts in
    all (the drafts before each assistant step are written to `out` for it to
    read). Without an assistant, the copies alone draft, until a position
    where some row has none. `starts`: each row's first real (not left-pad)
    position; rows `stopped` at EOS draft padding, so they never make the
    others wait for a draft. Returns the drafts (b, gamma), the drafter's
    processed distribution q at each (one-hot for a copy) when `need_q`, and
    where each draft came from (b, gamma): ASSISTANT, TEXT or DATASTORE."""
    c, b, device = run.config, out.shape[0], out.device
    greedy, threshold, vocab = c.greedy, c.assistant_confidence_threshold, run.net.num_tokens
    rows = torch.arange(b, device=device)
    tokens: list[list[int]] = []  # per position, each row's draft
    sources: list[list[int]] = []
    q: list = []
    tails = None
    if exists(index) or exists(store):  # each row's last tokens, none from its left padding
        keep = max(index.n if exists(index) else 0, store.max_n if exists(store) else 0)
        base = max(cur - keep, 0)
        tails = [row[max(first - base, 0):] for row, first in zip(out[:, base:cur].tolist(), starts)]
    written = ran = 0
    while len(tokens) < cap and ran < n:
        j = len(tokens)
        found = index.next_tokens(tails, cur + j) if exists(index) else [-1] * b
        source = [TEXT if f >= 0 else ASSISTANT for f in found]
        if exists(store) and min(found) < 0:
            stored = store.next_tokens(tails)
            source = [DATASTORE if f < 0 <= s else kind for f, s, kind in zip(found, stored, source)]
            found = [f if f >= 0 else s for f, s in zip(found, stored)]
        if stopped is not None:
            found = [run.pad if done else f for f, done in zip(found, stopped)]
        if min(found) >= 0:
            # every row's next token is known: the copies are the drafts, and the assistant does not run
            chosen = found
            if need_q:
                q.append(F.one_hot(torch.tensor(found, device=device), vocab).float())
        elif draft is None:
            break  # no assistant to ask
        else:
            ran += 1
            if written < j:  # the assistant reads the copies before it
                out[:, cur + written:cur + j] = torch.tensor(tokens[written:], device=device).T
            written = j
            processed = pipeline(draft.logits(out, cur + j), *run.context(out, cur + j, valid), sampling=not greedy)
            probs = processed.float().softmax(dim=-1) if need_q or not greedy else None
            token = processed.argmax(dim=-1) if greedy else sample(probs, run.generator, logits=False)
            chosen = [f if f >= 0 else t for f, t in zip(found, token.tolist())]  # rows whose next is known copy
            if need_q:
                if max(found) >= 0:
                    copy = torch.tensor(found, device=device)
                    probs = torch.where((copy >= 0)[:, None], F.one_hot(copy.clamp(min=0), vocab).float(), probs)
                q.append(probs)
        tokens.append(chosen)
        sources.append(source)
        if exists(tails):
            tails = [tail + [t] for tail, t in zip(tails, chosen)]
        # the draft stops once it is unsure of what it proposed (transformers' assistant confidence)
        if threshold > 0 and bool((q[j][rows, torch.tensor(chosen, device=device)] < threshold).any()):
            break
    if not tokens:
        none = torch.empty((b, 0), dtype=torch.long, device=device)
        return none, [], none
    return torch.tensor(tokens, device=device).T, q, torch.tensor(sources, device=device).T


def steps(run: Decoding) -> Iterator[Step]:
    c = run.config
    b, t = run.tokens.shape
    out = run.new_output()
    stats = run.stats = SpeculativeStats()
    if run.seq_len == 0:
        return
    eos, greedy = c.eos_token, c.greedy
    lookup = exists(c.prompt_lookup_num_tokens)
    store = run.datastore
    n_draft = c.prompt_lookup_num_tokens if lookup else c.num_assistant_tokens
    target = run.runner(run.net, extra=MAX_DRAFT + 1)
    draft = run.runner(run.assistant, extra=MAX_DRAFT + 1) if exists(run.assistant) else None
    pipeline, draft_pipeline = run.pipeline(), run.pipeline()
    valid = run.valid(t + run.seq_len)
    finished = torch.zeros(b, dtype=torch.bool, device=out.device)
    rows = torch.arange(b, device=out.device)
    starts = [0] * b if run.seq_start_pos is None else run.seq_start_pos.tolist()
    index = None
    if lookup:  # the longest suffix that occurred before, up to max_matching_ngram_size tokens
        index = NgramIndex(c.max_matching_ngram_size, starts, min_n=1)
    elif c.assistant_lookup_ngram:
        index = NgramIndex(c.assistant_lookup_ngram, starts)
    drafter = "prompt lookup" if lookup else "assistant" if exists(draft) else "datastore"

    cur, step = t, 0
    while step < run.seq_len:
        # never draft past the end: the last emitted token comes from the model
        room = run.seq_len - step - 1
        gamma = min(n_draft, room)

        # --- draft gamma tokens (and, to sample or trace, the drafter's processed distribution q at each) ---
        need_q = not greedy or c.trace
        if exists(index):
            index.update(out, cur)
        if lookup:
            drafts = lookup_drafts(index, out, cur, gamma, run.pad)
            q, source = [None] * gamma, torch.full_like(drafts, TEXT)
        else:
            # copies cost no forward: beside an assistant they do not count towards its tokens
            cap = min(room, COPY_CAP * gamma) if exists(draft) and (exists(index) or exists(store)) else gamma
            stopped = finished.tolist() if exists(eos) and bool(finished.any()) else None
            drafts, q, source = model_drafts(run, draft, draft_pipeline, index, store, starts, out, cur, gamma, cap,
                                             need_q or c.assistant_confidence_threshold > 0, valid, stopped)
            gamma = drafts.shape[1]
        copied = source != ASSISTANT
        out[:, cur:cur + gamma] = drafts

        # --- one forward of the model over the last token and the drafts ---
        hidden = target.hidden(out, cur + gamma, last=gamma + 1)
        model_logits = run.net.logits(hidden)  # (b, gamma + 1, vocab): position cur + j for j = 0..gamma
        stats.target_forwards += 1
        traces = ([run.new_trace(step + j, model_logits[:, j]) for j in range(gamma + 1)] if c.trace
                  else [None] * (gamma + 1))
        plain_argmax = greedy and not pipeline.scores and not c.trace  # no stage changes greedy scores
        if not greedy and not c.trace and pipeline.row_wise:
            # sampling through stages that read no text (temperature, the filters): every position in one call
            processed = pipeline(model_logits.flatten(0, 1), None)
            p = processed.float().softmax(dim=-1).view(b, gamma + 1, -1).unbind(1)
        else:
            if plain_argmax:
                processed_all = model_logits.unbind(1)
            else:
                processed_all = [pipeline(model_logits[:, j], *run.context(out, cur + j, valid), traces[j],
                                          sampling=not greedy) for j in range(gamma + 1)]
            p = [pr.float().softmax(dim=-1) for pr in processed_all] if need_q else [None] * (gamma + 1)
        choice = None
        if greedy:  # the model's own token at each position
            choice = (model_logits.argmax(dim=-1) if plain_argmax
                      else torch.stack([pr.argmax(dim=-1) for pr in processed_all], dim=1))

        # --- accept or reject each drafted token ---
        accepted = torch.ones((b, gamma), dtype=torch.bool, device=out.device)
        model_p = draft_p = accepted.float() if need_q else None
        if gamma:
            if need_q:
                model_p = torch.stack([p[j][rows, drafts[:, j]] for j in range(gamma)], dim=1)
                if not lookup:  # prompt lookup proposes each token with certainty: q(d) = 1
                    draft_p = torch.stack([q[j][rows, drafts[:, j]] for j in range(gamma)], dim=1)
            if greedy:
                accepted = drafts == choice[:, :gamma]
            else:
                u = torch.rand((b, gamma), device=out.device, generator=run.generator)
                accepted = u * draft_p < model_p  # u < p / q, without dividing
        n_row = accepted.long().cumprod(dim=1).sum(dim=1)  # (b,) each row's accepted prefix
        n_row = torch.where(finished, gamma, n_row)  # a stopped row never holds the others back
        n = int(n_row.min())

        # --- the token after the accepted prefix: a drafted one some rows accepted, else the model's own ---
        if greedy:
            replacement = choice[:, n]
        elif n < gamma:
            proposal = F.one_hot(drafts[:, n], p[n].shape[-1]).float() if lookup else q[n]
            residual = (p[n] - proposal).clamp(min=0)
            empty = residual.sum(dim=-1, keepdim=True) <= 0
            residual = torch.where(empty, p[n], residual)
            replacement = sample(residual / residual.sum(dim=-1, keepdim=True), run.generator, logits=False)
        else:
            replacement = sample(p[n], run.generator, logits=False)
        last = torch.where(n_row > n, drafts[:, n], replacement) if n < gamma else replacement
        emitted = torch.cat((drafts[:, :n], last[:, None]), dim=1)  # (b, n + 1)

        stats.rounds += 1
        if exists(eos):  # stopped rows count for nothing
            live_accepted, live_copied = torch.where(finished, 0, n_row), copied & ~finished[:, None]
            stats.drafted += gamma * int((~finished).sum())
        else:
            live_accepted, live_copied = n_row, copied
            stats.drafted += gamma * b
        stats.accepted += int(live_accepted.sum())
        stats.copied += int(live_copied.sum())

        # --- both caches forget the rejected positions ---
        target.rollback(gamma - n)
        if exists(draft):
            draft.rollback(max(draft.fed - (cur + n), 0), exact=False)

        # --- emit, stopping rows at EOS ---
        round_info = None
        if c.trace:
            round_info = dict(round=stats.rounds - 1, drafted=drafts, draft_probs=draft_p, model_probs=model_p,
                              accepted=accepted, n_accepted=n_row, replacement=replacement, copied=copied,
                              sources=source, drafter=drafter)
        for j in range(n + 1):
            token = emitted[:, j]
            if exists(eos):
                token = token.masked_fill(finished, run.pad)
            if exists(eos) or j == n:  # the accepted drafts are in place already
                out[:, cur] = token
            trace = traces[j]
            if trace:
                trace.choose(token, model_logits[:, j], processed_all[j])
                trace.speculative = dict(round_info, position=j, emitted=n + 1,
                                         acceptance_rate=stats.acceptance_rate,
                                         tokens_per_forward=(stats.emitted + j + 1) / stats.target_forwards)
            if exists(eos):
                finished = finished | (token == eos)
            cur, step = cur + 1, step + 1
            yield Step(step - 1, token, out[:, t:cur], finished, trace, stats=stats)
        stats.emitted += n + 1
        out[:, cur:cur + gamma - n - 1] = run.pad  # rejected drafts leave nothing behind
        if exists(eos) and bool(finished.all()):
            break
        if c.num_assistant_tokens_schedule == "heuristic" and not lookup:
            # transformers' heuristic: draft more after a round that was all accepted, fewer after one that was not
            n_draft = min(n_draft + 2, MAX_DRAFT) if n == gamma else max(1, n_draft - 1)
