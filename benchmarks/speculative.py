"""Speculative decoding of the bundled expert: plain decoding beside each
drafter, in the same run.

    python benchmarks/speculative.py [--tokens 200] [--repeats 3] [--threads 2] [--drafts 3,4]
        [--store-drafts 6,8] [--held-out 8]

Greedy: for each drafter (the distilled `shakespeare-draft`; the draft with
prompt lookup, `assistant_lookup_ngram=2`; the draft with its n-gram
datastore (`assistant_datastore`, the draft folder's `ngrams.safetensors`),
with and without prompt lookup; the datastore alone (`--store-drafts`
tokens), with and without prompt lookup; the amateur `shakespeare-tiny`, at
the fewest drafted tokens only; prompt lookup alone) and each number of
drafted tokens (and "heuristic": transformers' schedule from 4 tokens; for
the models alone, "confident": up to 20 tokens while the draft's
probability stays at 0.4 or more, transformers' assistant defaults),
tokens/s over the prompts, the speed-up on the three named prompts and on
the held-out ones separately, the acceptance rate (drafted tokens the
expert accepted), the share of drafts copied (from the text or the
datastore), tokens per expert forward, and whether every text is token for
token the expert's own greedy text. Then sampling at
temperature 0.8 (top-p 0.9) with each drafter at its best greedy setting:
tokens/s and acceptance (the text differs run to run; its distribution is
the expert's, see tests/test_speculative.py).

Prompts: three named openings, and `--held-out` windows of 32 tokens at
evenly spaced places of the held-out split (the last 10% of Tiny
Shakespeare). Each prompt runs plain and speculative alternately
`--repeats` times; a config's time is the sum over prompts of the medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from axw import AutoregressiveWrapper, NgramDatastore, SpeculativeStats
from axw.data import load_split

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
NAMED = ["ROMEO:\n", "KING RICHARD II:\nNow,", "First Citizen:\nWe are accounted poor citizens"]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_stats(model, ids, tokens, **kwargs) -> tuple[torch.Tensor, SpeculativeStats | None]:
    """The output of one run and its counts (None for plain decoding)."""
    out = model.generate(ids, tokens, return_dict_in_generate=True, **kwargs)
    return out.sequences, out.stats


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--drafts", default="3,4", help="numbers of drafted tokens to try")
    parser.add_argument("--store-drafts", default="6,8", help="numbers of drafted tokens for the datastore alone")
    parser.add_argument("--held-out", type=int, default=8, help="prompts from the held-out split")
    return parser.parse_args()


def load_drafters() -> dict:
    """Each drafter the bundled models allow, by name, as generate's keyword arguments."""
    drafters = {}
    for name in ("shakespeare-draft", "shakespeare-tiny"):
        if (MODELS / name / "model.safetensors").is_file():
            drafters[name] = dict(assistant_model=AutoregressiveWrapper.from_pretrained(MODELS / name))
            if name == "shakespeare-draft":
                drafters[name + " + lookup"] = dict(drafters[name], assistant_lookup_ngram=2)
        else:
            print(f"({name} is not bundled: skipped)")
    if (MODELS / "shakespeare-draft" / "ngrams.safetensors").is_file():
        store = dict(assistant_datastore=NgramDatastore.from_pretrained(MODELS / "shakespeare-draft"))
        if "shakespeare-draft" in drafters:
            drafters["shakespeare-draft + datastore"] = dict(drafters["shakespeare-draft"], **store)
            drafters["shakespeare-draft + datastore + lookup"] = dict(drafters["shakespeare-draft"], **store,
                                                                      assistant_lookup_ngram=2)
        drafters["datastore"] = store
        drafters["datastore + lookup"] = dict(store, assistant_lookup_ngram=2)
    else:
        print("(the draft's datastore is not bundled: skipped)")
    drafters["prompt lookup"] = {}
    return drafters


def load_prompts(expert, held_out_count: int) -> list:
    """The named prompts, then `held_out_count` of 32 tokens spread over the held-out split."""
    prompts = [torch.tensor(expert.tokenizer.encode(p).ids) for p in NAMED]
    if held_out_count:
        _, held_out, _ = load_split(ROOT / "assets" / "data" / "tinyshakespeare.txt", expert.tokenizer)
        starts = torch.linspace(0, held_out.numel() - 33, held_out_count).long().tolist()
        prompts += [held_out[s:s + 32] for s in starts]
    return prompts


def drafting(drafters: dict, drafter: str, n) -> dict:
    """generate's keyword arguments for `drafter` drafting `n` tokens a round (or a named schedule)."""
    if drafter == "prompt lookup":
        return dict(prompt_lookup_num_tokens=n)
    if n == "confident":  # transformers' assistant defaults: up to 20 tokens, stop below p = 0.4
        return dict(drafters[drafter], num_assistant_tokens=20, assistant_confidence_threshold=0.4)
    if n == "heuristic":
        return dict(drafters[drafter], num_assistant_tokens=4, num_assistant_tokens_schedule="heuristic")
    return dict(drafters[drafter], num_assistant_tokens=n)


