"""Generations as the playground keeps them: a `Run` (token ids, the text each token adds, the probability each
was chosen with, the trace), streamed from `model.stream`; what-if branches that force a token at a step and
continue from the parent's KV cache; a visitor's `Tree` of them. Token ids throughout: generated text is never
tokenized again.
"""

from __future__ import annotations

import itertools
import math
from array import array
from dataclasses import dataclass, field, replace

import torch
from tokenizers.decoders import DecodeStream

from .caps import MAX_DRAWS, MAX_FORKS
from .render import shared_length
from .settings import Settings, number


# --- text, token by token ---


class Detokenizer:
    """The text each token adds, token by token, with tokenizers' incremental decoder (DecodeStream): each new
    token costs the same however long the text is. A token that only starts a character adds nothing until the
    one that completes it; `finish` gives any trailing partial character to the last piece."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.pieces = tokenizer, [], []
        self.backend = getattr(tokenizer, "backend", tokenizer)  # DecodeStream reads a tokenizers.Tokenizer itself
        self.settled = [True]  # settled[i]: nothing of ids[:i] is waiting to be shown
        self.stream = DecodeStream(skip_special_tokens=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        piece = self.stream.step(self.backend, token)
        self.pieces.append(piece or "")
        self.settled.append(piece is not None)
        return piece or ""

    def follow(self, ids: list[int]):
        """Make the text that of `ids`, keeping the pieces of the prefix it shares with the current one (beam
        search's best beam may change anywhere)."""
        same = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            same += 1
        if same < len(self.ids):
            while not self.settled[same]:
                same -= 1
            del self.ids[same:], self.pieces[same:], self.settled[same + 1:]
            self.stream = DecodeStream(ids=list(self.ids), skip_special_tokens=False)
        for token in ids[len(self.ids):]:
            self.push(token)

    def finish(self) -> list[str]:
        """The pieces, checked against one decode of the whole: they always add up to it."""
        pieces = list(self.pieces)
        text, joined = self.tokenizer.decode(self.ids), "".join(pieces)
        if text == joined:
            return pieces
        if pieces and text.startswith(joined):
            pieces[-1] += text[len(joined):]
            return pieces
        return _pieces_by_prefix(self.tokenizer, self.ids)  # a decoder the stream disagrees with: the slow way


def _pieces_by_prefix(tokenizer, ids: list[int]) -> list[str]:
    pieces, done = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1])
        piece = ""
        if text.startswith(done) and not text.endswith("\ufffd"):
            piece, done = text[len(done):], text
        pieces.append(piece)
    text = tokenizer.decode(ids)
    if pieces and text != done and text.startswith(done):
        pieces[-1] += text[len(done):]
    return pieces


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    detok = Detokenizer(tokenizer)
    for token in ids:
        detok.push(token)
    return detok.finish()


def encode_prompt(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    return torch.tensor(ids, dtype=torch.long, device=model.device)


# --- a run and how it grows ---


@dataclass
class Run:
    """One generation: the root, or a what-if branch of another run that took `forced` instead of `taken` at
    `step` (0-based, counting generated tokens) and went on with the same settings and seed."""

    settings: Settings
    prompt: str
    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)  # generated tokens, EOS left out
    pieces: list[str] = field(default_factory=list)  # the text each adds
    probs: list = field(default_factory=list)  # the probability each was chosen with (beam search: the model's)
    rows: list[dict] = field(default_factory=list)  # the trace, a row per step
    id: int = 0
    parent: int | None = None
    step: int | None = None
    taken: int | None = None
    forced: int | None = None
    beam_probs: list | None = None  # beam search: the best beam's probabilities after each step (float32 arrays)
    ended: str = ""  # "eos", "length", or "" while it runs or when it was stopped
    done: bool = False
    session: str = ""  # whose it is (a fine-tuned model's run needs its visitor's copy)
    specials: tuple[str, ...] = ()  # chat mode: the special tokens' texts, marked in the shown prompt

    @property
    def beam(self) -> bool:
        return self.settings.strategy == "beam search"

    def prefix(self, step: int) -> list[int]:
        """The token ids the candidates of `step` continue: the prompt and the tokens before it (for beam
        search, the beam that led going into the step)."""
        if step == 0:
            return list(self.prompt_ids)
        row = self.rows[step - 1] if step - 1 < len(self.rows) else {}
        if "beams" in row:
            return self.prompt_ids + row["beams"][0]
        return self.prompt_ids + self.new_ids[:step]

    def prefix_probs(self, step: int) -> list:
        """The colours of `prefix(step)`'s generated tokens."""
        if step == 0:
            return []
        if self.beam_probs is not None and step - 1 < len(self.beam_probs) and "beams" in self.rows[step - 1]:
            return [None if math.isnan(p) else p for p in self.beam_probs[step - 1]]
        return self.probs[:step]

    def label(self) -> str:
        return "generated" if self.parent is None else f"branch {self.id}"


