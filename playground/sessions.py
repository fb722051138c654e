"""Who is asking and what each visitor holds: their fine-tuned copy, the KV caches their what-if branches
continue from, and their fair share of the machine. Everything here is bounded, whoever comes."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager

from axw.utils import check_number

from .caps import (ADDRESS_SESSIONS, CONCURRENCY, FINETUNE_BYTES, KV_STORE_BYTES, MAX_FORKS, MAX_SESSIONS,
                   MAX_TRUSTED_PROXIES, RUNS_PER_WORKER, SESSION_IDLE_S, SHARED_ALONE, SPACE_WORKERS_MAX,
                   VISITOR_BUDGET_S, VISITOR_WINDOW_S)


class Sessions:
    """Each visitor's fine-tune by session id. A browser tab's copy is dropped when the tab closes (app.py's
    unload); API clients never say goodbye, so copies idle for `idle_s` are dropped too, and at most `size` are
    kept holding at most `max_bytes` of weights together (the least recently used goes first): memory stays
    bounded whoever comes. A visitor whose copy was dropped is told why (`why_dropped`)."""

    def __init__(self, size: int = MAX_SESSIONS, idle_s: float = SESSION_IDLE_S, max_bytes: int = FINETUNE_BYTES):
        self.size, self.idle_s, self.max_bytes, self.lock = size, idle_s, max_bytes, threading.Lock()
        self.items: OrderedDict[str, object] = OrderedDict()
        self.used: dict[str, float] = {}
        self.dropped: OrderedDict[str, str] = OrderedDict()  # session -> why its copy went (the latest 4096)

    def put(self, key: str, run):
        with self.lock:
            self._end(key)
            self.dropped.pop(key, None)
            self.items[key], self.used[key] = run, time.monotonic()
            for old in [k for k, t in self.used.items() if k != key and time.monotonic() - t > self.idle_s]:
                self._end(old, f"it was unused for {self.idle_s / 60:.0f} minutes")
            while len(self.items) > 1 and (len(self.items) > self.size or self._bytes() > self.max_bytes):
                limit = (f"the {self.size} most recently used fine-tuned copies" if len(self.items) > self.size
                         else f"the most recently used fine-tuned copies that fit in {self.max_bytes / 1e9:g} GB")
                self._end(next(iter(self.items)), f"this server keeps {limit} (AXW_FINETUNES, AXW_FINETUNE_BYTES), "
                                                  "and other visitors fine-tuned since")

    def get(self, key: str):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                self.used[key] = time.monotonic()
            return self.items.get(key)

    def why_dropped(self, key: str) -> str | None:
        """Why this session's fine-tuned copy is gone, if it had one that was dropped."""
        with self.lock:
            return self.dropped.get(key)

    def drop(self, key: str):
        with self.lock:
            self._end(key)
            self.dropped.pop(key, None)  # the tab closed: nobody is left to tell

    def _bytes(self) -> int:
        return sum(model_bytes(run.model) for run in self.items.values())

    def _end(self, key: str, why: str | None = None):
        run = self.items.pop(key, None)
        self.used.pop(key, None)
        if run is not None:
            run.stop.set()  # a running fine-tune ends after its current step, then its copy is garbage
            if why is not None:
                self.dropped[key] = why
                while len(self.dropped) > 4096:
                    self.dropped.popitem(last=False)


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0


class KVStore:
    """The KV caches what-if branches continue from, by (session, run id): at most `per_session` per visitor and
    `max_bytes` in all, the least recently used dropped first. A dropped cache only costs speed: a branch whose
    cache is gone reads its prefix again."""

    def __init__(self, max_bytes: int = KV_STORE_BYTES, per_session: int = MAX_FORKS + 1):
        self.max_bytes, self.per_session = max_bytes, per_session
        self.items: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def size(cache) -> int:
        return cache.memory_bytes() if cache is not None else 0

    def put(self, session: str, run_id: int, cache):
        if cache is None or self.size(cache) > self.max_bytes:
            return
        with self.lock:
            self.items.pop((session, run_id), None)
            self.items[(session, run_id)] = cache
            mine = [k for k in self.items if k[0] == session]
            for key in mine[: max(0, len(mine) - self.per_session)]:
                del self.items[key]
            while self.total() > self.max_bytes:
                self.items.popitem(last=False)

    def get(self, session: str, run_id: int):
        with self.lock:
            cache = self.items.get((session, run_id))
            if cache is not None:
                self.items.move_to_end((session, run_id))
            return cache

    def drop(self, session: str, keep: set[int] | None = None):
        """Forget a session's caches (all, or those not in `keep`)."""
        with self.lock:
            for key in [k for k in self.items if k[0] == session and (keep is None or k[1] not in keep)]:
                del self.items[key]

    def total(self) -> int:
        return sum(self.size(c) for c in self.items.values())


