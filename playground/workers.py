"""Worker processes: the runs of the app's own models generate in processes of their own, so a class's runs use
every core. In one process they take turns at one interpreter lock (a small model's step is mostly short tensor
ops), which keeps 8 runs at about 1.2x what one makes; over 2 processes they make about 3.3x
(benchmarks/processes.py). `AXW_WORKERS=n` starts n of them (0, the default: every run in the app's process).

Each worker holds a `Playground` of the same models and runs a run as the app's own process would
(`Playground.start`: the same checks, settings and code; `serve`), its runs taking turns over its shared forwards
(`axw.shared.Lockstep`: every forward carries every run in flight); the app's process checks every request before
it sends one (nothing is sent that it would refuse) and rebuilds the run step by step from the changes the
worker sends, several steps to a message. Every process runs torch on the same number of threads, so a run
gives the same numbers in a worker as in the app's process. A run of a visitor's fine-tuned copy, or of a model
the workers do not hold, stays in the app's process. A worker that dies fails its runs with an error and is
started again.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from axw.shared import Lockstep

from .models import freeze_heap
from .runs import Run
from .sessions import worker_cpus

READY_S = 300  # how long a run waits for a worker still loading its models
RESTART_S = 5.0  # how long a worker that ended while loading waits before it is started again
# a worker process: python -c WORKER_MAIN FD ARGS THREADS CPU (the app's Playground lives in playground.service;
# CPU: the one it keeps to, or "" for any)
WORKER_MAIN = ("import json, sys; from playground.service import serve_worker; "
               "serve_worker(int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), "
               "int(sys.argv[4]) if sys.argv[4] else None)")


class WorkerError(RuntimeError):
    """A run's worker process failed it (it ended, or was not ready in time): the visitor is told, and may
    generate again."""


# a run's state the app's process copies after each step: its lists as changes (`_change`), its rows and beam
# search's probabilities as those added, the rest whole
_LISTS = ("new_ids", "probs", "pieces")
_FIELDS = ("ended", "done")
# how far back from the end of what was sent a list's change is looked for before the list is sent whole
_LOOK_BACK = 8
# a worker sends at most about this many messages a second, its runs' steps in each going together: a run's first
# step goes at once, then its steps every `members / MESSAGES_PER_S` seconds (the app's process renders a stream
# at most every STREAM_INTERVAL_S, less often with many), and its last with its end. A message costs the app's
# process about as much to take in as the steps it carries, so fewer of them leave its core to the workers.
MESSAGES_PER_S = 30


def _change(now: list, sent: list) -> tuple[int, list]:
    """(i, now[i:]) such that sent[:i] + now[i:] == now, i as large as a few comparisons find: a run's lists
    grow at the end (the detokenizer may rewrite its last pieces; beam search's best beam can change anywhere),
    so a step sends what it added, not its whole text again."""
    i = min(len(now), len(sent))
    for _ in range(_LOOK_BACK):
        if now[:i] == sent[:i]:
            return i, now[i:]
        i -= 1
        if i <= 0:
            break
    return 0, list(now)


class _Outbox:
    """A run's steps on their way to the app's process, each as the changes it made to the run's state (which
    `Workers.updates` applies in order), several to a message: the first at once, then every
    `members() / MESSAGES_PER_S` seconds, and what is left at `flush`."""

    def __init__(self, job: int, send, members):
        self.job, self.send, self.members = job, send, members
        self.waiting, self.flushed = [], None
        self.rows = self.beams = 0  # how many of each the app's process has
        self.sent = {f: [] for f in _LISTS}  # the lists as the app's process has them

    def add(self, state: Run):
        changes = {f: _change(getattr(state, f), self.sent[f]) for f in _LISTS}
        self.waiting.append((changes, {f: getattr(state, f) for f in _FIELDS}, state.rows[self.rows:],
                             state.beam_probs[self.beams:] if state.beam_probs is not None else None))
        self.sent = {f: list(getattr(state, f)) for f in _LISTS}
        self.rows, self.beams = len(state.rows), len(state.beam_probs or ())
        now = time.perf_counter()
        if self.flushed is None or now - self.flushed >= max(self.members(), 1) / MESSAGES_PER_S:
            self.flush()
            self.flushed = now

    def flush(self):
        if self.waiting:
            self.send(("steps", self.job, self.waiting))
            self.waiting = []


def keep_to(cpu: int):
    """Keep this process to one CPU: every thread it has now, this one included (a thread started later takes the
    setting of the thread that starts it)."""
    for task in os.listdir("/proc/self/task"):  # each thread has a setting of its own
        try:
            os.sched_setaffinity(int(task), {cpu})
        except OSError:  # ended meanwhile
            pass


def serve(conn: Connection, make_app, threads: int, cpu: int | None = None):
    """A worker's loop (`playground.service.serve_worker` starts it with the app's `Playground`): kept to `cpu`
    when given (`sessions.worker_cpus`), `make_app()` on `threads` torch threads, then a thread per run, each
    sending the changes of the run's state at every step (several steps in one message: `MESSAGES_PER_S`);
    'cancel' stops one, 'stop' (or the app's process gone) ends the loop."""
    if cpu is not None:
        keep_to(cpu)
    import torch

    torch.set_num_threads(threads)
    from .settings import Settings

    app = make_app()
    freeze_heap()
    cancelled, send_lock = set(), threading.Lock()
    # with the models' forwards shared, the runs take turns, every forward carrying all of them (`Lockstep`)
    lockstep = Lockstep() if app.models.shared else None

    def send(message):
        with send_lock:
            conn.send(message)

    def run(job: int, prompt: str, settings: dict, trace: bool):
        with lockstep.member() if lockstep is not None else nullcontext():
            steps(job, prompt, settings, trace)

    def steps(job: int, prompt: str, settings: dict, trace: bool):
        out = _Outbox(job, send, (lambda: lockstep.members) if lockstep is not None else (lambda: 1))
        try:
            _, state, updates, _ = app.start(prompt, Settings(**settings), None, trace=trace)
            try:
                for state in updates:
                    if job in cancelled:
                        break
                    out.add(state)
            finally:
                updates.close()  # a run stopped early leaves the shared forwards at once
            out.flush()
            send(("end", job, None))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the run's page
            out.flush()  # the steps before the failure, as the app's own process would have shown them
            send(("end", job, (type(e).__name__, str(e))))
        finally:
            cancelled.discard(job)

    send(("ready", None, None))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the app's process is gone
            return
        if message[0] == "run":
            threading.Thread(target=run, args=message[1:], daemon=True).start()
        elif message[0] == "cancel":
            cancelled.add(message[1])
        elif message[0] == "stop":
            return


class _Worker:
    def __init__(self, pool: Workers, index: int):
        self.pool, self.index = pool, index
        self.jobs: dict[int, queue.SimpleQueue] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once the worker has loaded its models
        self.start()

    def start(self):
        # a fresh interpreter (not a fork of a process with threads and torch's pools, nor a re-run of the app's
        # main module), on this end of a socket pair
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        cpu = self.pool.cpus[self.index] if self.pool.cpus is not None else ""
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, str(theirs.fileno()), json.dumps(self.pool.args),
             str(self.pool.threads), str(cpu)], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        threading.Thread(target=self._read, daemon=True, name=f"axw-worker-{self.index}").start()

    def _read(self):
        """Hand each message to its run; when the process ends, fail its runs and start it again."""
        conn = self.conn
        while True:
            try:
                kind, job, *rest = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                self.ready.set()
                continue
            with self.lock:
                q = self.jobs.get(job)
            if q is not None:
                q.put((kind, *rest))
        with self.lock:
            lost, self.jobs = self.jobs, {}
            served, self.ready = self.ready.is_set(), threading.Event()  # new runs wait for the worker started again
        for q in lost.values():
            q.put(("end", ("WorkerError", "the worker process generating this text ended: generate again")))
        conn.close()
        self.process.wait()
        if not self.pool.closed:
            if not served:  # it ended while loading: not again at once
                time.sleep(RESTART_S)
            self.start()

    def take(self, job: int) -> queue.SimpleQueue:
        """(holding the pool's lock) Count `job` as this worker's from now on: the next run's choice sees it."""
        q = queue.SimpleQueue()
        with self.lock:
            self.jobs[job] = q
        return q

    def submit(self, job: int, prompt: str, settings, trace: bool):
        """Send a run `take`n for this worker once the worker is ready (at start it loads its models; after a
        failure it starts again)."""
        if not self.ready.wait(READY_S):
            raise WorkerError(f"the worker process was not ready within {READY_S:.0f} s: generate again")
        with self.lock:
            if job not in self.jobs:  # the worker ended meanwhile, and its runs with it
                raise WorkerError("the worker process ended: generate again")
            try:
                self.conn.send(("run", job, prompt, asdict(settings), trace))
            except OSError:
                raise WorkerError("the worker process ended: generate again") from None

    def done(self, job: int, cancel: bool):
        with self.lock:
            self.jobs.pop(job, None)
            if cancel:
                try:
                    self.conn.send(("cancel", job))
                except OSError:  # gone: nothing runs there to stop
                    pass

    def load(self) -> int:
        with self.lock:
            return len(self.jobs)