def floats(values: list) -> array:
    """Probabilities as float32 (None, a token with no traced probability, as NaN)."""
    return array("f", [math.nan if v is None else v for v in values])


def stop_set(model, settings: Settings) -> set[int]:
    """The ids a run's text ends at (left out of its text): the model's EOS, or in chat mode its stop ids."""
    stops = settings.stop_ids(model)
    return set(stops) if isinstance(stops, list) else {stops} if stops is not None else set()


def cut_at_stop(new: list[int], stops: set[int]) -> int:
    """How many of `new` come before the first stop id."""
    return next((i for i, t in enumerate(new) if t in stops), len(new))


def _add_step(run: Run, step, detok: Detokenizer, stops: set[int]) -> bool:
    """Take in one `Step` of the library's stream; True when the text has ended."""
    row = step.trace.row(0) if step.trace is not None else None
    if row is not None:
        run.rows.append(row)
    if step.probs is not None:  # beam search: the best beam, whole, may change anywhere
        new = step.sequences[0].tolist()
        probs = step.probs[0].tolist()
        if run.beam_probs is not None:
            run.beam_probs.append(floats(probs))  # 4 bytes a number: a list for each step adds up
        cut = cut_at_stop(new, stops)
        new, probs = new[:cut], probs[:cut]
        detok.follow(new)
        run.new_ids, run.probs = new, probs
    else:
        token = int(step.tokens[0])
        if token in stops:
            return True
        run.new_ids.append(token)
        detok.push(token)
        run.probs.append(row.get("chosen_prob") if row is not None else None)
    run.pieces = detok.pieces
    return bool(step.finished.all())


def follow(model, run: Run, steps, detok: Detokenizer | None = None):
    """Grow `run` from the library's stream of steps, yielding it after each (and once more, done, at the end)."""
    detok = detok or Detokenizer(model.tokenizer)
    stops = stop_set(model, run.settings)
    ended = False
    for step in steps:
        ended = _add_step(run, step, detok, stops)
        if ended:
            break
        yield run
    run.pieces = detok.finish()
    run.ended = "eos" if ended else "length"
    run.done = True
    yield run


def uses_cache(settings: Settings) -> bool:
    """Whether a run's KV cache is kept for its branches: one sequence (sampling, greedy, contrastive decoding).
    Beam search's cache holds the beams of its last step; contrastive search cannot continue from a cache."""
    return settings.strategy in ("sampling", "contrastive decoding")


def chat_prompt(model, message: str, system: str = "") -> tuple[str, torch.Tensor]:
    """(the text, its ids) of a chat turn: the system message (if any) and the user's `message`, laid out with the
    model's chat template up to the start of the assistant's reply."""
    if getattr(model, "chat_template", None) is None:
        raise ValueError("this model has no chat template (a base model): turn chat mode off, or pick an instruct "
                         "model")
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + \
        [{"role": "user", "content": message}]
    text = model.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = model.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return text, torch.tensor(ids, dtype=torch.long, device=model.device)


