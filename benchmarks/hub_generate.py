"""Greedy generation speed and memory of a Hub-family model, axw beside
transformers, from the same checkpoint in the same run.

    python benchmarks/hub_generate.py [--shape gpt2|qwen3-0.6b] [--dtype float32|bfloat16]
                                      [--tokens 128] [--repeats 10] [--threads 2]

The model is `GPT2Config()` (124M parameters) or a Qwen3-0.6B-shaped
`Qwen3Config` (28 layers, 1024 wide, 16 query and 8 key-value heads of 128,
qk-norm, tied embeddings: 596M parameters) with random weights, built and
saved by transformers as safetensors, and loaded by each library from that
folder in `--dtype`. Each library runs in its own process, so neither's allocations or
caches touch the other's figures; the two processes take turns, one timed
generation at a time (in ABBA order), so drift in a shared machine hits both
alike. The medians are reported.

Per timed run: `--tokens` new tokens at batch 1 from a short prompt, greedy,
no EOS (after one warm-up generation per process). Memory: the process's
peak resident set during the timed generation (weights included), and that
peak less the resident set just before it (what generating itself adds: KV
cache, activations).

Tokens: axw's against every timed run's, and against transformers' computing
the products axw computes (untimed). The two differ in bf16 on a CPU with
oneDNN bf16: PyTorch sends every bf16 product there, while axw gives a decode
step's one row to PyTorch's own product, which rounds differently; bf16 logits
can tie, so greedy tokens may then part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT_LEN = 8


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak() -> bool:
    """Restart the kernel's high-water mark of resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def config(shape: str):
    """The transformers config of `shape`."""
    from transformers import GPT2Config, Qwen3Config

    if shape == "gpt2":
        return GPT2Config()
    # Qwen/Qwen3-0.6B's config.json
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rope_theta=1000000, rms_norm_eps=1e-6, tie_word_embeddings=True)


def serve(kind: str, folder: str, tokens: int, threads: int, dtype: str):
    """Load one library's model, then run a timed generation for each 'run'
    line on stdin, answering with one JSON line."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
    prompt = torch.randint(0, vocab, (1, PROMPT_LEN))
    if kind == "axw":
        from axw import AutoregressiveWrapper

        model = AutoregressiveWrapper.from_pretrained(folder, dtype=dtype)

        def generate(n):
            return model.generate(prompt, n, temperature=0.0)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        # no EOS: both generate exactly `tokens` tokens
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0

        def generate(n):
            return model.generate(prompt, max_new_tokens=n, do_sample=False)

    generate(8)  # warm-up: lazy initialisation, allocator pools
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "same" and kind == "transformers":
            print(json.dumps(dict(tokens=same_products(model, generate, tokens))), flush=True)
            continue
        if line.strip() != "run":
            break
        exact = _reset_peak()
        before = _status_kb("VmRSS")
        start = time.perf_counter()
        out = generate(tokens)
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM") if exact else None
        assert out.shape[-1] == PROMPT_LEN + tokens, out.shape
        print(json.dumps(dict(seconds=seconds, before_kb=before, peak_kb=peak,
                              tokens=out[0, PROMPT_LEN:].tolist())), flush=True)


def same_products(model, generate, tokens: int) -> list[int]:
    """transformers' greedy tokens when it computes the products axw does: where this CPU has oneDNN bf16, PyTorch
    sends every bf16 product to oneDNN, while axw gives a decode step's one row to PyTorch's own product
    (`axw.kernels.native_bf16`) and a prompt's rows to oneDNN. Untimed."""
    import torch

    forward = model.forward

    def one_row_native(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            with torch.backends.mkldnn.flags(enabled=False):
                return forward(*args, **kwargs)
        return forward(*args, **kwargs)

    model.forward = one_row_native
    try:
        return generate(tokens)[0, PROMPT_LEN:].tolist()
    finally:
        model.forward = forward


def _answer(proc, kind) -> dict:
    line = proc.stdout.readline()
    if not line:
        sys.exit(f"the {kind} process ended (its error is above)")
    return json.loads(line)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=["gpt2", "qwen3-0.6b"], default="gpt2")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--serve", choices=["axw", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure(args) -> tuple[dict, int]:
    """Each library's runs (one process each, taking turns) on one random model; and its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    runs = {"axw": [], "transformers": []}
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(config(args.shape))
        params = sum(p.numel() for p in hf.parameters())
        hf.save_pretrained(folder)
        del hf
        procs = {}
        for kind in runs:  # one at a time, so loading does not overlap
            procs[kind] = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--folder", folder, "--dtype", args.dtype,
                 "--tokens", str(args.tokens), "--threads", str(args.threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,  # its stderr is ours: errors show
            )
            _answer(procs[kind], kind)
        for i in range(args.repeats):
            for kind in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                procs[kind].stdin.write("run\n")
                procs[kind].stdin.flush()
                runs[kind].append(_answer(procs[kind], kind))
        if args.dtype == "bfloat16":  # in fp32 both compute the same products already
            procs["transformers"].stdin.write("same\n")
            procs["transformers"].stdin.flush()
            runs["same products"] = _answer(procs["transformers"], "transformers")["tokens"]
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    return runs, params


def report(args, runs: dict, params: int):
    import torch
    import transformers

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} torch threads, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"model: {args.shape}-shaped, random weights, {params / 1e6:.1f}M params, {args.dtype}; batch 1, prompt "
          f"{PROMPT_LEN} tokens, "
          f"{args.tokens} new tokens greedy; median of {args.repeats} runs per library, one process each, "
          "taking turns")
    same_products = runs.pop("same products", None)
    rates = {}
    peaks = {}
    for kind, rs in runs.items():
        each = sorted(args.tokens / r["seconds"] for r in rs)
        rates[kind] = statistics.median(each)
        line = f"{kind:>13}: {rates[kind]:6.1f} tokens/s ({each[0]:.1f} to {each[-1]:.1f})"
        if rs[0]["peak_kb"] is not None:
            peaks[kind] = statistics.median(r["peak_kb"] for r in rs) / 1024
            added = statistics.median(r["peak_kb"] - r["before_kb"] for r in rs) / 1024
            line += f", peak RSS {peaks[kind]:6.0f} MiB (generation adds {added:5.1f} MiB)"
        print(line)
    print(f"axw / transformers: {rates['axw'] / rates['transformers']:.2f}x tokens/s"
          + (f", {peaks['axw'] / peaks['transformers']:.2f}x peak RSS" if peaks else ""))
    ours = runs["axw"][0]["tokens"]
    line = f"same greedy tokens: {_same(ours, [r['tokens'] for r in runs['axw'] + runs['transformers']])}"
    if args.dtype == "bfloat16":
        line += ("; as transformers computing the same products (one-token steps by PyTorch's own product where "
                 f"this CPU sends bf16 to oneDNN): {_same(ours, [same_products])}")
    print(line)


def _same(ours: list[int], theirs: list[list[int]]) -> str:
    """'yes', or where the first of `theirs` that differs from `ours` parts from it."""
    for tokens in theirs:
        if tokens != ours:
            return f"NO (from new token {next(i for i, (a, b) in enumerate(zip(ours, tokens)) if a != b)})"
    return "yes"


def main():
    args = parse_args()
    if args.serve:
        serve(args.serve, args.folder, args.tokens, args.threads, args.dtype)
        return
    runs, params = measure(args)
    report(args, runs, params)


if __name__ == "__main__":
    main()
