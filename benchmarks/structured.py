"""Structured output's cost per step on the bundled expert: the constraint's mask beside an unconstrained
step, in the same run.

    python benchmarks/structured.py [--repeats 5] [--threads 1] [--tokens 96]

For each constraint (a regex of 200 letters and punctuation, no digits; a JSON schema of a long string; the
playground's arithmetic grammar, whose texts run to the token budget), greedy decoding of three prompts,
constrained and unconstrained alternately (the unconstrained run as long as the constrained one was, checking
each step for a stop id it never says, as the constrained run checks for EOS):
the milliseconds per step of each and the difference, then the mask alone per step (the grammar stage replayed
over the constrained text: following one token and computing the next mask). Times are medians over
`--repeats` pairs; the machine's load average is printed beside them (a shared machine's figures move with it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from axw import AutoregressiveWrapper, GenerationConfig
from axw.generation import Decoding

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["ROMEO:\n", "KING RICHARD II:\nNow,", "First Citizen:\nWe are accounted poor citizens"]
CONSTRAINTS = {
    "regex, 200 characters": dict(regex=r"[A-Za-z ,.;:'!?\n]{200}"),
    "JSON schema, a long string": dict(json_schema={"type": "object", "required": ["speech"],
                                                    "properties": {"speech": {"type": "string", "minLength": 150,
                                                                              "maxLength": 150}}}),
    "Lark grammar, arithmetic": dict(grammar='start: expr\nexpr: NUMBER | expr OP expr | "(" expr ")"\n'
                                             'OP: "+" | "-" | "*" | "/"\nNUMBER: /[0-9]+/'),
}


def per_step(model, ids, tokens, **kwargs) -> tuple[float, int]:
    """Seconds per generated token of one greedy run, and how many it generated (up to its EOS, if any)."""
    start = time.perf_counter()
    out = model.generate(ids, tokens, temperature=0.0, **kwargs)
    seconds = time.perf_counter() - start
    new = out[ids.shape[0]:].tolist()
    n = new.index(model.eos_token_id) if "eos_token" not in kwargs and model.eos_token_id in new else len(new)
    return seconds / max(n, 1), n


def mask_alone(model, ids, out, constraint) -> float:
    """Seconds per step of the grammar stage alone, replayed over the constrained text `out`."""
    config = GenerationConfig(temperature=0.0, **constraint)
    stage = Decoding(model, ids, 1, config).pipeline().scores[0]
    logits = torch.zeros((1, model.net.num_tokens))
    n = len(out) - len(ids)
    start = time.perf_counter()
    for step in range(n):
        stage(logits, out[None, :len(ids) + step])
    return (time.perf_counter() - start) / max(n, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)  # a shared 2-core machine: a second thread waits
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoregressiveWrapper.from_pretrained(ROOT / "assets" / "models" / "shakespeare").eval()
    tok = model.tokenizer
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads; load average before: {os.getloadavg()[0]:.2f}")
    print("| constraint | constrained step | unconstrained step | difference | mask alone | tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, constraint in CONSTRAINTS.items():
        with_c, without, masks, lengths = [], [], [], []
        for prompt in PROMPTS:
            ids = torch.tensor(tok.encode(prompt).ids)
            out = model.generate(ids, args.tokens, temperature=0.0, **constraint)
            new = out[len(ids):].tolist()
            n = new.index(model.eos_token_id) if model.eos_token_id in new else len(new)
            # the unconstrained run checks for a stop id each step as the constrained one does: one it never says
            free = model.generate(ids, n, temperature=0.0, eos_token=None)[len(ids):].tolist()
            unused = next(i for i in range(model.net.num_tokens - 1, 0, -1) if i not in free)
            per_c, per_u = [], []
            for _ in range(args.repeats):  # alternately, so the machine's load falls on both alike
                per_c.append(per_step(model, ids, args.tokens, **constraint)[0])
                per_u.append(per_step(model, ids, n, eos_token=unused)[0])
            with_c.append(statistics.median(per_c))
            without.append(statistics.median(per_u))
            masks.append(statistics.median(mask_alone(model, ids, out[:len(ids) + n], constraint)
                                           for _ in range(args.repeats)))
            lengths.append(n)
        c, u, m = (statistics.mean(x) * 1e3 for x in (with_c, without, masks))
        print(f"| {name} | {c:.2f} ms | {u:.2f} ms | {100 * (c / u - 1):+.1f}% | {m:.3f} ms "
              f"({100 * m / u:.1f}% of a step) | {'/'.join(map(str, lengths))} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