def special_pieces(model) -> tuple[str, ...]:
    """The texts of the tokenizer's special tokens, which the page marks in a chat prompt."""
    added = model.tokenizer.get_added_tokens_decoder() if model.tokenizer is not None else {}
    return tuple(sorted({t.content for t in added.values() if t.special and t.content}, key=len, reverse=True))


def start(model, prompt: str, settings: Settings, config, amateur=None, cache=None, assistant=None, datastore=None):
    """(run, its stream of updates) for a new generation; everything is checked before the first step runs.
    `amateur`: contrastive decoding's amateur model; `assistant`, `datastore`: speculative decoding's draft model
    and n-gram datastore. In chat mode `prompt` is the user's message and the run's prompt is the rendered chat."""
    if settings.chat:
        prompt, ids = chat_prompt(model, prompt, settings.system)
    else:
        ids = encode_prompt(model, prompt)
    run = Run(settings, prompt, ids.tolist(), beam_probs=[] if settings.strategy == "beam search" else None)
    if settings.chat:
        run.specials = special_pieces(model)
    steps = model.stream(ids, settings.max_new_tokens, config, amateur_model=amateur, assistant_model=assistant,
                         assistant_datastore=datastore, cache=cache)
    return run, follow(model, run, steps)


def stream_text(model, prompt: str, max_new_tokens: int, config, amateur=None, settings: Settings | None = None):
    """An iterator of (pieces, probs, trace rows, done) as each token is chosen, and once more at the end with
    done=True."""
    settings = settings or Settings(strategy="beam search" if config.beams > 1 else "sampling")
    settings = replace(settings, max_new_tokens=int(max_new_tokens))
    _, updates = start(model, prompt, settings, config, amateur)
    return ((r.pieces, r.probs, r.rows, r.done) for r in updates)


# --- what-if branches ---


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
              step=step, taken=taken(parent, step), forced=token, specials=parent.specials)
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
    ids = torch.tensor(prefix + [token], dtype=torch.long, device=model.device)
    steps = model.stream(ids, remaining, config, amateur_model=amateur, assistant_model=assistant,
                         assistant_datastore=datastore, cache=cache)
    return run, _grow_branch(model, run, steps, detok, base, step), cache if uses_cache(settings) else None


def _grow_branch(model, run: Run, steps, detok: Detokenizer, base: list[int], at: int):
    """The branch's own steps after the forced token: their trace rows renumbered to count from the parent's
    start, beams given from the prompt on, and the text of beam search's best beam after the forced token."""
    stops = stop_set(model, run.settings)
    head_probs = list(run.probs)
    ended = False
    for step in steps:
        row = step.trace.row(0) if step.trace is not None else None
        if row is not None:
            row["step"] += at + 1
            if "beams" in row:
                row["beams"] = [base + b for b in row["beams"]]
            run.rows.append(row)
        if step.probs is not None:
            new, probs = step.sequences[0].tolist(), step.probs[0].tolist()
            run.beam_probs.append(floats(head_probs + probs))
            cut = cut_at_stop(new, stops)
            new, probs = new[:cut], probs[:cut]
            detok.follow(base + new)
            run.new_ids, run.probs = base + new, head_probs + probs
        else:
            token = int(step.tokens[0])
            if token in stops:
                ended = True
                break
            run.new_ids.append(token)
            detok.push(token)
            run.probs.append(row.get("chosen_prob") if row is not None else None)
        run.pieces = detok.pieces
        if bool(step.finished.all()):
            ended = True
            break
        yield run
    run.pieces = detok.finish()
    run.ended = "eos" if ended else "length"
    run.done = True
    yield run


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
    from .render import show_token

    if run.parent is None:
        return "the generated text"
    parent = "the text" if run.parent == 0 else f"branch {run.parent}"
    took = show_token(tokenizer, run.taken) if run.taken is not None else "(end)"
    return f"branch {run.id}: step {run.step + 1} of {parent}, {took} → {show_token(tokenizer, run.forced)}"


