"""What-if branches: a run that forces a token at a step of another and goes on with the same settings and seed,
continuing from the parent's KV cache; a visitor's `Tree` of runs."""

from __future__ import annotations

import itertools

import torch

from .caps import MAX_FORKS
from .detokenizer import Detokenizer
from .render import show_token
from .runs import Run, floats, follow, stop_set, uses_cache
from .settings import number


def check_fork(run: Run | None, step, token, vocab: int, stops: set[int]) -> tuple[int, int]:
    """(step, token) if `run` can branch there, else ValueError; before any compute."""
    if run is None or not run.rows:
        raise ValueError("generate some text first: a branch starts from a step of it")
    step = number("step", step, 0, len(run.rows) - 1, integer=True)
    token = number("token", token, 0, vocab - 1, integer=True)
    prefix = run.prefix(step)
    if any(t in stops for t in prefix[len(run.prompt_ids):]):
        raise ValueError(f"the text had ended before step {step + 1}")
    return step, token


def prefix_cache(model, prefix: list[int], prompt_len: int, kept=None):
    """A KV cache holding `prefix`, as the parent's run read it: `kept` (the parent's cache) forked and cropped
    to it when it still has the keys the prefix needs, else the prefix read again into a new cache
    (`model.prefill`, which cuts the prompt as a run does)."""
    if kept is not None:
        fork = kept.fork()
        try:
            fork.crop(len(prefix))
            return fork
        except ValueError:  # keys that slid out of the window were discarded: read it again
            pass
    return model.prefill(torch.tensor([prefix], dtype=torch.long, device=model.device), prompt_len)


def taken(run: Run, step: int) -> int | None:
    """The token `run` has at `step`: the one chosen there (beam search: its best beam's)."""
    row = run.rows[step] if step < len(run.rows) else {}
    if "chosen" in row:
        return row["chosen"]
    return run.new_ids[step] if step < len(run.new_ids) else None


def forced_row(row: dict, token: int) -> dict:
    """The parent's trace row of the branch step, with `token` chosen instead (rank and probability from the
    traced candidates, where it is one of them)."""
    out = {k: v for k, v in row.items() if k not in ("beams", "beam_scores", "beam_finished", "beam_tree")}
    out.update(chosen=token, forced=True)
    if token in row["candidates"]:
        rank = row["candidates"].index(token)
        out.update(chosen_rank=rank, chosen_prob=row["probs"][row["stages"][-1]][rank])
    else:
        out.pop("chosen_rank", None)
        out["chosen_prob"] = None
    return out


def branch(model, parent: Run, step: int, token: int, config, amateur=None, kept=None, assistant=None,
           datastore=None):
    """(run, its stream of updates, its KV cache) of the branch of `parent` that takes `token` at `step` and
    goes on for the rest of the parent's length with the same settings and seed. The prefix is the parent's token
    ids; its KV cache is `kept` (the parent's) forked, so only the forced token and what follows run."""
    settings = parent.settings
    prefix = parent.prefix(step)
    base = prefix[len(parent.prompt_ids):] + [token]
    row = forced_row(parent.rows[step], token)
    forced_prob = row["probs"]["model"][row["chosen_rank"]] if parent.beam and "chosen_rank" in row else \
        row.get("chosen_prob")
    run = Run(settings, parent.prompt, parent.prompt_ids, new_ids=list(base),
              probs=parent.prefix_probs(step) + [forced_prob], rows=parent.rows[:step] + [row], parent=parent.id,
              step=step, taken=taken(parent, step), forced=token, specials=parent.specials,
              message=parent.message)
    if parent.beam:
        run.beam_probs = (parent.beam_probs or [])[:step] + [floats(run.probs)]
    detok = Detokenizer(model.tokenizer)
    for t in base:
        detok.push(t)
    run.pieces = detok.pieces
    remaining = settings.max_new_tokens - step - 1
    stops = stop_set(model, settings)
    if remaining <= 0 or token in stops:
        if token in stops:
            run.new_ids, run.probs = run.new_ids[:-1], run.probs[:-1]
            detok = Detokenizer(model.tokenizer)
            for t in run.new_ids:
                detok.push(t)
        run.pieces, run.done, run.ended = detok.finish(), True, "eos" if token in stops else "length"
        return run, iter([run]), None
    strategy = settings.strategy
    # contrastive search cannot continue from a cache; speculative decoding's caches (the model's and the
    # draft's) are its own, rolled back round by round
    fresh = strategy in ("contrastive search", "speculative decoding")
    cache = None if fresh else prefix_cache(model, prefix, len(parent.prompt_ids), kept)
    if config.constraint is not None:  # the constrained text began in the parent: the branch continues it
        config = config.update(constrained_prompt_tail=len(base))
    ids = torch.tensor(prefix + [token], dtype=torch.long, device=model.device)
    steps = model.stream(ids, remaining, config, amateur_model=amateur, assistant_model=assistant,
                         assistant_datastore=datastore, cache=cache)
    return run, follow(model, run, steps, detok), cache if uses_cache(settings) else None


class Tree:
    """One visitor's runs: the latest generation and its what-if branches (and theirs), at most `size` branches
    (the oldest goes first; a branch keeps its own ids and trace, so one whose parent was dropped still works)."""

    def __init__(self, size: int = MAX_FORKS):
        self.size = size
        self.runs: dict[int, Run] = {}
        self.ids = itertools.count()
        self.current: int | None = None

    def add(self, run: Run) -> Run:
        """Keep `run`: a new generation (no parent) starts a new tree, as id 0."""
        if run.parent is None:
            self.runs.clear()
            self.ids = itertools.count()
        run.id = next(self.ids)
        self.runs[run.id] = run
        branches = [i for i, r in self.runs.items() if r.parent is not None]
        for i in branches[: max(0, len(branches) - self.size)]:
            del self.runs[i]
        self.current = run.id
        return run

    def get(self, run_id=None) -> Run | None:
        if run_id is None:
            run_id = self.current
        return self.runs.get(run_id) if isinstance(run_id, int) and not isinstance(run_id, bool) else None

    @property
    def root(self) -> Run | None:
        return next((r for r in self.runs.values() if r.parent is None), None)

    def branches(self) -> list[Run]:
        return [r for r in self.runs.values() if r.parent is not None]

    def choices(self, tokenizer) -> list[tuple[str, int]]:
        return [(describe(r, tokenizer), r.id) for r in self.runs.values()]


def describe(run: Run, tokenizer) -> str:
    """A run's name in the pickers: the text, or where a branch left its parent and what it took there."""
    if run.parent is None:
        return "the generated text"
    parent = "the text" if run.parent == 0 else f"branch {run.parent}"
    took = show_token(tokenizer, run.taken) if run.taken is not None else "(end)"
    return f"branch {run.id}: step {run.step + 1} of {parent}, {took} → {show_token(tokenizer, run.forced)}"
