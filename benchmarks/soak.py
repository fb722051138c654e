"""Many visitors at once: the playground under a steady load on loopback.

    python benchmarks/soak.py [--duration 120] [--sessions 16] [--model assets/models/shakespeare]

Starts `python app.py` in its own process, then for `--duration` seconds
`--sessions` gradio_client sessions generate back to back (each its own mix
of strategies, fixed seeds; half through /generate, half through the Generate
tab's own event with every control as the page sends it), while one more visitor fine-tunes after another
(a new session each time, then a generation from its copy, then the
session closes as a browser tab does). Each visitor sends its own address
in X-Forwarded-For (the server trusts it, as on a Space), so the app's
per-visitor share applies to each as it would to real visitors. Every request has
a time limit; the run stops by itself.

With `--shared both` (the default) it runs twice, with the server's shared forwards on and off
(AXW_SHARED_FORWARDS), and reports each. Reports requests done, errors, p50/p95 latency of /generate, whether each
fixed-seed request gave the same text every time, and the server's resident
memory (RSS, sampled every 0.5 s): at start, peak, and the growth from the
first to the second half of the run, which stays near zero when fine-tuned
copies are freed. It passes when nothing failed, every fixed-seed request
gave one text, and the second half's peak memory is within 10% of the
first half's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import playground as pg  # noqa: E402

REQUEST_TIMEOUT_S = 120
# (strategy, settings) each session cycles through; all seeded, so each must give one text throughout
MIX = [
    ("sampling", dict(temperature=0.8, top_p=0.9)),
    ("sampling", dict(temperature=0.0)),
    ("beam search", dict(beams=4)),
    ("contrastive search", dict(penalty_alpha=0.6, contrastive_k=4)),
    ("contrastive decoding", dict(temperature=0.0)),
]
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo!", "First Citizen:\nBefore we proceed any further, hear me speak."]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_server(model: str, amateur: str, port: int, threads: int, budget: float | None,
                 shared: bool = True) -> subprocess.Popen:
    # each simulated visitor names its own address, as the Hub's proxy does for a Space's visitors
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", AXW_TRUST_PROXY="1",
               AXW_SHARED_FORWARDS="1" if shared else "0")
    if budget is not None:
        env["AXW_VISITOR_BUDGET_S"] = str(budget)
    command = [sys.executable, str(ROOT / "app.py"), "--model", model, "--amateur", amateur, "--port", str(port),
               "--threads", str(threads)]
    # the server's log goes to a file: a pipe nobody reads during the run would fill and stall the server
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    began = time.monotonic()
    while time.monotonic() - began < 180:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"app.py exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("app.py did not answer within 180 s")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: list[float] = []
        self.errors: list[str] = []
        self.texts: dict[tuple, set] = {}
        self.finetunes = 0
        self.finetune_s: list[float] = []
        self.flood_served = 0
        self.flood_refused = 0

    def error(self, where: str, e: BaseException):
        with self.lock:
            self.errors.append(f"{where}: {type(e).__name__}: {str(e)[:200]}")


def visitor(url: str, index: int, deadline: float, new_tokens: int, tally: Tally, page: bool = False):
    """A session generating back to back through /generate, or (`page`) through the Generate tab's own event,
    with every control's value as the page sends them; the text it keeps is then the output's HTML."""
    from gradio_client import Client

    from playground.settings import Settings
    from playground.views.settings import ui_values

    client = Client(url, verbose=False, headers={"X-Forwarded-For": f"198.51.100.{index + 1}"})
    i = index
    while time.monotonic() < deadline:
        strategy, settings = MIX[i % len(MIX)]
        prompt = PROMPTS[i % len(PROMPTS)]
        seed = i % 3
        i += 1
        began = time.perf_counter()
        try:
            if page:
                values = ui_values(prompt, Settings(strategy=strategy, max_new_tokens=new_tokens, seed=seed,
                                                    **settings))
                text, *_ = client.submit(*values, api_name="/generate_controls").result(timeout=REQUEST_TIMEOUT_S)
            else:
                text, *_ = client.submit(prompt=prompt, strategy=strategy, max_new_tokens=new_tokens, seed=seed,
                                         api_name="/generate", **settings).result(timeout=REQUEST_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            tally.error(f"{'page ' * page}session {index} {strategy}", e)
            continue
        with tally.lock:
            tally.latency.append(time.perf_counter() - began)
            tally.texts.setdefault((page, prompt, strategy, str(settings), seed), set()).add(str(text))


def flooder(url: str, index: int, deadline: float, new_tokens: int, tally: Tally):
    """One of several sessions of a single client (one address) asking for long generations back to back; a
    refusal by the per-visitor share is expected, and retried after 0.2 s."""
    from gradio_client import Client

    client = Client(url, verbose=False, headers={"X-Forwarded-For": "192.0.2.1"})
    while time.monotonic() < deadline:
        try:
            client.submit(prompt=PROMPTS[index % len(PROMPTS)], max_new_tokens=new_tokens, seed=index,
                          api_name="/generate").result(timeout=REQUEST_TIMEOUT_S * 4)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            if "the share each visitor gets" in str(e):
                with tally.lock:
                    tally.flood_refused += 1
                time.sleep(0.2)
            else:
                tally.error(f"flood session {index}", e)
            continue
        with tally.lock:
            tally.flood_served += 1


def leave(url: str, session_hash: str):
    """End the session as a closed browser tab does: its heartbeat stream opens, then drops; the app's unload
    handler frees the session's fine-tuned copy."""
    import httpx

    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session_hash}", timeout=10) as beat:
        next(beat.iter_lines())