# --- numbers the views draw ---


def timeline(run: Run) -> list[dict]:
    """A record per step: the entropy (bits) of the model's distribution and of the final processed one, the
    chosen token's probability and rank, and how many tokens the last stage kept."""
    out = []
    for i, row in enumerate(run.rows):
        last = row["stages"][-1]
        out.append(dict(step=i + 1, model_entropy=row["entropy"]["model"], final_entropy=row["entropy"][last],
                        chosen_prob=run.probs[i] if i < len(run.probs) else row.get("chosen_prob"),
                        chosen_rank=row["chosen_rank"] + 1 if "chosen_rank" in row else None,
                        kept=row["kept"][last], token=row.get("chosen", run.new_ids[i] if i < len(run.new_ids)
                                                              else None)))
    return out


def draw(row: dict, n, seed: int = 0) -> tuple[list[float], list[int]]:
    """Draw `n` tokens from a step's final distribution, as the sampler would: (the exact probability of each
    traced candidate and, last, of all other tokens together; how many of the draws fell on each)."""
    n = number("draws", n, 1, MAX_DRAWS, integer=True)
    exact = list(row["probs"][row["stages"][-1]])
    exact.append(max(0.0, 1.0 - sum(exact)))
    weights = torch.tensor(exact, dtype=torch.float64)
    if float(weights.sum()) <= 0:
        raise ValueError("this step's final distribution holds no probability to draw from")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(row["step"]))
    picks = torch.multinomial(weights, n, replacement=True, generator=generator)
    return exact, torch.bincount(picks, minlength=len(exact)).tolist()


# --- the strategies' own numbers: the beam tree, speculative rounds, contrastive search's alpha ---


def candidate_status(tree: dict, i: int) -> str:
    """What became of candidate i of a beam-search step's trace `tree`: "ended" (its beam had finished before),
    "pruned", "finished" (kept, and it is EOS) or "kept"."""
    if tree["parent_finished"][i]:
        return "ended"
    if tree["kept_as"][i] < 0:
        return "pruned"
    return "finished" if tree["eos"][i] else "kept"


def beam_tree(rows: list[dict]) -> list[list[dict]]:
    """Every candidate beam search expanded, step by step: per step a list of nodes, each with its `parent` (the
    index of a node of the step before; None for the prompt), `token`, `score` (summed log-probability),
    `ranked` (the score with the length penalty, what beams are ranked by), `key` (stochastic beams: the
    perturbed key they are ranked by instead, else None), `status` ("kept", "finished": kept and ended with EOS,
    "pruned", or "ended": the carried-over continuation of a beam that had finished), `beam` (the index among
    the step's kept beams, or None) and `returned` (on the path to the beam returned). Impossible candidates
    (no probability) are left out."""
    steps, kept_at = [], {}  # kept_at: beam index of the step before -> node index there
    for t, row in enumerate(rows):
        tree = row.get("beam_tree")
        if tree is None:
            break
        nodes, kept_now = [], {}
        for i, token in enumerate(tree["token"]):
            if not tree["possible"][i]:
                continue
            beam = tree["kept_as"][i] if tree["kept_as"][i] >= 0 else None
            status = candidate_status(tree, i)
            node = dict(step=t, parent=kept_at.get(tree["parent"][i]) if t else None, parent_beam=tree["parent"][i],
                        token=token, score=tree["score"][i], ranked=tree["ranked_score"][i],
                        key=tree["key"][i] if "key" in tree else None, status=status, beam=beam, returned=False)
            if beam is not None:
                kept_now[beam] = len(nodes)
            nodes.append(node)
        steps.append(nodes)
        kept_at = kept_now
    # the returned beam: the best kept one after the last step, followed back to the prompt
    if steps:
        index = next((i for i, n in enumerate(steps[-1]) if n["beam"] == 0), None)
        for t in range(len(steps) - 1, -1, -1):
            if index is None:
                break
            steps[t][index]["returned"] = True
            index = steps[t][index]["parent"]
    return steps


