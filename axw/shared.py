"""Shared forwards: the runs of one network that are in flight at the same time, each in its own thread, decode
their next tokens in one forward (continuous batching, as Orca (Yu et al. 2022, OSDI) and vLLM serve). A run
joins at a token boundary and leaves when it ends; everything but the network's forward stays its own: settings,
processor pipeline, random numbers, trace, KV cache. Each run's rows get the bits they get alone
(`TransformerWrapper.decode_rows`), so its tokens and trace are the ones it gets alone.

    shared = SharedForwards(model.net)   # from now on, every run's one-token steps go through it
    ...
    shared.close()                       # back to each run on its own

Only one-position steps join (sampling, greedy, contrastive decoding's expert and amateur, speculative decoding's
drafts, beam search's beams); a prompt, a speculative verify and contrastive search's candidates run alone.
Whoever arrives first runs the forward (no thread of its own): it waits a moment for the other runs in flight (at
most `wait_s`, or half the last forward's time when that is longer), then runs every step waiting, then hands the next forward to the first run that came in meanwhile.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import KVCache


# network -> its shared forwards (weakly: a network dropped is forgotten; a copy of one is not shared)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_forwards(net) -> SharedForwards | None:
    """The shared forwards of `net` (a TransformerWrapper), or None when its runs decode on their own."""
    return _SHARED.get(net) if _SHARED else None


@dataclass
class _Step:
    """One run's request: its new tokens (b, 1) through its cache; the hidden states (b, 1, dim) come back."""

    tokens: Tensor
    cache: KVCache
    hidden: Tensor | None = None
    error: BaseException | None = None
    done: bool = False
    lead: bool = False  # this request's thread runs the next forward


@dataclass
class SharedStats:
    """What the shared forwards did: forwards run, and the runs' steps they carried."""

    forwards: int = 0
    steps: int = 0
    largest: int = 0  # the most steps one forward carried
    sizes: dict = field(default_factory=dict)  # steps per forward -> how many forwards carried that many

    @property
    def mean_steps(self) -> float:
        return self.steps / max(self.forwards, 1)


class SharedForwards:
    """The forwards of `net`'s runs in flight, shared: see the module's docstring. `max_rows` rows at most in
    one forward; `wait_s`, how long the first run of a forward waits for the other runs in flight. `exact` off:
    each Linear is one product over all the rows (the weights read once a forward, which is what a large model's
    step costs; each run's numbers then equal its own within float error, not bit for bit)."""

    def __init__(self, net, max_rows: int = 64, wait_s: float = 0.004, exact: bool = True):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s!r}")
        if shared_forwards(net) is not None:
            raise ValueError("this network's forwards are shared already")
        self.net, self.max_rows, self.wait_s, self.exact = net, max_rows, wait_s, exact
        self.stats = SharedStats()
        self._cond = threading.Condition()  # a forward done or a run gone: its runs wake
        self._arrived = threading.Condition(self._cond._lock)  # a step came in: whoever gathers the next forward
        self._pending: list[_Step] = []
        self._busy = False
        self._last_s = 0.0  # how long the last forward took
        # the caches of the runs in flight (from their first step until they leave): a forward waits a moment for
        # the steps of those not in it yet
        self._expected: weakref.WeakSet = weakref.WeakSet()
        _SHARED[net] = self

    def close(self):
        """Each run decodes on its own again."""
        if _SHARED.get(self.net) is self:
            del _SHARED[self.net]

    @property
    def members(self) -> int:
        """Runs in flight (from their first step until they end): those a forward waits a moment for."""
        with self._cond:
            return len(self._expected)

    def leave(self, cache: KVCache):
        """A run that used `cache` has ended: the next forward does not wait for it."""
        with self._cond:
            self._expected.discard(cache)
            self._arrived.notify_all()

    def decode(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """`net.decode(tokens, cache)` for tokens (b, 1), in a forward shared with the other runs' steps."""
        if torch.is_grad_enabled() or self.net.training or tokens.shape[0] > self.max_rows:
            return self.net.decode(tokens, cache)
        step = _Step(tokens, cache)
        with self._cond:
            self._pending.append(step)
            self._expected.add(cache)
            self._arrived.notify_all()
            while self._busy and not step.done and not step.lead:
                self._cond.wait()
            if not step.done:
                self._busy = True
                batch = self._gather()
        if not step.done:
            self._run(batch)
        if step.error is not None:
            raise step.error
        return step.hidden

    def _gather(self) -> list[_Step]:
        """(holding the lock) The steps of the next forward: the pending ones, after waiting a moment for the
        runs of the last forward that have not come yet."""
        # a forward that costs more is worth waiting longer for: up to half the last one's time
        deadline = time.monotonic() + max(self.wait_s, 0.5 * self._last_s)
        while True:
            waiting = {id(s.cache) for s in self._pending}
            missing = [c for c in self._expected if id(c) not in waiting]
            left = deadline - time.monotonic()
            if not missing or left <= 0 or self._rows(self._pending) >= self.max_rows:
                break
            self._arrived.wait(left)
        batch, rows = [], 0
        for s in list(self._pending):
            if rows + s.tokens.shape[0] > self.max_rows:
                break
            batch.append(s)
            rows += s.tokens.shape[0]
        del self._pending[:len(batch)]
        return batch

    @staticmethod
    def _rows(steps: list[_Step]) -> int:
        return sum(s.tokens.shape[0] for s in steps)

    def _run(self, batch: list[_Step]):
        """Run the forward of `batch`, then wake its runs and hand the next forward on."""
        began = time.perf_counter()
        try:
            with torch.no_grad():
                if len(batch) == 1:
                    hidden = [self.net.decode(batch[0].tokens, batch[0].cache)]
                else:
                    hidden = self.net.decode_rows([s.tokens for s in batch], [s.cache for s in batch], self.exact)
            for s, h in zip(batch, hidden):
                s.hidden = h
        except BaseException as e:  # every run of the forward sees its failure
            for s in batch:
                s.error = e
        with self._cond:
            self._last_s = time.perf_counter() - began
            self._count(len(batch))
            for s in batch:
                s.done = True
            if self._pending:
                self._pending[0].lead = True
            else:
                self._busy = False
            self._cond.notify_all()

    def _count(self, n: int):
        stats = self.stats
        stats.forwards += 1
        stats.steps += n
        stats.largest = max(stats.largest, n)
        stats.sizes[n] = stats.sizes.get(n, 0) + 1
