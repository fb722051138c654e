"""The sample tree on the bundled model: N texts of one prompt, sampled in batches (the playground's
`playground.sample_tree.sample_texts`: one forward a step for up to 100 rows, `axw.RowGenerators` giving row i the
draws of seed+i) beside the same N texts one run at a time (as /generate runs each: `playground.runs.start`), in
the same process; and whether the two give the same texts, token for token.

    python benchmarks/sample_tree.py [--n 100] [--tokens 64] [--repeats 3] [--threads 0]

Prints the machine (CPU, cores, torch, threads) and its load average before and after. Batched: the median of
`--repeats` runs, the prefix tree and its JSON included; one by one: a single pass (it is the slow side).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from axw import AutoregressiveWrapper  # noqa: E402
from playground import runs as R  # noqa: E402
from playground.sample_tree import sample_texts, tree_json  # noqa: E402
from playground.settings import Settings  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def batched(model, prompt: str, settings: Settings, n: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    samples = sample_texts(model, prompt, settings, settings.config(model), n)
    tree_json(samples, model.tokenizer, 4)
    return time.perf_counter() - start, samples


def one_by_one(model, prompt: str, settings: Settings, n: int) -> tuple[float, list[list[int]]]:
    start, texts = time.perf_counter(), []
    for seed in range(settings.seed, settings.seed + n):
        s = replace(settings, seed=seed)
        _, updates = R.start(model, prompt, s, s.config(model))
        for run in updates:
            pass
        texts.append(run.new_ids)
    return time.perf_counter() - start, texts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--prompt", default="ROMEO:")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoregressiveWrapper.from_pretrained(ROOT / "assets/models/shakespeare").eval()
    settings = Settings(max_new_tokens=args.tokens, temperature=1.0, seed=0)
    print(f"machine: {machine()}; load average before {os.getloadavg()[0]:.2f}")
    print(f"N = {args.n} texts of up to {args.tokens} tokens, prompt {args.prompt!r}, temperature 1, "
          f"seeds 0..{args.n - 1}")
    batched(model, args.prompt, settings, min(args.n, 8))  # warm-up
    times, samples = [], None
    for _ in range(args.repeats):
        t, samples = batched(model, args.prompt, settings, args.n)
        times.append(t)
    single, texts = one_by_one(model, args.prompt, settings, args.n)
    same = [s["tokens"] for s in samples] == texts
    tokens = sum(len(t) for t in texts)
    fast = statistics.median(times)
    print(f"batched:    {fast:6.2f} s (median of {args.repeats}; {tokens / fast:7.0f} tokens/s)")
    print(f"one by one: {single:6.2f} s ({tokens / single:7.0f} tokens/s)  -> batched {single / fast:.1f}x")
    print(f"the same texts, token for token: {'yes' if same else 'NO'}; distinct texts: {len(set(map(tuple, texts)))}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
