"""How well a draft model predicts the expert, and what that buys greedy
speculative decoding.

    python scripts/draft_agreement.py assets/models/shakespeare-draft [--expert assets/models/shakespeare]

On the held-out split of Tiny Shakespeare (the last 10% of the characters,
`axw.data.split_text`), never trained on by either model, it prints:

- the draft's held-out loss (nats per character and per token);
- (a) teacher-forced agreement: the share of held-out tokens where the
  draft's argmax is the expert's, both reading the same text in windows of
  the expert's context;
- (b) agreement on the expert's greedy path: `--prompts` prompts of
  `--prompt-len` tokens at evenly spaced places of the held-out split, each
  continued greedily by the expert for `--new` tokens; the share of those
  tokens the draft's argmax predicts from the same prefix;
- with `--time`, the decode step cost of both models and of the expert's
  verify forward (medians, as scripts/draft_shapes.py measures them), and
  the speed-up of greedy speculative decoding that (b) implies;
- with `--speculate GAMMA`, a measured one: the library's greedy
  speculative decoding (`generate(..., assistant_model=draft,
  num_assistant_tokens=GAMMA)`) against plain greedy `generate`, both
  batch 1, on the same held-out prompts; it checks that both produce the
  same tokens.

The speed-up is worked out along the expert's greedy paths themselves: a
round proposes `gamma` draft tokens and the expert keeps the matching
prefix plus one token of its own, so the tokens a round yields follow from
where the draft's argmax matches; a round costs gamma draft steps, one
verify forward of gamma + 1 tokens and `--overhead` ms, against one expert
step per token for plain greedy decoding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from draft_shapes import step_times  # noqa: E402  (scripts/ is on the path of a script run from it)

from axw import AutoregressiveWrapper  # noqa: E402
from axw.data import load_split  # noqa: E402
from axw.train import score  # noqa: E402


def teacher_forced(draft, expert, heldout_ids, seq_len: int, max_tokens: int | None) -> dict:
    d_total, count, d_top = score(draft, heldout_ids, seq_len, max_tokens=max_tokens, argmax=True)
    _, _, e_top = score(expert, heldout_ids, seq_len, max_tokens=max_tokens, argmax=True)
    return dict(nll=d_total, count=count, agreement=(d_top == e_top).float().mean().item())


@torch.no_grad()
def greedy_path_matches(draft, expert, heldout_ids, prompts: int, prompt_len: int, new: int) -> torch.Tensor:
    """(prompts, new) booleans: whether the draft's argmax, given the
    expert's greedy prefix, is the expert's next greedy token."""
    span = heldout_ids.numel() - prompt_len
    starts = torch.linspace(0, span - 1, prompts).long()
    batch = heldout_ids[starts[:, None] + torch.arange(prompt_len)]
    path = expert.generate(batch, new, temperature=0.0)  # (prompts, prompt_len + new)
    # one forward over the path scores every position; the window keeps within the draft's context
    context = path[:, -(draft.max_seq_len + 1):]
    logits = draft.net(context[:, :-1])
    guesses = logits[:, -new:].argmax(dim=-1)
    return guesses == path[:, -new:]


def tokens_per_round(matches: torch.Tensor, gamma: int) -> float:
    """Mean tokens a greedy speculative round yields along these paths: the
    matching run of up to `gamma` drafted tokens, plus the expert's own."""
    tokens = rounds = 0
    for row in matches.tolist():
        pos = 0
        while pos < len(row):
            run = 0
            while run < gamma and pos + run < len(row) and row[pos + run]:
                run += 1
            step = min(run + 1, len(row) - pos)
            tokens += step
            rounds += 1
            pos += step
    return tokens / rounds


