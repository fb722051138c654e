"""Training throughput of the seed's example config, axw beside x-transformers.

    python benchmarks/train_speed.py [--batch 2] [--steps 4] [--device cpu]

Both models: num_tokens=256, max_seq_len=1024, Decoder(dim=512, depth=6,
heads=8), trained with Adam on 1024 positions per row. The
two are timed alternately, step by step, so drift in the machine hits both.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def build(kind: str):
    if kind == "axw":
        from axw import AutoregressiveWrapper, Decoder, TransformerWrapper
    else:
        from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
    net = TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=6, heads=8))
    return AutoregressiveWrapper(net)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    args = parser.parse_args()

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
