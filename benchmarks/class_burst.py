"""A class at once: one visitor alone, then a burst of visitors pressing Generate together.

    python benchmarks/class_burst.py [--visitors 8] [--new 96] [--repeats 3] [--concurrency N] [--threads N]
                                     [--workers N]

Starts `python app.py` twice on the bundled model, once with shared forwards on (the default) and once with
them off (AXW_SHARED_FORWARDS=0, each visitor's run decoding on its own, as the app did before), and in each:

- alone: one visitor presses Generate (the page's own event, read as the browser reads it: join gradio's queue,
  then its server-sent events); tokens/s from pressing to the last update, and the first update's wait;
- burst: `--visitors` visitors, each its own browser session and address with the page open (its load event
  run), press Generate at the same moment, each with its own seed; the total tokens/s (every visitor's tokens
  over the time until the last one is done) and the slowest visitor's wait.

With `--workers N` the two servers are the app with N worker processes (AXW_WORKERS, `playground.workers`)
and without, shared forwards on in both. Medians over `--repeats`. Each visitor samples at temperature 0.8,
top-p 0.9, `--new` tokens; how many tokens each text has is read from an in-process run with the same settings
and seed (a seeded run gives one text).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import playground as pg  # noqa: E402
import soak  # noqa: E402
from app_speed import Browser, free_port  # noqa: E402

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def start_server(model: str, port: int, shared: bool, concurrency: int, threads: int = 0) -> subprocess.Popen:
    """app.py on `model` (torch on `threads` threads, 0: the app's choice), each visitor's address trusted from
    X-Forwarded-For, no per-visitor share."""
    if concurrency:
        os.environ["AXW_CONCURRENCY"] = str(concurrency)
    return soak.start_server(model, pg.DEFAULT_AMATEUR, port, threads, 0, shared)


def settings(n_new: int, seed: int):
    return pg.Settings(max_new_tokens=n_new, temperature=0.8, top_p=0.9, seed=seed)


def values(n_new: int, seed: int) -> list:
    from playground.views.settings import ui_values

    return ui_values(PROMPT, settings(n_new, seed))


def token_counts(model, n_new: int, seeds: list[int]) -> dict[int, int]:
    """How many tokens each seed's text has (the page shows the same run)."""
    counts = {}
    for seed in seeds:
        s = settings(n_new, seed)
        _, updates = pg.runs.start(model, PROMPT, s, s.config(model))
        for run in updates:
            pass
        counts[seed] = len(run.new_ids)
    return counts


def burst(url: str, seeds: list[int], n_new: int) -> tuple[float, list[float], list[float]]:
    """Every seed's visitor presses Generate at once: (seconds until the last is done, each one's total wait,
    each one's first update)."""
    browsers = [Browser(url) for _ in seeds]
    for i, b in enumerate(browsers):  # each visitor its own address, as students on their own machines
        b.http.headers["X-Forwarded-For"] = f"10.0.{i // 250}.{i % 250 + 1}"
        b.open()  # each has the page open before the class presses Generate
    ready, done, first = threading.Barrier(len(seeds) + 1), [0.0] * len(seeds), [0.0] * len(seeds)

    def visit(i):
        ready.wait()
        first[i], done[i] = browsers[i].run("generate_controls", values(n_new, seeds[i]))

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    ready.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - began, done, first


def measure(model_path: str, model, shared: bool, args, workers: int = 0) -> dict:
    port = free_port()
    os.environ["AXW_WORKERS"] = str(workers)
    proc = start_server(model_path, port, shared, args.concurrency, args.threads)
    url = f"http://127.0.0.1:{port}/"
    alone_seeds, burst_seeds = [1000], list(range(args.visitors))
    counts = token_counts(model, args.new, alone_seeds + burst_seeds)
    try:
        burst(url, alone_seeds, args.new)  # warm-up: the first run, and the first class, of a fresh server
        burst(url, burst_seeds, args.new)
        alone, alone_first, total, slowest = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so a busy moment weighs on both alike
            wall, _, first = burst(url, alone_seeds, args.new)
            alone.append(counts[alone_seeds[0]] / wall)
            alone_first.append(first[0])
            wall, waits, _ = burst(url, burst_seeds, args.new)
            total.append(sum(counts[s] for s in burst_seeds) / wall)
            slowest.append(max(waits))
    finally:
        proc.terminate()
        proc.wait()
    med = statistics.median
    return dict(alone=med(alone), alone_first=med(alone_first), total=med(total), slowest=med(slowest))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL))
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--new", type=int, default=96, help="tokens per generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=0, help="AXW_CONCURRENCY for both servers (0: the app's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both servers (0: the app's choice)")
    parser.add_argument("--workers", type=int, default=0,
                        help="compare the app with this many worker processes (AXW_WORKERS) against none, shared "
                             "forwards on in both, rather than shared forwards on against off")
    args = parser.parse_args()

    import torch

    model = pg.ModelCache([args.model]).get(args.model)
    if args.workers:
        rows = {f"{n} worker processes": measure(args.model, model, True, args, n) for n in (0, args.workers)}
    else:
        rows = {f"shared forwards {'on ' if shared else 'off'}": measure(args.model, model, shared, args)
                for shared in (False, True)}
    print(f"model {args.model}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; medians of {args.repeats}")
    for name, r in rows.items():
        print(f"{name}: one visitor {r['alone']:.0f} tokens/s "
              f"(first update {r['alone_first'] * 1000:.0f} ms); {args.visitors} at once {r['total']:.0f} "
              f"tokens/s in total ({r['total'] / r['alone']:.2f}x one), the slowest waits {r['slowest']:.2f} s")


if __name__ == "__main__":
    main()
