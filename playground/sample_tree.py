"""Sample a prompt N times: the N texts of seeds seed..seed+N-1 with one visitor's settings, sampled in batches
(one forward a step for up to `SAMPLE_TREE_BATCH` rows, `axw.RowGenerators` giving row i the random draws of a
run of its own seed, so its tokens are those /generate gives with seed+i), merged into a prefix tree
(`playground.numbers.sample_tree`)."""

from __future__ import annotations

import urllib.parse
from dataclasses import replace

import torch

from axw import RowGenerators
from axw.specs import MAX_SEED

from .caps import MAX_TREE_SAMPLES, SAMPLE_TREE_BATCH
from .numbers.sample_tree import chains, prefix_tree, summary
from .render import show_token
from .runs import chat_prompt, cut_at_stop, encode_prompt, stop_set
from .settings import PARAMS, Settings, from_query, number, to_query

TREE_STRATEGIES = ("sampling", "contrastive decoding")  # one draw a step from one row's distribution


def check_request(settings: Settings, n, k) -> tuple[Settings, int, int]:
    """(settings without a forced token, n, k), or ValueError; before any compute."""
    settings = settings.check()
    if settings.strategy not in TREE_STRATEGIES:
        raise ValueError(f"the sample tree samples each text as the strategy \"sampling\" (or \"contrastive "
                         f"decoding\") does; pick one of those, not {settings.strategy!r}")
    n = number("n (how many samples)", n, 1, MAX_TREE_SAMPLES, integer=True)
    k = number("k (the first tokens the entropy counts)", k, 1, settings.max_new_tokens, integer=True)
    if settings.seed + n - 1 > MAX_SEED:  # each sample's seed is one /generate takes
        raise ValueError(f"the seeds seed..seed+n-1 must be at most {MAX_SEED}: seed at most {MAX_SEED - n + 1} "
                         f"for n={n}")
    return settings.unforced(), n, k


def prompt_ids(model, prompt: str, settings: Settings) -> torch.Tensor:
    """The prompt's ids as a run reads them (chat mode: the chat template's layout)."""
    return chat_prompt(model, prompt, settings.system)[1] if settings.chat else encode_prompt(model, prompt)


def sample_batch(model, ids: torch.Tensor, settings: Settings, config, seeds: list[int], amateur=None) -> list[dict]:
    """One batch: a row per seed, each cut where its text ends (`tokens`, `probs` each chosen with, `ended`)."""
    stops = stop_set(model, settings)
    prompts = ids[None].expand(len(seeds), -1)
    steps = model.stream(prompts, settings.max_new_tokens, config.update(seed=None, trace_top=1),
                         generator=RowGenerators(seeds, ids.device), amateur_model=amateur)
    tokens, probs = [], []
    for step in steps:
        tokens.append(step.tokens)
        probs.append(step.trace.chosen_prob.float())
    tokens = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in seeds]
    probs = torch.stack(probs, dim=1).tolist() if probs else [[] for _ in seeds]
    rows = []
    for seed, t, p in zip(seeds, tokens, probs):
        cut = cut_at_stop(t, stops)
        ended = "eos" if cut < len(t) else "length"
        rows.append(dict(seed=seed, tokens=t[:cut], probs=p[:cut], ended=ended))
    return rows


def sample_texts(model, prompt: str, settings: Settings, config, n: int, amateur=None) -> list[dict]:
    """The n samples of seeds settings.seed..settings.seed+n-1, in batches of at most SAMPLE_TREE_BATCH rows."""
    ids = prompt_ids(model, prompt, settings)
    samples = []
    for start in range(0, n, SAMPLE_TREE_BATCH):
        seeds = list(range(settings.seed + start, settings.seed + min(n, start + SAMPLE_TREE_BATCH)))
        samples += sample_batch(model, ids, settings, config, seeds, amateur)
    return samples


def tree_json(samples: list[dict], tokenizer, k: int) -> dict:
    """What /sample_tree returns: the summary, the tree's nodes (`playground.numbers.sample_tree.prefix_tree`,
    each with its token's text) and the distinct texts with their counts, most common first."""
    nodes = prefix_tree(samples)
    for node in nodes:
        node["text"] = tokenizer.decode([node["token"]]) if node["token"] is not None else ""
    counted: dict[tuple, dict] = {}
    for s in samples:
        entry = counted.setdefault(tuple(s["tokens"]), dict(text=tokenizer.decode(s["tokens"]), count=0,
                                                            seeds=[], ended=s["ended"]))
        entry["count"] += 1
        entry["seeds"].append(s["seed"])
    texts = sorted(counted.values(), key=lambda e: -e["count"])
    return dict(summary(samples, k), seeds=[samples[0]["seed"], samples[-1]["seed"]] if samples else [],
                nodes=nodes, texts=texts)


def drawn(samples: list[dict], tokenizer) -> list[dict]:
    """The collapsed tree as the view draws it, each node's label its tokens' text made visible."""
    out = chains(prefix_tree(samples))
    for node in out:
        node["label"] = "".join(show_token(tokenizer, t) for t in node["tokens"])
    return out


def changed(prompt: str, settings: Settings, name: str, value) -> Settings:
    """`settings` with one setting (by its /generate parameter name) set to `value` (a share link's text for it),
    checked: the comparison tree's settings."""
    if name not in PARAMS or name in ("seed", "model", "use_finetuned", "force_step", "force_token"):
        raise ValueError(f"pick a setting to change (one of /generate's parameters but the seed, the model and the "
                         f"forced token), got {name!r}")
    if value is None or not str(value).strip():
        raise ValueError(f"give {name} a value to change it to (as a share link writes it: 0.5, true, top_p)")
    params = dict(urllib.parse.parse_qsl(to_query(prompt, settings)))
    params[name] = str(value)
    other = from_query(params)[1]  # a link leaves out the visitor's fine-tuned copy: this one keeps it
    return replace(other, use_finetuned=settings.use_finetuned, model=settings.model).check()