def finetuner(url: str, deadline: float, text: str, steps: int, keep_open: bool, tally: Tally):
    from gradio_client import Client

    n = 0
    while time.monotonic() < deadline:
        n += 1  # a new visitor each time: old copies must be let go
        client = Client(url, verbose=False, headers={"X-Forwarded-For": f"203.0.113.{n % 250 + 1}"})
        began = time.perf_counter()
        try:
            report = client.submit(text=text, steps=steps, learning_rate=1e-3, batch_size=8, context_length=64,
                                   mask_prob=0.15, api_name="/finetune").result(timeout=REQUEST_TIMEOUT_S * 3)
            assert report["steps"] == steps, report
            client.submit(prompt="ROMEO:", use_finetuned=True, max_new_tokens=16,
                          api_name="/generate").result(timeout=REQUEST_TIMEOUT_S)
            if not keep_open:
                leave(url, client.session_hash)
        except Exception as e:  # noqa: BLE001
            tally.error("fine-tune", e)
            continue
        with tally.lock:
            tally.finetunes += 1
            tally.finetune_s.append(time.perf_counter() - began)


def sampler(pid: int, stop: threading.Event, samples: list):
    began = time.monotonic()
    while not stop.is_set():
        try:
            samples.append((time.monotonic() - began, rss_bytes(pid)))
        except (OSError, RuntimeError):
            return
        stop.wait(0.5)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def parse_args():
    default = pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL)
    if not (ROOT / default).is_dir() and not Path(default).is_dir():
        default = pg.DEFAULT_AMATEUR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default)
    parser.add_argument("--amateur", default=pg.model_path("AXW_AMATEUR", pg.DEFAULT_AMATEUR))
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--sessions", type=int, default=16, help="concurrent generating sessions")
    parser.add_argument("--new", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--finetune-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--keep-open", action="store_true",
                        help="fine-tuning sessions never close, as API clients leave them (the session cap frees)")
    parser.add_argument("--flood", type=int, default=0,
                        help="sessions of one more client, all from one address, asking for long generations")
    parser.add_argument("--flood-tokens", type=int, default=256)
    parser.add_argument("--shared", choices=["both", "on", "off"], default="both",
                        help="the server's shared forwards (AXW_SHARED_FORWARDS): on, off, or one run of each")
    parser.add_argument("--budget", type=float, default=None,
                        help="the server's AXW_VISITOR_BUDGET_S (seconds per visitor per window; 0 = no limit)")
    return parser.parse_args()


