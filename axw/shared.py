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
Whoever arrives first runs the forward (no thread of its own): it waits for the other runs in flight while
they are on their way, then runs every step waiting, then hands the next forward to the first run that came in
meanwhile. A run is on its way for as long as it usually takes between its forwards (its own pace, measured), so
a forward waits for runs busy with their own work between tokens but not for one whose reader has paused; never
longer than `wait_s` or half the last forward's time, whichever is longer. With `alone=n`, while no more than
n runs are in flight each decodes on its own at once (two runs on two cores overlap one's forward with the
other's work between tokens, which one shared forward would serialise); beyond n, they share.

Runs with no reader of their own between tokens (a worker process's) can take turns instead (`Lockstep`): one
run's own work at a time, and a forward once every run is waiting for its step, so each forward carries them all;
after it, the draws of runs alike are done together (`drawing`), as a batch's rows are.

    turns = Lockstep()
    with turns.member():                 # in each run's thread
        ...
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import KVCache


# network -> its shared forwards (weakly: a network dropped is forgotten; a copy of one is not shared)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_forwards(net) -> SharedForwards | None:
    """The shared forwards of `net` (a TransformerWrapper), or None when its runs decode on their own."""
    return _SHARED.get(net) if _SHARED else None


@dataclass(eq=False)  # a step is itself: compared by identity
class _Step:
    """One run's request: its new tokens (b, 1) through its cache; the hidden states (b, 1, dim) come back."""

    tokens: Tensor
    cache: KVCache
    hidden: Tensor | None = None
    error: BaseException | None = None
    done: bool = False
    lead: bool = False  # this request's thread runs the next forward
    # held until the step is done or its thread is to run the next forward: its thread alone waits on it
    wake: threading.Lock = field(default_factory=threading.Lock)
    # held until the run before it in its forward is back (`SharedForwards._next_turn`)
    turn: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Pace:
    """A run's pace: when its last forward was done, and how long it usually takes to come back."""

    done_at: float = 0.0
    away_s: float | None = None  # moving average of the time from a forward done to the run's next step


@dataclass
class SharedStats:
    """What the shared forwards did: forwards run, and the runs' steps they carried."""

    forwards: int = 0
    steps: int = 0
    largest: int = 0  # the most steps one forward carried
    sizes: dict = field(default_factory=dict)  # steps per forward -> how many forwards carried that many
    waited_s: float = 0.0  # how long forwards waited for the steps of runs in flight, in all

    @property
    def mean_steps(self) -> float:
        return self.steps / max(self.forwards, 1)


class SharedForwards:
    """The forwards of `net`'s runs in flight, shared: see the module's docstring. `max_rows` rows at most in
    one forward; `wait_s`, how long the first run of a forward waits for the other runs in flight. `exact` off:
    each Linear is one product over all the rows (the weights read once a forward, which is what a large model's
    step costs; each run's numbers then equal its own within float error, not bit for bit). `alone`: while no
    more runs than that are in flight, each runs its own forwards (0: every step goes through the share)."""

    def __init__(self, net, max_rows: int = 64, wait_s: float = 0.004, exact: bool = True, together: int = 2,
                 turn_s: float = 0.005, alone: int = 0):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s!r}")
        if not isinstance(together, int) or together < 1:
            raise ValueError(f"together must be a positive integer, got {together!r}")
        if not turn_s >= 0:  # a negative timeout would make a run wait for its turn without end
            raise ValueError(f"turn_s must be >= 0, got {turn_s!r}")
        if not isinstance(alone, int) or alone < 0:
            raise ValueError(f"alone must be an integer >= 0, got {alone!r}")
        if shared_forwards(net) is not None:
            raise ValueError("this network's forwards are shared already")
        self.net, self.max_rows, self.wait_s, self.exact = net, max_rows, wait_s, exact
        self.stats = SharedStats()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # every run in flight has a step in: the gatherer wakes
        self._pending: list[_Step] = []
        self._busy = False
        self._gathering = False
        # the runs of the last forward go back to their own work `together` at a time (each waiting `turn_s` at
        # most): two overlap their tensor ops on two cores, but many threads at once trade the interpreter's lock
        # at every op, which costs more than the work
        self.together, self.turn_s = together, turn_s
        # while no more than `alone` runs are in flight, each decodes on its own, at once: two runs on two cores
        # overlap one's forward with the other's work between tokens, which a shared forward would serialise
        self.alone = alone
        self._turns: collections.deque[_Step] = collections.deque()
        self._last_s = 0.0  # how long the last forward took
        # the caches of the runs in flight (from their first step until they leave), with their pace: a forward
        # waits for the steps of those not in it yet
        self._expected: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        _SHARED[net] = self

    def close(self):
        """Each run decodes on its own again."""
        if _SHARED.get(self.net) is self:
            del _SHARED[self.net]

    @property
    def members(self) -> int:
        """Runs in flight (from their first step until they end): those a forward waits a moment for."""
        with self._lock:
            return len(self._expected)

    def leave(self, cache: KVCache):
        """A run that used `cache` has ended: the next forward does not wait for it."""
        with self._lock:
            self._expected.pop(cache, None)
            self._notify_gatherer()
            self._next_turn()

    def _next_turn(self):
        """(holding the lock) A run is back for its next step, or gone: the next run of the last forward goes."""
        if self._turns:
            self._turns.popleft().turn.release()

    def _wait_turn(self, step: _Step):
        """The step's forward is done: its run goes on when the run before it is back (or after `turn_s`)."""
        if step.turn.acquire(timeout=self.turn_s):
            return
        with self._lock:
            try:
                self._turns.remove(step)
                return
            except ValueError:  # released meanwhile
                pass
        step.turn.acquire()

    def decode(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """`net.decode(tokens, cache)` for tokens (b, 1), in a forward shared with the other runs' steps."""
        if torch.is_grad_enabled() or self.net.training or tokens.shape[0] > self.max_rows:
            return self.net.decode(tokens, cache)
        lockstep = getattr(_MEMBER, "lockstep", None)
        if lockstep is not None:  # a run taking turns (`Lockstep`): its step waits for the others'
            return lockstep.decode(self, tokens, cache)
        with self._lock:
            pace = self._expected.get(cache)
            if pace is None:
                pace = self._expected[cache] = _Pace()
            elif pace.done_at:
                away = time.perf_counter() - pace.done_at
                pace.away_s = away if pace.away_s is None else 0.7 * pace.away_s + 0.3 * away
            on_its_own = len(self._expected) <= self.alone and not self._pending and not self._busy
            if not on_its_own:
                step = _Step(tokens, cache)
                step.wake.acquire()
                step.turn.acquire()
                self._pending.append(step)
                self._notify_gatherer()
                if not self._busy:
                    self._busy = step.lead = True
            self._next_turn()
        if on_its_own:
            return self._on_its_own(tokens, cache, pace)
        if not step.lead:
            step.wake.acquire()  # released when the step is done, or its thread is to run the next forward
            if step.done and not step.error:
                self._wait_turn(step)
        if not step.done:
            with self._lock:
                try:
                    batch = self._gather()
                except BaseException:  # interrupted while waiting: the next forward is someone else's
                    if step in self._pending:
                        self._pending.remove(step)
                    self._hand_on()
                    raise
            self._run(batch, step)
        if step.error is not None:
            raise step.error
        return step.hidden

    def _on_its_own(self, tokens: Tensor, cache: KVCache, pace: _Pace) -> Tensor:
        """A step of one of at most `alone` runs in flight: its own forward, in its own thread, now (without
        gradients: `decode` sent those to the network directly)."""
        hidden = self.net.decode(tokens, cache)
        with self._lock:
            pace.done_at = time.perf_counter()
            self._count(1)
        return hidden

    def _missing(self) -> list[_Pace]:
        """(holding the lock) The paces of the runs in flight without a step waiting."""
        waiting = {id(s.cache) for s in self._pending}
        return [pace for cache, pace in self._expected.items() if id(cache) not in waiting]

    def _notify_gatherer(self):
        """(holding the lock) Wake whoever gathers the next forward once every run in flight has a step in."""
        if self._gathering and (not self._missing() or self._rows(self._pending) >= self.max_rows):
            self._arrived.notify()

    def _gather(self) -> list[_Step]:
        """(holding the lock) The steps of the next forward: the pending ones, after waiting for the runs in
        flight that are on their way (each for about as long as it usually takes to come back)."""
        began = time.perf_counter()
        limit = max(self.wait_s, 0.5 * self._last_s)
        self._gathering = True
        try:
            while self._rows(self._pending) < self.max_rows:
                missing = self._missing()
                if not missing:
                    break
                # a run not seen coming back yet: due after wait_s; one that usually takes longer than `limit` to come
                # back (its reader paused, say) is not waited for
                due = [began + self.wait_s if p.away_s is None else p.done_at + 1.5 * p.away_s + 0.001
                       for p in missing if p.away_s is None or p.away_s <= limit]
                left = min(max(due), began + limit) - time.perf_counter() if due else 0.0
                if left <= 0:
                    break
                self._arrived.wait(left)
        finally:
            self._gathering = False
            self.stats.waited_s += time.perf_counter() - began
        batch = self._pending[:self._fitting(self._pending)]
        del self._pending[:len(batch)]
        return batch

    def _fitting(self, steps: list) -> int:
        """How many of `steps`, from the first, fit in one forward (`max_rows` rows)."""
        rows = 0
        for n, step in enumerate(steps):
            rows += step.tokens.shape[0]
            if rows > self.max_rows:
                return n
        return len(steps)

    @staticmethod
    def _rows(steps: list[_Step]) -> int:
        return sum(s.tokens.shape[0] for s in steps)

    def _forward(self, batch: list) -> float:
        """One forward of the steps in `batch` (each with its tokens and cache): each gets its hidden states,
        or the forward's error. Counted in `stats`; returns when it was done."""
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
        with self._lock:
            now = time.perf_counter()
            self._last_s = now - began
            self._count(len(batch))
        return now

    def _run(self, batch: list[_Step], leader: _Step):
        """Run the forward of `batch` (in `leader`'s thread), then wake its runs and hand the next forward on."""
        now = self._forward(batch)
        with self._lock:
            for s in batch:
                s.done = True
                pace = self._expected.get(s.cache)
                if pace is not None:
                    pace.done_at = now
            self._hand_on()
            # the leader goes on at once, the others `together` at a time (`_next_turn`)
            others = [s for s in batch if s is not leader]
            for s in others:
                s.wake.release()
            if not leader.error:
                self._turns.extend(s for s in others if not s.error)
                for _ in range(self.together - 1):  # the leader goes on, and as many others with it
                    self._next_turn()

    def _hand_on(self):
        """(holding the lock) The next forward goes to the first step waiting, if any."""
        if self._pending:
            self._pending[0].lead = True
            self._pending[0].wake.release()
        else:
            self._busy = False

    def _count(self, n: int):
        stats = self.stats
        stats.forwards += 1
        stats.steps += n
        stats.largest = max(stats.largest, n)
        stats.sizes[n] = stats.sizes.get(n, 0) + 1


# the `Lockstep` the thread's run takes turns in, if any
_MEMBER = threading.local()


@dataclass(eq=False)
class _Turn:
    """A member's place in its `Lockstep`: waiting to go on, or a step waiting for its forward."""

    # held until the member may go on (with `lead`: once it has run the forwards of the steps waiting)
    gate: threading.Lock = field(default_factory=threading.Lock)
    state: str = "ready"  # "ready": waiting to go on; "pending": its step waits for a forward; "running": in one
    lead: bool = False
    shared: SharedForwards | None = None
    tokens: Tensor | None = None
    cache: KVCache | None = None
    hidden: Tensor | None = None
    error: BaseException | None = None
    draw: object | None = None  # what the member does with the step's hidden states, done with others' (`drawing`)


@contextmanager
def drawing(draw):
    """Inside, in this thread: the next one-position step of a `Lockstep` member carries `draw`, the work its run
    does with the step's hidden states (its head, pipeline, draw and trace). After the step's forward, the draws
    of the members with equal `draw.key` are done together, in one pass over their rows
    (`type(draw).together(draws, hiddens)`), each getting the numbers it gets alone; a draw left alone is the
    run's own to do (`drawn`)."""
    before = getattr(_MEMBER, "draw", None)
    _MEMBER.draw = draw
    try:
        yield draw
    finally:
        _MEMBER.draw = before


def in_lockstep() -> bool:
    """Whether this thread's run takes turns in a `Lockstep`."""
    return getattr(_MEMBER, "lockstep", None) is not None


def drawn(net):
    """This thread's draw (`drawing`) for `net`, once done with others' at its step; else None."""
    draw = getattr(_MEMBER, "draw", None)
    return draw if draw is not None and draw.net is net and draw.done else None


class Lockstep:
    """Runs of one process that take turns, as one loop steps every sequence of a batch (vLLM's scheduler): one
    run at a time does its own work between forwards (its pipeline, draw, trace, text), and once every run is
    waiting for its next step, their steps run together, one forward for each shared network (`SharedForwards`).
    So every forward carries every run in flight, and the runs' own work never contends for the interpreter's
    lock. Members whose next draws are alike (`drawing`: their head, pipeline, draw and trace) have them done
    together after the forward, in one pass over their rows. A thread's run takes part inside `member()`; its
    one-position steps through a network whose forwards are shared wait for the others' steps, and any other
    forward (a prompt, a verify) runs at once, in its turn. A new run goes on after the runs already waiting to,
    at a token boundary.

    Members must not wait for each other outside their steps (on a lock another member holds, say): a member
    that waits longer than `stall_s` to go on, or for its step's forward, leaves the turns and goes on by itself
    (`stalls` counts them), so nothing waits for ever; its numbers are the same either way."""

    def __init__(self, stall_s: float = 1.0):
        if not stall_s > 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s!r}")
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._going = False  # a member is going on (doing its own work, or running the forwards)
        self._ready: collections.deque[_Turn] = collections.deque()  # members waiting to go on, in order
        self._pending: list[_Turn] = []  # steps waiting for a forward
        self.members = 0  # runs taking turns now
        self.stalls = 0  # members that left the turns after waiting stall_s
        self.drawn_together = 0  # steps whose draw was done with other members' (`drawing`)

    @contextmanager
    def member(self):
        """Inside, the calling thread's run takes turns with the other members' (inside again: no change)."""
        if getattr(_MEMBER, "lockstep", None) is not None:
            yield
            return
        turn = _Turn()
        turn.gate.acquire()
        with self._lock:
            self.members += 1
            self._ready.append(turn)
            self._hand_on()
        _MEMBER.lockstep = self
        try:
            self._wait(turn)
            yield
        finally:
            if getattr(_MEMBER, "lockstep", None) is self:  # not left after a stall
                _MEMBER.lockstep = None
                with self._lock:
                    self.members -= 1
                    self._going = False
                    self._hand_on()

    def decode(self, shared: SharedForwards, tokens: Tensor, cache: KVCache) -> Tensor:
        """A member's step `shared.decode(tokens, cache)`: it waits for the other members' steps, then runs in one
        forward with them."""
        turn = _Turn(state="pending", shared=shared, tokens=tokens, cache=cache, draw=getattr(_MEMBER, "draw", None))
        turn.gate.acquire()
        with self._lock:
            self._pending.append(turn)
            self._going = False
            self._hand_on()
        if not self._wait(turn) and turn.state != "ready":  # left the turns before its forward ran: its step alone
            return shared.decode(tokens, cache)
        # (left the turns waiting to go on after its forward ran: its step is done, its hidden states below)
        if turn.lead:
            self._forwards(turn)
        if turn.error is not None:
            raise turn.error
        return turn.hidden

    def _hand_on(self):
        """(holding the lock) With nobody going on: the first member waiting to go on goes; with none, the first
        step waiting runs the forwards of every step waiting."""
        if self._going:
            return
        if self._ready:
            turn = self._ready.popleft()
        elif self._pending:
            turn = self._pending[0]
            turn.lead = True
        else:
            return
        self._going = True
        turn.state = "go"
        turn.gate.release()

    def _draw_together(self, batch: list[_Turn]):
        """The draws (`drawing`) of the steps just run, those with equal keys together; each draw of a group
        gets the group's failure, if any, as its run would have met it."""
        groups: dict = {}
        for turn in batch:
            if turn.draw is not None and turn.error is None and turn.draw.key is not None:
                groups.setdefault(turn.draw.key, []).append(turn)
        for turns in groups.values():
            if len(turns) < 2:  # alone: its run draws as it always does
                continue
            draws = [turn.draw for turn in turns]
            try:
                type(draws[0]).together(draws, [turn.hidden for turn in turns])
            except BaseException as e:  # noqa: BLE001 - each run raises it in its own thread
                for draw in draws:
                    draw.error = e
            else:
                self.drawn_together += len(draws)

    def _wait(self, turn: _Turn) -> bool:
        """Wait until `turn` may go on: True; or, after `stall_s` (its forward not under way), leave the turns:
        False."""
        while not turn.gate.acquire(timeout=self.stall_s):
            with self._lock:
                if turn.state == "running":  # its forward is under way: it goes on after it
                    continue
                if turn.gate.acquire(blocking=False):  # let go meanwhile
                    return True
                (self._ready if turn.state == "ready" else self._pending).remove(turn)
                self.members -= 1
                self.stalls += 1
                _MEMBER.lockstep = None
                return False
        return True

    def _forwards(self, leader: _Turn):
        """(the leader's thread, going on) The forwards of every step waiting, one for each network (at most its
        `max_rows` rows each); then their members wait to go on, after the leader."""
        with self._lock:
            batch, self._pending = self._pending, []
            for turn in batch:
                turn.state = "running"
        by_net: dict[int, list[_Turn]] = {}
        for turn in batch:
            by_net.setdefault(id(turn.shared), []).append(turn)
        for turns in by_net.values():
            shared = turns[0].shared
            while turns:  # a member's step is never over max_rows (`SharedForwards.decode`): each forward takes one
                cut = shared._fitting(turns)
                shared._forward(turns[:cut])
                turns = turns[cut:]
        self._draw_together(batch)
        with self._lock:
            for turn in batch:
                if turn is not leader:
                    turn.state = "ready"
                    self._ready.append(turn)
