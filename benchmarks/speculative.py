"""Speculative decoding of the bundled expert: plain decoding beside each
drafter, in the same run.

    python benchmarks/speculative.py [--tokens 200] [--repeats 3] [--threads 2] [--drafts 1,2,3,4,5,6,8]

Greedy: for each drafter (the distilled `shakespeare-draft`, the amateur
`shakespeare-tiny`, prompt lookup) and each number of drafted tokens (and,
for the models, "confident": up to 20 tokens while the draft's probability
stays at 0.4 or more, transformers' assistant defaults), tokens/s
over a few prompts, the acceptance rate (drafted tokens the expert accepted)
and tokens per expert forward, and whether the text is token for token the
expert's own greedy text. Then sampling at temperature 0.8 (top-p 0.9) with
each drafter at its best greedy setting: tokens/s and acceptance (the text
differs run to run; its distribution is the expert's, see
tests/test_speculative.py). Timings alternate plain and speculative runs and
report medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from axw import AutoregressiveWrapper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
# the openings of held-out passages (the last 10% of Tiny Shakespeare) and a generic one
PROMPTS = ["ROMEO:\n", "KING RICHARD II:\nNow,", "First Citizen:\nWe are accounted poor citizens"]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_stats(model, ids, tokens, **kwargs) -> dict:
    run = model._decoding(ids, tokens, None, dict(kwargs))
    with torch.no_grad():
        run.output()
    return getattr(run, "stats", {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--drafts", default="1,2,3,4,5,6,8", help="numbers of drafted tokens to try")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    drafts = [int(d) for d in args.drafts.split(",")]

    expert = AutoregressiveWrapper.from_pretrained(MODELS / "shakespeare")
    drafters = {}
    for name in ("shakespeare-draft", "shakespeare-tiny"):
        if (MODELS / name / "model.safetensors").is_file():
            drafters[name] = dict(assistant_model=AutoregressiveWrapper.from_pretrained(MODELS / name))
        else:
            print(f"({name} is not bundled: skipped)")
    drafters["prompt lookup"] = {}
    prompts = [torch.tensor(expert.tokenizer.encode(p).ids) for p in PROMPTS]

    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"expert {sum(p.numel() for p in expert.parameters()) / 1e6:.2f}M parameters, {args.tokens} new tokens, "
          f"{len(prompts)} prompts, median of {args.repeats}\n")

    def drafting(drafter, n) -> dict:
        if drafter == "prompt lookup":
            return dict(prompt_lookup_num_tokens=n)
        if n == "confident":  # transformers' assistant defaults: up to 20 tokens, stop below p = 0.4
            return dict(drafters[drafter], num_assistant_tokens=20, assistant_confidence_threshold=0.4)
        return dict(drafters[drafter], num_assistant_tokens=n)

    def seconds(**kwargs) -> float:
        return sum(timed(lambda p=p: expert.generate(p, args.tokens, **kwargs))[0] for p in prompts)

    total = args.tokens * len(prompts)

    def compare(drafter, n, settings) -> tuple[float, float, float, float]:
        """(plain tokens/s, speculative tokens/s, acceptance, tokens per expert forward), runs alternating."""
        plain, spec = [], []
        for _ in range(args.repeats):
            plain.append(seconds(**settings))
            spec.append(seconds(**settings, **drafting(drafter, n)))
        totals = dict(drafted=0, accepted=0, emitted=0, target_forwards=0)
        for p in prompts:
            stats = run_stats(expert, p, args.tokens, **settings, **drafting(drafter, n))
            for k in totals:
                totals[k] += stats[k]
        return (total / statistics.median(plain), total / statistics.median(spec),
                totals["accepted"] / max(totals["drafted"], 1), totals["emitted"] / totals["target_forwards"])

    greedy = dict(temperature=0.0)
    expert.generate(prompts[0], 8, **greedy)  # warm-up
    plain_tokens = [expert.generate(p, args.tokens, **greedy) for p in prompts]

    print("greedy")
    print("| drafter | drafted tokens | tokens/s | plain tokens/s | speed-up | acceptance | tokens per expert forward "
          "| same text |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    best = {}
    for drafter in drafters:
        for n in drafts + (["confident"] if drafter != "prompt lookup" else []):
            same = all(torch.equal(expert.generate(p, args.tokens, **greedy, **drafting(drafter, n)), ref)
                       for p, ref in zip(prompts, plain_tokens))
            p_rate, s_rate, rate, per_forward = compare(drafter, n, greedy)
            print(f"| {drafter} | {n} | {s_rate:.0f} | {p_rate:.0f} | {s_rate / p_rate:.2f}x | {rate:.1%} | "
                  f"{per_forward:.2f} | {'yes' if same else 'NO'} |", flush=True)
            if drafter not in best or s_rate / p_rate > best[drafter][1]:
                best[drafter] = (n, s_rate / p_rate)
    print("\nbest: " + ", ".join(f"{d} {n} drafted tokens ({x:.2f}x)" for d, (n, x) in best.items()))

    sampled = dict(temperature=0.8, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.9), seed=0)
    print("\nsampling (temperature 0.8, top-p 0.9), each drafter at its best greedy setting")
    print("| drafter | drafted tokens | tokens/s | plain tokens/s | speed-up | acceptance | tokens per expert forward |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for drafter, (n, _) in best.items():
        p_rate, s_rate, rate, per_forward = compare(drafter, n, sampled)
        print(f"| {drafter} | {n} | {s_rate:.0f} | {p_rate:.0f} | {s_rate / p_rate:.2f}x | {rate:.1%} | "
              f"{per_forward:.2f} |", flush=True)


if __name__ == "__main__":
    main()