def load(args, shared: bool = True):
    """The server under the sessions' load for args.duration seconds: (tally, memory samples, wall seconds,
    workers still running, whether the server was still serving)."""
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text()[:50_000]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_server(args.model, args.amateur, port, args.threads, args.budget, shared)
    tally, samples, stop = Tally(), [], threading.Event()
    try:
        from gradio_client import Client

        Client(url, verbose=False).predict(prompt="ROMEO:", max_new_tokens=4, api_name="/generate")  # warm-up
        memory = threading.Thread(target=sampler, args=(proc.pid, stop, samples), daemon=True)
        memory.start()
        deadline = time.monotonic() + args.duration
        # every other session presses the Generate tab's button (its event) rather than calling /generate
        workers = [threading.Thread(target=visitor, args=(url, i, deadline, args.new, tally, i % 2 == 1),
                                    daemon=True) for i in range(args.sessions)]
        workers += [threading.Thread(target=flooder, args=(url, i, deadline, args.flood_tokens, tally), daemon=True)
                    for i in range(args.flood)]
        workers.append(threading.Thread(
            target=finetuner, args=(url, deadline, text, args.finetune_steps, args.keep_open, tally), daemon=True))
        began = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:  # each stops by itself at the deadline, after at most one more request
            w.join(timeout=args.duration + REQUEST_TIMEOUT_S * 4)
        wall = time.monotonic() - began
        alive = sum(w.is_alive() for w in workers)
        stop.set()
        memory.join(timeout=5)
        serving = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return tally, samples, wall, alive, serving


def report(args, shared, tally, samples, wall, alive, serving) -> bool:
    """Print the figures; whether the soak passed (no errors, no varied text, nothing left running, the server
    alive, memory levelled off after the warm-up)."""
    lat = tally.latency
    mib = [rss / 2**20 for _, rss in samples]
    half = len(mib) // 2
    varied = [key for key, texts in tally.texts.items() if len(texts) > 1]
    print(f"model {args.model}, amateur {args.amateur}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, server torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    env = dict(os.environ, AXW_SHARED_FORWARDS="1" if shared else "0")
    print(f"shared forwards {'on' if shared else 'off'}, {pg.sessions.concurrency(env)} generations at once")
    print(f"{args.sessions} generating sessions + 1 fine-tuning visitor for {args.duration:.0f} s "
          f"(wall {wall:.0f} s), {args.new} new tokens per generation")
    print(f"generations done (/generate and the Generate tab's event): {len(lat)} ({len(lat) / wall:.2f}/s); "
          f"errors: {len(tally.errors)}; still running at the end: {alive}; server alive: {serving}")
    if lat:
        print(f"latency p50 {statistics.median(lat):.2f} s, p95 {percentile(lat, 0.95):.2f} s, "
              f"max {max(lat):.2f} s")
    print(f"fine-tunes done ({args.finetune_steps} steps, each by a new session, then a generation from it, "
          f"then the session {'is left open' if args.keep_open else 'closes'}): "
          f"{tally.finetunes}" + (f", median {statistics.median(tally.finetune_s):.1f} s" if tally.finetune_s else ""))
    if args.flood:
        budget = args.budget if args.budget is not None else os.environ.get("AXW_VISITOR_BUDGET_S",
                                                                            pg.VISITOR_BUDGET_S)
        print(f"flooding client ({args.flood} sessions from one address, {args.flood_tokens} new tokens each, "
              f"visitor budget {budget} s per {pg.VISITOR_WINDOW_S:.0f} s): {tally.flood_served} served, "
              f"{tally.flood_refused} refused")
    print(f"fixed-seed requests: {len(tally.texts)} distinct, {len(varied)} gave more than one text")
    if mib:
        quarters = [mib[len(mib) * q // 4: len(mib) * (q + 1) // 4] or mib for q in range(4)]
        print(f"server RSS: start {mib[0]:.0f} MiB, peak {max(mib):.0f} MiB, end {mib[-1]:.0f} MiB; "
              f"peak of first half {max(mib[:half] or mib):.0f} MiB, of second half {max(mib[half:]):.0f} MiB; "
              f"median by quarter {' / '.join(f'{statistics.median(q):.0f}' for q in quarters)} MiB "
              f"({len(mib)} samples)")
    for e in tally.errors[:10]:
        print("  error:", e)
    # after the warm-up (first half) memory must level off: 10% headroom for the allocator's own growth
    steady = bool(mib) and max(mib[half:]) <= 1.1 * max(mib[:half] or mib)
    ok = not tally.errors and not varied and not alive and serving and steady
    print("PASS" if ok else "FAIL")
    return ok


def main():
    args = parse_args()
    ok = True
    for shared in {"both": (True, False), "on": (True,), "off": (False,)}[args.shared]:
        ok = report(args, shared, *load(args, shared)) and ok
        print()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
