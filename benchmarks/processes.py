"""A class's tokens from one process against several: the playground's runs, in the process, with the model's
forwards shared, against the same runs split over processes.

    python benchmarks/processes.py [--runs 8] [--processes 2] [--seconds 20] [--rounds 2] [--new 96]

Every runner generates texts one after another with the playground's own run (`playground.runs.start`, the
Generate button's path: the bundled model, temperature 0.8, top-p 0.9, the trace on, `--new` tokens a text, each
text its own seed) for `--seconds`, and the tokens of its finished texts are counted. The set-ups:

- one run, torch on its own number of threads (one visitor, as the app serves one today);
- one run, torch on 1 thread;
- `--runs` runs in one process, every step in a forward shared with the others (`SharedForwards`, alone=0);
- `--processes` processes, one run each, torch on 1 thread each;
- `--runs` runs split evenly over `--processes` processes, torch on 1 thread each, the runs of each process
  sharing its forwards;
- the same, the runs of each process taking turns (`Lockstep`, as the app's worker processes run them), so that
  every forward carries every run in flight.

A set-up's figure is all its tokens over the time from the start to the last runner's end. Each process is
started for its turn and loads the model before the clock starts; a turn's processes start together. The
set-ups take turns in shuffled order, `--rounds` times, and the medians are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from class_burst import token_counts  # noqa: E402


def serve(args):
    """One process of a set-up: load, say ready, wait for the start line, run `args.runs` runners for
    `args.seconds`, print the tokens made and the seconds taken."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import playground as pg
    from axw.shared import Lockstep, SharedForwards

    model = pg.ModelCache([args.model]).get(args.model)

    def text(seed: int) -> int:  # the class burst's visitor's run: its prompt and settings
        return token_counts(model, args.new, [seed])[seed]

    text(0)  # warm-up: lazy initialisation, allocator pools
    shared = SharedForwards(model.net, alone=0) if args.runs > 1 else None
    turns = Lockstep() if args.turns else None
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    began = time.perf_counter()
    tokens, ended = [0] * args.runs, [0.0] * args.runs

    def runner(i: int):
        seed = 1000 * (args.first + i)
        while time.perf_counter() - began < args.seconds:
            with turns.member() if turns is not None else contextlib.nullcontext():
                tokens[i] += text(seed)
            seed += 1
        ended[i] = time.perf_counter() - began

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(args.runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"tokens": sum(tokens), "seconds": max(ended),
                      "steps_per_forward": shared.stats.mean_steps if shared else 1.0}), flush=True)


def turn(args, processes: int, runs: int, threads: int, turns: bool = False) -> dict:
    """One set-up, once: `processes` processes of `runs` runners each (taking turns with `turns`); its tokens/s
    and steps per forward."""
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--serve", "--model", args.model, "--new", str(args.new),
         "--seconds", str(args.seconds), "--runs", str(runs), "--threads", str(threads), "--first", str(p * runs)]
        + ["--turns"] * turns,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for p in range(processes)]
    try:
        for proc in procs:  # every process loaded before any starts
            if "ready" not in json.loads(proc.stdout.readline() or "{}"):
                sys.exit("a process ended before it was ready (its error is above)")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        answers = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait()
    return dict(rate=sum(a["tokens"] for a in answers) / max(a["seconds"] for a in answers),
                steps=statistics.mean(a["steps_per_forward"] for a in answers))


def main():
    import playground as pg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL))
    parser.add_argument("--runs", type=int, default=8, help="runs at once in the class set-ups")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new", type=int, default=96)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.runs % args.processes:
        parser.error(f"--runs ({args.runs}) must split evenly over --processes ({args.processes})")
    setups = {
        "one run, torch's own threads": (1, 1, 0),
        "one run, 1 thread": (1, 1, 1),
        f"{args.runs} runs in one process, shared forwards, torch's own threads": (1, args.runs, 0),
        f"{args.processes} processes, one run each, 1 thread each": (args.processes, 1, 1),
        f"{args.runs} runs over {args.processes} processes, shared forwards in each, 1 thread each":
            (args.processes, args.runs // args.processes, 1),
        f"{args.runs} runs over {args.processes} processes, taking turns in each (the app's workers), 1 thread each":
            (args.processes, args.runs // args.processes, 1, True),
    }
    results = {name: [] for name in setups}
    for _ in range(args.rounds):
        order = list(setups)
        random.shuffle(order)
        for name in order:
            results[name].append(turn(args, *setups[name]))
    import torch

    print(f"model {args.model}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads of its own), load average "
          f"{os.getloadavg()[0]:.1f}; {args.new} tokens a text, {args.seconds:g} s a turn, medians of "
          f"{args.rounds} rounds in shuffled turns")
    base = statistics.median(r["rate"] for r in results[next(iter(setups))])
    for name, rs in results.items():
        rates = sorted(r["rate"] for r in rs)
        rate = statistics.median(rates)
        print(f"{name:>88}: {rate:5.0f} tokens/s ({rates[0]:.0f} to {rates[-1]:.0f}), {rate / base:.2f}x one run, "
              f"{statistics.median(r['steps'] for r in rs):.1f} runs a forward")


if __name__ == "__main__":
    main()
