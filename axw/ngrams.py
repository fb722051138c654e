"""N-gram tables that draft for speculative decoding at the cost of a lookup:
`NgramIndex`, where each n-gram of the text so far last occurred (prompt
lookup), and `NgramDatastore`, what most often followed each n-gram of a
corpus, stored as safetensors beside a draft model or on the Hub."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from .hub import DATASTORE_NAME, push_folder, resolve


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