class Workers:
    """`n` worker processes holding a `Playground` built from `args` (its constructor's arguments), torch on
    `threads` threads in each (by default as many as in this process, so a run's numbers are the same here and
    there)."""

    def __init__(self, n: int, args: dict, threads: int | None = None):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the workers must be a positive number, got {n!r}")
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        self.args, self.threads, self.closed = dict(args), threads, False
        self.cpus = worker_cpus(n, threads)  # the CPU each keeps to, or None
        self._ids = itertools.count(1)
        self._choosing = threading.Lock()
        self.workers = [_Worker(self, i) for i in range(n)]

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether every worker has loaded its models (within `timeout` seconds)."""
        return all(w.ready.wait(timeout) for w in self.workers)

    def close(self):
        self.closed = True
        for w in self.workers:
            try:
                w.conn.send(("stop",))
            except OSError:
                pass
            try:
                w.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()

    def updates(self, run: Run, prompt: str, settings, trace: bool = True):
        """`run` (made and checked by the app's process) grown from a worker's run of `prompt` and `settings`,
        yielded after each step, as `runs.start`'s updates yield it; closing the generator stops the worker's run."""
        with self._choosing:  # visitors pressing together: each choice counts the runs chosen before it
            worker = min(self.workers, key=lambda w: (not w.ready.is_set(), w.load()))  # the least busy ready one
            job = next(self._ids)
            q = worker.take(job)
        try:
            worker.submit(job, prompt, settings, trace)
        except BaseException:
            worker.done(job, cancel=False)  # never sent: nothing to stop there
            raise
        finished = False
        try:
            while True:
                kind, *rest = q.get()
                if kind == "end":
                    finished = True
                    error = rest[0]
                    if error is not None:
                        name, text = error
                        # a check of the worker's: the visitor's request; anything else: the worker failed it
                        raise (ValueError if name == "ValueError" else WorkerError)(text)
                    return
                for changes, state, rows, beam_probs in rest[0]:  # the steps of one message, each an update
                    for f, (i, tail) in changes.items():
                        getattr(run, f)[i:] = tail  # in place, as a run in this process grows its lists
                    for f, value in state.items():
                        setattr(run, f, value)
                    run.rows.extend(rows)
                    if beam_probs is not None:
                        run.beam_probs.extend(beam_probs)
                    yield run
        finally:
            worker.done(job, cancel=not finished)
