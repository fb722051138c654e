"""KV-cache memory of a long greedy run on models with sliding-window layers,
axw beside transformers, from the same checkpoint in the same run.

    python benchmarks/sliding_cache.py [--shape gemma3|gemma2|mistral] [--tokens 2000] [--window 128]

The model has random weights and a small width (what is measured is the cache,
whose size is layers x kv_heads x head_dim x positions): Gemma 3's pattern of
5 sliding layers to 1 global (12 layers), Gemma 2's alternation (12 layers),
or Mistral's, every layer sliding (12 layers); 2 key-value heads of 32
channels, fp32, `--window` keys per sliding layer, built and saved by
transformers, loaded by axw from that folder. Each library generates
`--tokens` greedy tokens after an 8-token prompt at batch 1. Reported: the
bytes of axw's cache buffers at the end of the run and their peak over the
run (read after every token), the slots each group of layers holds, and the
bytes of the key and value tensors in transformers' cache at the end (the
storage they view, which is what stays allocated); and whether the tokens are
the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT_LEN = 8


def hf_model(shape: str, window: int, positions: int):
    import transformers

    common = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=12,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=positions,
                  sliding_window=window, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if shape == "gemma3":
        config = transformers.Gemma3TextConfig(**common)  # layer_types: 5 sliding, then 1 global
    elif shape == "gemma2":
        config = transformers.Gemma2Config(**common)
    else:
        config = transformers.MistralConfig(**common)
    torch.manual_seed(0)
    return getattr(transformers, {"gemma3": "Gemma3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                                  "mistral": "MistralForCausalLM"}[shape])(config).eval()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages the tensors view."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["gemma3", "gemma2", "mistral"], default="gemma3")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from axw import AutoregressiveWrapper

    total = PROMPT_LEN + args.tokens
    hf = hf_model(args.shape, args.window, positions=total + 64)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        model = AutoregressiveWrapper.from_pretrained(folder).eval()
    torch.manual_seed(1)
    x = torch.randint(3, 256, (1, PROMPT_LEN))

    cache, peak = model.net.new_cache(), 0
    out = None
    for step in model.stream(x, args.tokens, temperature=0.0, cache=cache):
        peak = max(peak, cache.memory_bytes())
        out = step.sequences
    ours = torch.cat((x, out), dim=1)
    layers = [block.sliding for block in model.net.attn_layers.layers]
    print(f"{args.shape}: {len(layers)} layers, {sum(layers)} sliding (window {args.window}), "
          f"{total} positions, {args.tokens} greedy tokens")
    print(f"axw cache: {cache.memory_bytes() / 2**20:.2f} MiB at the end, {peak / 2**20:.2f} MiB peak")
    for group in getattr(cache, "groups", [cache]):
        print(f"  layers with window {group.window}: {group.k.shape[0]} layers x {group.k.shape[3]} slots "
              f"({group.length - group.start} live)")

    with torch.no_grad():
        result = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
    past = result.past_key_values
    tensors = [t for layer in past.layers for t in (layer.keys, layer.values)]
    print(f"transformers cache: {storage_bytes(tensors) / 2**20:.2f} MiB at the end; positions per layer: "
          f"{sorted({layer.keys.shape[-2] for layer in past.layers})}")
    same = torch.equal(ours, result.sequences)
    where = "" if same else f" (first difference at {int((ours != result.sequences).nonzero()[0, 1])})"
    print(f"same tokens: {same}{where}")


if __name__ == "__main__":
    main()