def compare(expert, prompts, args, settings, extra, reference=None) -> dict:
    """Per prompt, plain and speculative runs alternating; sums of the medians, the runs' counts, and
    whether every output equals `reference`."""
    named = len(NAMED)
    plain, spec = [], []
    totals = dict(drafted=0, accepted=0, copied=0, emitted=0, target_forwards=0)
    same = True
    for i, p in enumerate(prompts):
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(lambda: run_stats(expert, p, args.tokens, **settings))[0])
            seconds, (out, stats) = timed(lambda: run_stats(expert, p, args.tokens, **settings, **extra))
            b.append(seconds)
        plain.append(statistics.median(a))
        spec.append(statistics.median(b))
        # the counts and the output of the last run (greedy and seeded runs repeat themselves)
        same = same and (reference is None or torch.equal(out, reference[i]))
        for k in totals:
            totals[k] += getattr(stats, k)
    tokens = args.tokens * len(prompts)
    return dict(plain=tokens / sum(plain), spec=tokens / sum(spec), speedup=sum(plain) / sum(spec),
                named=sum(plain[:named]) / sum(spec[:named]),
                held_out=sum(plain[named:]) / max(sum(spec[named:]), 1e-9),
                acceptance=totals["accepted"] / max(totals["drafted"], 1),
                copied=totals["copied"] / max(totals["drafted"], 1),
                per_forward=totals["emitted"] / totals["target_forwards"], same=same)


def greedy_table(expert, prompts, args, drafters) -> dict:
    """The greedy table, every drafter at every setting tried; each drafter's best (setting, speed-up)."""
    drafts = [int(d) for d in args.drafts.split(",")]
    store_drafts = [int(d) for d in args.store_drafts.split(",")]
    greedy = dict(temperature=0.0)
    expert.generate(prompts[0], 8, **greedy)  # warm-up
    plain_tokens = [expert.generate(p, args.tokens, **greedy) for p in prompts]
    print("greedy")
    print("| drafter | drafted tokens | tokens/s | plain tokens/s | speed-up | named prompts | held-out prompts "
          "| acceptance | copied | tokens per expert forward | same text |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    best = {}
    options = {"shakespeare-draft": drafts + ["heuristic", "confident"],
               "shakespeare-draft + lookup": drafts + ["heuristic"], "shakespeare-tiny": drafts[:1],
               "shakespeare-draft + datastore": drafts, "shakespeare-draft + datastore + lookup": drafts,
               "datastore": store_drafts, "datastore + lookup": store_drafts, "prompt lookup": drafts}
    for drafter in drafters:
        for n in options[drafter]:
            r = compare(expert, prompts, args, greedy, drafting(drafters, drafter, n), plain_tokens)
            print(f"| {drafter} | {n} | {r['spec']:.0f} | {r['plain']:.0f} | {r['speedup']:.2f}x | "
                  f"{r['named']:.2f}x | {r['held_out']:.2f}x | {r['acceptance']:.1%} | {r['copied']:.1%} | "
                  f"{r['per_forward']:.2f} | {'yes' if r['same'] else 'NO'} |", flush=True)
            if drafter not in best or r["speedup"] > best[drafter][1]:
                best[drafter] = (n, r["speedup"])
    print("\nbest: " + ", ".join(f"{d} {n} ({x:.2f}x)" for d, (n, x) in best.items()))
    return best


def sampled_table(expert, prompts, args, drafters, best: dict):
    sampled = dict(temperature=0.8, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.9), seed=0)
    print("\nsampling (temperature 0.8, top-p 0.9), each drafter at its best greedy setting")
    print("| drafter | drafted tokens | tokens/s | plain tokens/s | speed-up | acceptance | copied "
          "| tokens per expert forward |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for drafter, (n, _) in best.items():
        r = compare(expert, prompts, args, sampled, drafting(drafters, drafter, n))
        print(f"| {drafter} | {n} | {r['spec']:.0f} | {r['plain']:.0f} | {r['speedup']:.2f}x | "
              f"{r['acceptance']:.1%} | {r['copied']:.1%} | {r['per_forward']:.2f} |", flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    expert = AutoregressiveWrapper.from_pretrained(MODELS / "shakespeare")
    drafters = load_drafters()
    prompts = load_prompts(expert, args.held_out)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"expert {sum(p.numel() for p in expert.parameters()) / 1e6:.2f}M parameters, {args.tokens} new tokens, "
          f"{len(NAMED)} named + {len(prompts) - len(NAMED)} held-out prompts, median of {args.repeats}\n")
    best = greedy_table(expert, prompts, args, drafters)
    sampled_table(expert, prompts, args, drafters, best)


if __name__ == "__main__":
    main()