def speculative_timing(expert, draft, heldout_ids, prompts: int, prompt_len: int, new: int, gamma: int):
    """The library's greedy speculative decoding (`generate` with `assistant_model=draft`,
    `num_assistant_tokens=gamma`) against plain greedy `generate`, batch 1, on the same held-out prompts."""
    starts = torch.linspace(0, heldout_ids.numel() - prompt_len - 1, prompts).long()
    plain, spec, same, rounds = [], [], 0, 0
    for s in starts.tolist():
        prompt = heldout_ids[s:s + prompt_len]
        began = time.perf_counter()
        reference = expert.generate(prompt, new, temperature=0.0)
        plain.append(time.perf_counter() - began)
        began = time.perf_counter()
        out = expert.generate(prompt, new, temperature=0.0, assistant_model=draft, num_assistant_tokens=gamma,
                              return_dict_in_generate=True)
        spec.append(time.perf_counter() - began)
        same += torch.equal(out.sequences, reference)
        rounds += out.stats.rounds
    per_token = 1e3 / (prompts * new)
    print(f"speculative decoding, gamma {gamma}, {prompts} held-out prompts of {prompt_len} tokens, {new} new "
          f"tokens each: {prompts * new / rounds:.2f} tokens per round; plain greedy {sum(plain) * per_token:.3f} "
          f"ms/token, speculative {sum(spec) * per_token:.3f} ms/token: {sum(plain) / sum(spec):.2f}x "
          f"(median over prompts {statistics.median(p / q for p, q in zip(plain, spec)):.2f}x); "
          f"identical output on {same} of {prompts}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("draft")
    parser.add_argument("--expert", default=str(ROOT / "assets/models/shakespeare"))
    parser.add_argument("--data", default=str(ROOT / "assets/data/tinyshakespeare.txt"))
    parser.add_argument("--heldout-tokens", type=int, default=None, help="cap on (a); default: the whole split")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new", type=int, default=192)
    parser.add_argument("--time", action="store_true", help="measure step costs and the implied speed-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (with --time)")
    parser.add_argument("--overhead", type=float, default=0.3, help="ms per speculative round beyond the forwards")
    parser.add_argument("--speculate", type=int, default=0, metavar="GAMMA",
                        help="time greedy speculative decoding with GAMMA drafted tokens per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    expert = AutoregressiveWrapper.from_pretrained(args.expert)
    draft = AutoregressiveWrapper.from_pretrained(args.draft)
    if draft.tokenizer.get_vocab() != expert.tokenizer.get_vocab():
        raise SystemExit("error: the draft and the expert use different tokenizers")
    _, heldout_ids, heldout_text = load_split(args.data, expert.tokenizer)

    tf = teacher_forced(draft, expert, heldout_ids, expert.max_seq_len, args.heldout_tokens)
    chars = len(heldout_text) * tf["count"] / (heldout_ids.numel() - 1)
    print(f"draft {args.draft}: {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M parameters")
    print(f"held-out loss: {tf['nll'] / chars:.4f} nats per character ({tf['nll'] / tf['count']:.4f} per token, "
          f"{tf['count']:,} tokens)")
    print(f"(a) teacher-forced top-1 agreement with the expert: {tf['agreement']:.4f}")
    matches = greedy_path_matches(draft, expert, heldout_ids, args.prompts, args.prompt_len, args.new)
    alpha = matches.float().mean().item()
    print(f"(b) agreement on the expert's greedy path: {alpha:.4f} ({matches.numel():,} tokens: {args.prompts} "
          f"held-out prompts of {args.prompt_len} tokens, {args.new} greedy tokens each)")
    if args.speculate:
        speculative_timing(expert, draft, heldout_ids, args.prompts, args.prompt_len, args.new, args.speculate)
    if not args.time:
        return

    runs = {"draft step": (draft, 1), "expert step": (expert, 1)}
    runs.update({f"expert verify {g + 1}": (expert, g + 1) for g in range(1, 9)})
    for model, new in runs.values():
        step_times(model, 20, new=new)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, new) in runs.items():
            times[name] += step_times(model, 100, new=new)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    c_d, c_e = ms["draft step"], ms["expert step"]
    print(f"step cost ({args.threads} threads, median): draft {c_d:.3f} ms, expert {c_e:.3f} ms, "
          f"expert verify of 6 tokens {ms['expert verify 6']:.3f} ms")
    print("gamma  tokens/round  ms/round  speed-up over plain greedy")
    for gamma in range(1, 9):
        per_round = tokens_per_round(matches, gamma)
        cost = gamma * c_d + ms[f"expert verify {gamma + 1}"] + args.overhead
        print(f"{gamma:>5}  {per_round:>12.2f}  {cost:>8.2f}  {per_round * c_e / cost:>6.2f}x")


if __name__ == "__main__":
    main()
