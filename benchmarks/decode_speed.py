"""Decoding speed of the seed's example config: axw beside x-transformers.

    python benchmarks/decode_speed.py [--new 256] [--repeats 3] [--device cpu]

num_tokens=256, max_seq_len=1024, Decoder(dim=512, depth=6, heads=8), random
weights, batch 1, a 16-token prompt, top-k sampling with the KV cache. Both
libraries run alternately in one process; the median of the repeats is
reported. Beam search (4 beams) and contrastive search are timed for axw, and
the machine's ceiling for batch-1 decoding (every weight read once per token
at the measured memory read bandwidth) is printed beside them.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def build(kind: str, device):
    if kind == "axw":
        from axw import AutoregressiveWrapper, Decoder, TransformerWrapper
    else:
        from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=6, heads=8))
    return AutoregressiveWrapper(net).to(device).eval()


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def read_bandwidth(device, nbytes=512 * 2**20, repeats=5) -> float:
    """Bytes per second reading a tensor far larger than the caches (a sum)."""
    x = torch.randn(nbytes // 4, device=device)
    x.sum()
    best = min(timed(lambda: [x.sum() for _ in range(repeats)], device) for _ in range(3))
    return nbytes * repeats / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    ours, theirs = build("axw", device), build("x-transformers", device)
    prompt = torch.randint(0, 256, (1, 16), device=device)
    n = args.new

    runs = {
        "axw top-k": lambda: ours.generate(prompt, n, filter_logits_fn="top_k"),
        "x-transformers top-k": lambda: theirs.generate(prompt, n, filter_logits_fn="top_k"),
        "axw greedy": lambda: ours.generate(prompt, n, temperature=0.0),
        "x-transformers greedy": lambda: theirs.generate(prompt, n, temperature=0.0),
        "axw beam search (4 beams)": lambda: ours.beam_search(prompt, n, beams=4),
        "x-transformers beam search (4 beams)": lambda: theirs.beam_search(prompt, n, beams=4),
        "axw contrastive search (alpha 0.6, k 4)": lambda: ours.generate(prompt, n, penalty_alpha=0.6, contrastive_k=4),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))

    # weights read per decoded token: everything but the embedding tables' unused rows
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    weight_bytes -= (ours.net.token_emb.weight.numel() + ours.net.pos_emb.weight.numel()) * 4
    bandwidth = read_bandwidth(device)
    ceiling = bandwidth / weight_bytes

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}")
    print(f"config: num_tokens=256 max_seq_len=1024 dim=512 depth=6 heads=8, batch 1, prompt 16, {n} new tokens, "
          f"median of {args.repeats}")
    rate = {}
    for name, ts in times.items():
        median = sorted(ts)[len(ts) // 2]
        rate[name] = n / median
        print(f"{name:>40}: {rate[name]:8.1f} tokens/s  ({median * 1000 / n:.2f} ms/token)")
    print(f"{'ceiling (weights / read bandwidth)':>40}: {ceiling:8.1f} tokens/s  "
          f"({weight_bytes / 1e6:.1f} MB per token at {bandwidth / 1e9:.1f} GB/s)")
    print(f"axw / x-transformers, top-k: {rate['axw top-k'] / rate['x-transformers top-k']:.2f}x; "
          f"greedy: {rate['axw greedy'] / rate['x-transformers greedy']:.2f}x; "
          f"beam search: {rate['axw beam search (4 beams)'] / rate['x-transformers beam search (4 beams)']:.2f}x; "
          f"axw top-k at {rate['axw top-k'] / ceiling:.0%} of the ceiling")


if __name__ == "__main__":
    main()
