"""Decode step cost of candidate draft shapes beside the bundled expert.

    python scripts/draft_shapes.py [--threads 2] [--rounds 5] [--steps 200]

A decode step is one single-token forward through the KV cache plus the
output layer and an argmax, the work a draft does per proposed token. Each
shape (random weights: the cost does not depend on them) is built with the
expert's vocabulary (2048), context (256) and rotary positions, prefilled with
a 64-token prompt, then stepped `--steps` times; the shapes take turns for
`--rounds` rounds and the median step of all rounds is printed, so a burst of
load from other jobs on the machine moves every shape alike. The expert's
verify cost (one forward of 6 tokens through its cache) is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from axw import AutoregressiveWrapper, Decoder, TransformerWrapper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [  # (dim, depth, heads); (64, 2, 2) is the amateur's shape
    (64, 2, 2), (128, 1, 2), (192, 1, 3), (256, 1, 4), (320, 1, 5), (384, 1, 6), (128, 2, 2), (192, 2, 3),
    (256, 2, 4),
]


def build(dim: int, depth: int, heads: int, num_tokens: int = 2048, max_seq_len: int = 256):
    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len, use_abs_pos_emb=False,
                             attn_layers=Decoder(dim=dim, depth=depth, heads=heads, dim_head=dim // heads,
                                                 rotary_pos_emb=True))
    return AutoregressiveWrapper(net).eval()


@torch.no_grad()
def step_times(model, steps: int, prompt_len: int = 64, new: int = 1) -> list[float]:
    """Seconds of each of `steps` forwards of `new` tokens through a KV cache
    filled with a `prompt_len`-token prompt; each step's argmax is fed back."""
    net = model.net
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, net.num_tokens, (1, prompt_len), generator=g)
    cache = net.new_cache(prompt_len + steps * new + 1)
    hidden = net(prompt, cache=cache, input_not_include_cache=True, return_embeddings=True)
    token = net.logits(hidden[:, -1]).argmax(dim=-1)
    times = []
    for _ in range(steps):
        x = token[:, None].expand(1, new)
        start = time.perf_counter()
        hidden = net(x, cache=cache, input_not_include_cache=True, return_embeddings=True)
        token = net.logits(hidden[:, -1]).argmax(dim=-1)
        times.append(time.perf_counter() - start)
    return times


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    expert = AutoregressiveWrapper.from_pretrained(ROOT / "assets/models/shakespeare")
    runs = {"expert (256, 4, 4)": (expert, 1), "expert verify of 6 tokens": (expert, 6)}
    runs.update({f"draft ({d}, {l}, {h})": (build(d, l, h), 1) for d, l, h in SHAPES})
    for model, new in runs.values():  # warm-up
        step_times(model, 20, new=new)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, new) in runs.items():
            times[name] += step_times(model, args.steps, new=new)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.rounds} x {args.steps} steps")
    print(f"{'model (dim, depth, heads)':<28} {'params':>8} {'step ms':>8}")
    for name, (model, _) in runs.items():
        print(f"{name:<28} {params(model) / 1e6:>7.2f}M {statistics.median(times[name]) * 1e3:>8.3f}")


if __name__ == "__main__":
    main()