def env_number(name: str, default: float, low: float, high: float | None = None, integer: bool = False,
               env=os.environ) -> float:
    """A number from the environment variable `name` (`default` when unset or blank), refused with a message
    naming the variable when it is not a number in [low, high]."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
        return check_number(value, name, low, high, integer=integer)
    except ValueError:
        allowed = f"from {low:g}" + (f" to {high:g}" if high is not None else " up")
        raise ValueError(f"{name} must be a {'whole ' if integer else ''}number {allowed}, got {raw!r}") from None


def shared_forwards_on(env=os.environ) -> bool:
    """Whether visitors' runs of one model share its forwards (AXW_SHARED_FORWARDS, 1 unless set to 0)."""
    raw = env.get("AXW_SHARED_FORWARDS", "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"AXW_SHARED_FORWARDS must be 1 (visitors' runs share forwards) or 0, got {raw!r}")
    return raw != "0"


def shared_alone(env=os.environ) -> int:
    """How many runs of one model in flight decode on their own before they share forwards (AXW_SHARED_ALONE)."""
    return env_number("AXW_SHARED_ALONE", SHARED_ALONE, 0, 256, integer=True, env=env)


def workers_wanted(env=os.environ) -> int:
    """AXW_WORKERS: how many worker processes generate the runs of the app's own models (0: none, every run in the
    app's process; `playground.workers`). Unset: `space_workers`."""
    if not env.get("AXW_WORKERS", "").strip():  # only then is the Space's default worked out (it asks CUDA)
        return space_workers(env)
    return env_number("AXW_WORKERS", 0, 0, 64, integer=True, env=env)


def worker_cpus(n: int, threads: int, cpus: list[int] | None = None, env=os.environ) -> list[int] | None:
    """The CPU each of `n` worker processes keeps to (AXW_PIN_WORKERS), or None where the system places them.

    Unset: one CPU each when the CPUs this process may use (`cpus`, default its affinity) are as many as the
    workers and each runs torch on one thread: a worker's runs take turns (`axw.shared.Lockstep`), and each turn
    handed to another thread wakes it, which on a 2-core VM costs about 30 us when it wakes on the other CPU and
    3 us on its own; 8 visitors at once made about 4% more tokens/s so. Where more CPUs are visible (a container
    on a shared host, whose neighbours may keep any of them busy) or a worker runs more threads, none. 1: one
    CPU each wherever there are enough; 0: never."""
    raw = env.get("AXW_PIN_WORKERS", "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"AXW_PIN_WORKERS must be 1 (a CPU each), 0 (the system places them) or unset, got {raw!r}")
    if cpus is None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: the system places them
            return None
    if raw == "0" or threads != 1 or n < 1 or n > len(cpus) or (raw == "" and n != len(cpus)):
        return None
    return list(cpus[:n])


def space_workers(env=os.environ) -> int:
    """The workers a Space gets without AXW_WORKERS: on CPU hardware serving the bundled model (SPACE_ID set, not
    ZeroGPU, no GPU, no AXW_MODEL), one a core (CPU_CORES, the Space's own count; at most SPACE_WORKERS_MAX, none
    on one core), so that a class's runs use every core; elsewhere none. A model of the visitor's choice or on a
    GPU is served best by one process (each worker holds its own copy of the models)."""
    if not env.get("SPACE_ID") or env.get("SPACES_ZERO_GPU", "").strip().lower() in ("true", "1") \
            or env.get("AXW_MODEL", "").strip():
        return 0
    import torch

    if torch.cuda.is_available():
        return 0
    try:
        cores = int(env.get("CPU_CORES", "").strip() or len(os.sched_getaffinity(0)))
    except (ValueError, AttributeError):  # a count written otherwise, or no affinity on this system
        cores = os.cpu_count() or 1
    return min(cores, SPACE_WORKERS_MAX) if cores >= 2 else 0


def concurrency(env=os.environ) -> int:
    """Generations running at once (AXW_CONCURRENCY, default CONCURRENCY, or RUNS_PER_WORKER a worker process with
    AXW_WORKERS); AXW_SHARED_FORWARDS and AXW_SHARED_ALONE are checked too."""
    shared_forwards_on(env)
    shared_alone(env)
    workers = workers_wanted(env)
    return env_number("AXW_CONCURRENCY", RUNS_PER_WORKER * workers if workers else CONCURRENCY, 1, 256,
                      integer=True, env=env)


def trusted_proxies(trusted: int | None = None, trust_proxy: bool | None = None, env=os.environ) -> int:
    """How many proxies in front of the app append to X-Forwarded-For and are trusted to: `trusted` when given
    (`trust_proxy` True is 1, False 0), else AXW_TRUSTED_PROXIES, else AXW_TRUST_PROXY=1 (one), else one on a Space
    (SPACE_ID is set: the Hub's proxy), else none (the connection's address is the visitor)."""
    if trusted is None and trust_proxy is not None:
        trusted = int(bool(trust_proxy))
    if trusted is None:
        raw = env.get("AXW_TRUSTED_PROXIES", "").strip()
        if raw:
            try:
                return check_number(int(raw), "trusted proxies", 0, MAX_TRUSTED_PROXIES, integer=True)
            except ValueError:
                raise ValueError(f"AXW_TRUSTED_PROXIES must be how many proxies append to X-Forwarded-For, a whole "
                                 f"number from 0 (trust no header) to {MAX_TRUSTED_PROXIES}, got {raw!r}") from None
        else:
            trusted = int(env.get("AXW_TRUST_PROXY", "1" if env.get("SPACE_ID") else "0") == "1")
    return check_number(trusted, "trusted proxies", 0, MAX_TRUSTED_PROXIES, integer=True)


def forwarded_client(forwarded_for: list[str], trusted: int) -> str | None:
    """The visitor's address in X-Forwarded-For behind `trusted` proxies, or None to use the connection's.

    Each proxy appends the address it saw, so the entry `trusted` places from the right is the one the outermost
    trusted proxy added: the client as it saw it. Everything left of it is the client's own writing, free to change
    on every request. With fewer entries than trusted proxies the request skipped one, and the leftmost entries
    may again be the client's writing (a flooder reaching an inner proxy with "forged, forged2"): only the rightmost
    was added by the proxy nearest to us, so that one is the visitor. It may be a proxy's address, shared by
    everyone who came that way, which can refuse too much but never hands out a new identity per request."""
    if trusted <= 0 or not forwarded_for:
        return None
    return forwarded_for[-trusted] if len(forwarded_for) >= trusted else forwarded_for[-1]


def address_key(address: str) -> str:
    """The fair share's key for an address: an IPv4 address as it is (an IPv4-mapped IPv6 one as its IPv4 form),
    an IPv6 address as its /64 network. One subscriber line gets a whole /64 and may take any of its 2**64
    addresses, so counting addresses one by one would hand a flooder a new visitor per request. Anything that is
    not an address (a test client's name) is its own key. A port some proxies add is dropped: it changes with
    every connection."""
    text = address.strip()
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port (some proxies add the port, which changes with every connection)
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # a zone index (fe80::1%eth0) names the link, not the host
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def visitor(request, trusted_proxies: int) -> str:
    """Who is asking, for the fair share: the address the request came from, or behind `trusted_proxies` proxies
    (1 on a Space) the address the outermost of them saw (forwarded_client), never what the client wrote; an IPv6
    address counts by its /64 (address_key)."""
    if request is None:
        return ""
    if trusted_proxies > 0:
        headers = request.headers
        # a proxy may append its own header line rather than extend the client's: the lines are one list, in order
        lines = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
        entries = [e.strip() for line in lines if line for e in line.split(",") if e.strip()]
        client = forwarded_client(entries, trusted_proxies)
        if client:
            return address_key(client)
    return address_key(getattr(getattr(request, "client", None), "host", None) or "")


class FairShare:
    """Seconds each visitor has held a compute slot in the last `window_s`. A visitor who has used `budget_s` is
    refused (before any compute) until enough of it ages out, so one client sending request after request, from
    however many sessions, cannot keep everyone else queueing. A request already running always finishes.
    `budget_s` <= 0 turns the limit off."""

    REFUSAL = ("you have used this machine for {spent:.0f} s in the last {window:.0f} s, the share each visitor gets "
               "so everyone has a turn; try again in {wait:.0f} s")

    def __init__(self, budget_s: float = VISITOR_BUDGET_S, window_s: float = VISITOR_WINDOW_S,
                 clock=time.monotonic, refusal: str = REFUSAL):
        self.budget_s, self.window_s, self.clock, self.refusal = budget_s, window_s, clock, refusal
        self.lock = threading.Lock()
        self.spans: dict[str, deque] = {}  # visitor -> (end, seconds) of recent requests, oldest first

    def spent(self, key: str) -> float:
        with self.lock:
            return self._spent(key, self.clock())

    def _spent(self, key: str, now: float) -> float:
        spans = self.spans.get(key)
        while spans and spans[0][0] <= now - self.window_s:
            spans.popleft()
        if spans is not None and not spans:
            del self.spans[key]
        return sum(s for _, s in spans) if spans else 0.0

    def check(self, key: str):
        if self.budget_s <= 0:
            return
        with self.lock:
            now = self.clock()
            spent = self._spent(key, now)
            if spent < self.budget_s:
                return
            # when enough of the oldest spans have aged out to bring the total under budget
            over, wait = spent - self.budget_s, 0.0
            for end, seconds in self.spans[key]:
                over -= seconds
                wait = end + self.window_s - now
                if over < 0:
                    break
        raise ValueError(self.refusal.format(spent=spent, window=self.window_s, wait=max(wait, 1)))

    @contextmanager
    def charge(self, key: str):
        """Count the time spent inside the block against the visitor's share (`check` first)."""
        start = self.clock()
        try:
            yield
        finally:
            if self.budget_s > 0:
                with self.lock:
                    now = self.clock()
                    self.spans.setdefault(key, deque()).append((now, now - start))
                    if len(self.spans) > 1024:  # forget visitors who went quiet
                        for k in list(self.spans):
                            self._spent(k, now)


class ClassShare:
    """The fair share for a class on one server: each browser session has its own `session_s` per window, and
    everyone behind one address together at most `address_s` (several sessions' worth). Thirty students behind a
    school's one address are each served; one session sending request after request is held back at its own
    share; a client that opens a new session per request is held back at its address's ceiling. Either at or
    below 0 is off."""

    ADDRESS_REFUSAL = ("visitors from your network address have used this machine for {spent:.0f} s in the last "
                       "{window:.0f} s, the most one address gets (several times the share each visitor gets) so "
                       "others have a turn; try again in {wait:.0f} s")

    def __init__(self, session_s: float = VISITOR_BUDGET_S, address_s: float | None = None,
                 window_s: float = VISITOR_WINDOW_S, clock=time.monotonic):
        address_s = ADDRESS_SESSIONS * session_s if address_s is None else address_s
        self.sessions = FairShare(session_s, window_s, clock)
        self.addresses = FairShare(address_s, window_s, clock, refusal=self.ADDRESS_REFUSAL)

    def check(self, address: str, session: str):
        """Refuse (ValueError) a session over its share, or an address over its ceiling."""
        self.sessions.check(f"{address} {session}")  # a session counts within its address: ids are the client's
        self.addresses.check(address)

    @contextmanager
    def charge(self, address: str, session: str):
        with self.addresses.charge(address), self.sessions.charge(f"{address} {session}"):
            yield
