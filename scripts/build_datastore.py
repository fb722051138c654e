"""An n-gram datastore for speculative decoding from a teacher's own
continuations (scripts/teacher_continuations.py), and how often it predicts
the teacher's greedy path on held-out text.

    python scripts/build_datastore.py runs/draft-data/greedy.safetensors [more.safetensors ...] \
        --out assets/models/shakespeare-draft [--max-n 4 --min-n 2 --min-count 2]

Only the teacher's tokens are counted as next tokens: each file's prompts
are cut again from its settings (its metadata) and checked against its rows,
and counting starts where each continuation begins. The prompts come from
the training split, so no held-out text enters the datastore.

Then, on the held-out split (the last 10% of the characters, never read
above): `--prompts` prompts of `--prompt-len` tokens at evenly spaced places,
each continued greedily by the teacher for `--new` tokens (as
scripts/draft_agreement.py's (b)); it prints the share of those tokens the
datastore has an n-gram for (coverage) and the share it predicts (accuracy),
overall and for each n-gram size that answered.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teacher_continuations import prompts as cut_prompts  # noqa: E402  (scripts/ is on a script's path)

from axw import AutoregressiveWrapper, NgramDatastore  # noqa: E402
from axw.data import encode, load_split, read_text, split_text  # noqa: E402


def continuations(paths: list[str], data: str, tokenizer) -> tuple[list[torch.Tensor], list[int], list[str]]:
    """Every row of the files, where each continuation starts, and each file's settings."""
    train_ids = encode(tokenizer, split_text(read_text(data))[0])
    rows, starts, sources = [], [], []
    for path in paths:
        with safe_open(path, "pt") as f:
            ids, meta = f.get_tensor("ids"), f.metadata()
        if meta.get("temperature") != "0.0":
            print(f"note: {path} was sampled at temperature {meta.get('temperature')}, not greedy")
        cut = cut_prompts(train_ids, int(meta["rows"]), [int(n) for n in meta["prompt_lens"].split(",")],
                          int(meta["seed"]))
        for row, prompt in zip(ids, cut):  # a file still being written holds the first rows
            if not torch.equal(row[:len(prompt)], prompt):
                raise SystemExit(f"error: {path}'s rows do not start with the prompts its settings cut: {meta}")
            rows.append(row)
            starts.append(len(prompt))
        sources.append(f"{Path(path).name}: {ids.shape[0]} rows (seed {meta['seed']}, prompts {meta['prompt_lens']})")
    return rows, starts, sources


@torch.no_grad()
def held_out_paths(teacher, heldout_ids: torch.Tensor, prompts: int, prompt_len: int, new: int) -> torch.Tensor:
    starts = torch.linspace(0, heldout_ids.numel() - prompt_len - 1, prompts).long()
    batch = heldout_ids[starts[:, None] + torch.arange(prompt_len)]
    return teacher.generate(batch, new, temperature=0.0)


def agreement(store: NgramDatastore, paths: torch.Tensor, new: int) -> tuple[float, float, Counter, Counter]:
    """Coverage and accuracy over the last `new` tokens of each path, and per n-gram size (answered, right)."""
    answered, right = Counter(), Counter()
    total = 0
    for row in paths.tolist():
        for q in range(len(row) - new, len(row)):
            n, token = store.match(row[:q])
            total += 1
            if n:
                answered[n] += 1
                right[n] += token == row[q]
    return sum(answered.values()) / total, sum(right.values()) / total, answered, right


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("continuations", nargs="+", help="safetensors files of scripts/teacher_continuations.py")
    parser.add_argument("--teacher", default=str(ROOT / "assets/models/shakespeare"))
    parser.add_argument("--data", default=str(ROOT / "assets/data/tinyshakespeare.txt"))
    parser.add_argument("--out", required=True, help="folder to write ngrams.safetensors into")
    parser.add_argument("--max-n", type=int, default=4)
    parser.add_argument("--min-n", type=int, default=2)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher = AutoregressiveWrapper.from_pretrained(args.teacher)
    rows, starts, sources = continuations(args.continuations, args.data, teacher.tokenizer)
    began = time.perf_counter()
    store = NgramDatastore.build(rows, teacher.net.num_tokens, max_n=args.max_n, min_n=args.min_n,
                                 min_count=args.min_count, starts=starts,
                                 metadata=dict(teacher=Path(args.teacher).name, sources="; ".join(sources)))
    path = store.save_pretrained(args.out)
    print(f"{store}: {sum(len(r) - s for r, s in zip(rows, starts)):,} continuation tokens of {len(rows)} rows, "
          f"{time.perf_counter() - began:.1f} s; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    _, heldout_ids, _ = load_split(args.data, teacher.tokenizer)
    paths = held_out_paths(teacher, heldout_ids, args.prompts, args.prompt_len, args.new)
    coverage, accuracy, answered, right = agreement(store, paths, args.new)
    print(f"held-out greedy paths ({args.prompts} prompts of {args.prompt_len} tokens, {args.new} new tokens each): "
          f"coverage {coverage:.2%}, accuracy {accuracy:.2%} of all tokens, {accuracy / max(coverage, 1e-9):.2%} "
          "of those it answered")
    for n in store.sizes:
        if answered[n]:
            print(f"  {n}-grams answered {answered[n]:,}, right {right[n] / answered[n]:.2%}")


if __name__ == "__main__":
    main()
