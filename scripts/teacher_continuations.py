"""A teacher's own continuations of training-text prompts, as token windows
for `python -m axw.train --generated-data` (sequence-level distillation).

    python scripts/teacher_continuations.py --teacher assets/models/shakespeare \
        --data assets/data/tinyshakespeare.txt --out runs/draft-data/greedy.safetensors --rows 2048

Each row is a prompt of random length (`--prompt-lens`) cut at a random
place of the training split (the first 90% of the characters, as
`axw.data.split_text` cuts it: the held-out tail is never read), followed by
the teacher's continuation up to `--length` tokens: greedy by default,
sampled at `--temperature` otherwise. A draft model for speculative decoding
is judged on the teacher's greedy path, so it learns best from that path.

Rows are written as they are made (the file is replaced whole after every
batch), and a run that finds its own file with the same settings goes on
from where it stopped: the prompts are fixed by `--seed` up front.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from axw import AutoregressiveWrapper  # noqa: E402
from axw.data import encode, read_text, split_text  # noqa: E402
from axw.filters import identity  # noqa: E402


def prompts(train_ids: torch.Tensor, rows: int, prompt_lens: list[int], seed: int) -> list[torch.Tensor]:
    """`rows` prompts from `train_ids`, lengths cycling through `prompt_lens`
    so each batch (cut in order) holds prompts of one length."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(prompt_lens)[torch.randint(0, len(prompt_lens), (rows,), generator=g)]
    lens = lens.sort(stable=True).values  # equal lengths side by side: one batch, one length, no padding
    starts = (torch.rand(rows, generator=g) * (train_ids.numel() - lens + 1)).long()
    return [train_ids[s:s + n] for s, n in zip(starts.tolist(), lens.tolist())]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="model folder")
    parser.add_argument("--data", required=True, help="UTF-8 text; only its training 90%% is read")
    parser.add_argument("--out", required=True, help="safetensors file to write (key 'ids', rows x length)")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--length", type=int, default=257, help="tokens per row, prompt included")
    parser.add_argument("--prompt-lens", default="16,32,64,128")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    prompt_lens = [int(n) for n in args.prompt_lens.split(",")]
    if args.rows < 1 or args.batch_size < 1 or not all(0 < n < args.length for n in prompt_lens):
        raise SystemExit("error: --rows and --batch-size must be positive and each prompt length in (0, --length)")
    if args.temperature < 0:
        raise SystemExit("error: --temperature must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = AutoregressiveWrapper.from_pretrained(args.teacher)
    train_ids = encode(teacher.tokenizer, split_text(read_text(args.data))[0])
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "batch_size", "threads")}
    out = Path(args.out)
    done = torch.empty((0, args.length), dtype=torch.long)
    if out.is_file():
        with safe_open(out, "pt") as f:
            if {k: v for k, v in f.metadata().items() if k in settings} != settings:
                raise SystemExit(f"error: {out} was made with other settings: {f.metadata()}; give another --out")
            done = f.get_tensor("ids")
        print(f"going on from {done.shape[0]} rows in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    todo = prompts(train_ids, args.rows, prompt_lens, args.seed)
    began = time.perf_counter()
    i = done.shape[0]
    while i < args.rows:
        batch = todo[i:i + args.batch_size]
        n = len(batch[0])
        batch = [p for p in batch if len(p) == n]  # a batch ends where the prompt length changes
        # a seed per batch, so a run that goes on samples what an uninterrupted one would
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        rows = teacher.generate(torch.stack(batch), args.length - n, temperature=args.temperature,
                                filter_logits_fn=identity, generator=generator)
        done = torch.cat((done, rows))
        i += len(batch)
        tmp = out.with_name(out.name + ".partial")
        save_file({"ids": done.contiguous()}, tmp, metadata=settings)
        os.replace(tmp, out)
        print(f"{i}/{args.rows} rows, {time.perf_counter() - began:.0f} s", flush=True)
    sample = teacher.tokenizer.decode(done[0].tolist())
    print(json.dumps(sample[:300]))


if __name__ == "__main__":
    main()
