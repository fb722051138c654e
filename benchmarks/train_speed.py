"""Training throughput of the seed's example config: axw beside x-transformers, axw's trainer on 1 and N ranks.

    python benchmarks/train_speed.py [--batch 2] [--steps 4] [--device cpu] [--ranks 2]

Both models: num_tokens=256, max_seq_len=1024, Decoder(dim=512, depth=6,
heads=8), trained with Adam on 1024 positions per row. The
two are timed alternately, step by step, so drift in the machine hits both.

With `--ranks N` (default 2; 0 skips it), `axw.train.train` (AdamW, clipping)
trains the same config on the same global batch in one process and in N
processes under torchrun (DDP over gloo), one thread each, each rank
reading batch / N rows: tokens per second of the whole batch, median step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(kind: str):
    if kind == "axw":
        from axw import AutoregressiveWrapper, Decoder, TransformerWrapper
    else:
        from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
    net = TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=6, heads=8))
    return AutoregressiveWrapper(net)


def rank_worker(batch: int, steps: int):
    """One process of the ranks comparison (alone, or a rank under torchrun):
    `steps` timed steps of axw's trainer after one warm-up step; rank 0 prints its step times."""
    from axw.train import TrainConfig, current_ranks, process_group, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build("axw")
    ids = torch.randint(0, 256, (200_000,), generator=torch.Generator().manual_seed(0))
    ends = []
    with process_group():
        ranks = current_ranks()
        train(model, ids, None, TrainConfig(steps=steps + 1, batch_size=batch, seq_len=1024, lr=3e-4,
                                            warmup_steps=1, eval_every=0),
              callback=lambda r: ends.append(r["elapsed"]))
    if ranks.is_main:
        times = sorted(b - a for a, b in zip(ends, ends[1:]))
        print("RESULT " + json.dumps({"world": ranks.world, "median_s": times[len(times) // 2]}), flush=True)


def time_ranks(world: int, batch: int, steps: int) -> dict:
    """rank_worker's result on `world` processes (one: a plain process, no torchrun)."""
    script = [str(Path(__file__).resolve()), "--rank-worker", "--batch", str(batch), "--steps", str(steps)]
    launcher = [sys.executable] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*launcher, *script], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def compare_ranks(world: int, batch: int, steps: int, rounds: int):
    """One process, then `world` ranks, `rounds` times in turn, so that drift in the machine hits both."""
    if batch % world:
        raise SystemExit(f"--batch {batch} must be a multiple of --ranks {world}")
    print(f"axw.train, 1 thread per process, global batch {batch} x 1024, {steps} timed steps (median), "
          f"{rounds} round{'s' * (rounds > 1)}, load average {os.getloadavg()[0]:.1f} before:")
    rates = {1: [], world: []}
    for _ in range(rounds):
        for n in (1, world):
            result = time_ranks(n, batch, steps)
            rates[n].append(batch * 1024 / result["median_s"])
            what = "one process" if n == 1 else f"{n} ranks (torchrun, DDP over gloo, {batch // n} rows each)"
            print(f"{what:>48}: {result['median_s'] * 1000:.0f} ms/step, {rates[n][-1]:,.0f} tokens/s", flush=True)
    best = {n: max(r) for n, r in rates.items()}
    print(f"{world} ranks / one process: {best[world] / best[1]:.2f}x (best round of each; "
          f"load average {os.getloadavg()[0]:.1f} after)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--ranks", type=int, default=2, help="processes to compare with one (0: skip)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of the ranks comparison")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-peer", action="store_true", help="only the ranks comparison")
    args = parser.parse_args()
    if args.rank_worker:
        return rank_worker(args.batch, args.steps)
    if not args.skip_peer:
        compare_peer(args)
    if args.ranks > 1:
        compare_ranks(args.ranks, args.batch, args.steps, args.rounds)


def compare_peer(args):

    torch.manual_seed(0)
    models = {kind: build(kind).to(args.device).train() for kind in ("axw", "x-transformers")}
    params = {kind: sum(p.numel() for p in m.parameters()) for kind, m in models.items()}
    opts = {kind: torch.optim.Adam(m.parameters(), lr=3e-4) for kind, m in models.items()}
    # both nets run 1024 positions a step: axw reads seq[:, :-1] of 1025 tokens
    # (the seed's contract); x-transformers now feeds the whole sequence, so it
    # gets 1024 tokens (its absolute positions stop there)
    seq = torch.randint(0, 256, (args.batch, 1025), device=args.device)
    inputs = {"axw": seq, "x-transformers": seq[:, :1024]}
    times = {kind: [] for kind in models}

    def step(kind):
        with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = models[kind](inputs[kind])
        loss.backward()
        opts[kind].step()
        opts[kind].zero_grad(set_to_none=True)
        return loss

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for kind in models:  # warm-up
        step(kind)
    for _ in range(args.steps):
        for kind in models:
            sync()
            start = time.perf_counter()
            step(kind)
            sync()
            times[kind].append(time.perf_counter() - start)

    tokens = args.batch * 1024
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device}{' bf16' if args.bf16 else ''}")
    print(f"config: num_tokens=256 max_seq_len=1024 dim=512 depth=6 heads=8, batch {args.batch}, "
          f"{args.steps} timed steps (median)")
    rates = {}
    for kind in models:
        median = sorted(times[kind])[len(times[kind]) // 2]
        rates[kind] = tokens / median
        print(f"{kind:>15}: {params[kind] / 1e6:.2f}M params, {median * 1000:.0f} ms/step, {rates[kind]:,.0f} tokens/s")
    print(f"axw / x-transformers: {rates['axw'] / rates['x-transformers']:.2f}x")


if __name__ == "__main__":
    main()