def speculative_rounds(rows: list[dict]) -> list[dict]:
    """Speculative decoding's rounds, from the trace: per round the `drafted` tokens with the draft's and the
    model's probability of each (`draft_probs`, `model_probs`), which were `accepted`, how many in a row were
    (`n_accepted`), the `replacement` (the model's token in place of the first rejected draft, or after all of
    them), which drafts were copied (`copied`) and where each came from (`sources`: axw.speculative's ASSISTANT,
    TEXT by prompt lookup or DATASTORE), the steps it emitted (`steps`, 0-based), and
    the running `acceptance_rate` and `tokens_per_forward` after it."""
    rounds = []
    for i, row in enumerate(rows):
        spec = row.get("speculative")
        if spec is None:
            continue
        if not rounds or rounds[-1]["round"] != spec["round"]:
            rounds.append(dict(round=spec["round"], drafted=spec["drafted"], draft_probs=spec["draft_probs"],
                               model_probs=spec["model_probs"], accepted=spec["accepted"],
                               n_accepted=spec["n_accepted"], replacement=spec["replacement"], steps=[],
                               drafter=spec["drafter"], copied=spec.get("copied") or [False] * len(spec["drafted"]),
                               sources=spec["sources"]))
        rounds[-1]["steps"].append(i)
        rounds[-1].update(acceptance_rate=spec["acceptance_rate"], tokens_per_forward=spec["tokens_per_forward"])
    return rounds


SWEEP_ALPHAS = [i / 10 for i in range(11)]


def alpha_sweep(row: dict, alphas: list[float] = SWEEP_ALPHAS) -> list[dict]:
    """Contrastive search's choice at this step for each alpha, recomputed from the traced confidence and
    degeneration penalty (no forward needed: neither depends on alpha): per alpha the scores
    (1 - alpha) confidence - alpha penalty (a candidate with no probability never wins) and the `winner`'s
    index among the candidates and its `token`."""
    c = row["contrastive"]
    out = []
    for alpha in alphas:
        scores = [(1 - alpha) * p - alpha * d if p > 0 else -math.inf
                  for p, d in zip(c["confidence"], c["degeneration_penalty"])]
        best = max(range(len(scores)), key=scores.__getitem__)
        out.append(dict(alpha=alpha, scores=scores, winner=best, token=c["tokens"][best]))
    return out


# --- comparing texts: where they part, how varied, how likely ---


def departure(ids: list[int], reference: list[int]) -> int | None:
    """The first step (0-based) where `ids` differs from `reference` (where one ends before the other counts),
    or None when they are the same."""
    return None if ids == reference else shared_length(ids, reference)


def distinct_n(ids: list[int], n: int = 2) -> float | None:
    """Distinct-n (Li et al. 2016, arXiv:1510.03055): the share of the text's n-grams that are different, or
    None when it has none."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_share(ids: list[int], n: int = 4) -> float | None:
    """The share of the text's n-grams that already occurred earlier in it (a loop repeats nearly all of them),
    or None when it has none."""
    seen, repeated, total = set(), 0, 0
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        repeated += gram in seen
        total += 1
        seen.add(gram)
    return repeated / total if total else None


@torch.no_grad()
def mean_logprob(model, prompt_ids: list[int], new_ids: list[int]) -> float | None:
    """The mean log-probability the model gives the new tokens, each given what precedes it, from one forward
    pass over the prompt and the text (past the model's context, over its last max_seq_len tokens)."""
    if not new_ids:
        return None
    seq = (prompt_ids + new_ids)[-(model.max_seq_len + 1):]
    n = min(len(new_ids), len(seq) - 1)
    x = torch.tensor([seq[:-1]], dtype=torch.long, device=model.device)
    logp = model.net(x)[0].float().log_softmax(-1)
    targets = torch.tensor(seq[1:], device=logp.device)
    picked = logp[torch.arange(len(seq) - 1, device=logp.device), targets]
    return float(picked[-n:].mean())
