"""Generations as the playground keeps them: a `Run` (token ids, the text each token adds, the probability each
was chosen with, the trace), streamed from `model.stream`. Token ids throughout: generated text is never tokenized
again. What-if branches of a run are `playground.branches`; the numbers the views draw of a run are
`playground.numbers`.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field, replace

import torch

from .detokenizer import Detokenizer
# Compare's numbers and the alpha sweep's values were defined here once: they keep these names
from .numbers.alpha_sweep import SWEEP_ALPHAS  # noqa: F401
from .numbers.metrics import departure, distinct_n, mean_logprob, repeated_ngram_share  # noqa: F401
from .settings import Settings


def encode_prompt(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    return torch.tensor(ids, dtype=torch.long, device=model.device)


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
    message: str = ""  # the prompt as typed (chat mode: the user's message, which `prompt` lays out)

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


def _add_step(run: Run, step, detok: Detokenizer, stops: set[int], head: list[int], head_probs: list) -> bool:
    """Take in one `Step` of the library's stream; True when the text has ended. The stream continues `head` (a
    branch's tokens up to the forced one, `head_probs` their probabilities; nothing for a new run): a branch's
    rows are renumbered to count from its parent's start, and its beams given from the prompt on."""
    row = step.trace.row(0) if step.trace is not None else None
    if row is not None:
        if run.step is not None:
            row["step"] += run.step + 1
            if "beams" in row:
                row["beams"] = [head + b for b in row["beams"]]
        run.rows.append(row)
    if step.probs is not None:  # beam search: the best beam, whole, may change anywhere
        new = step.sequences[0].tolist()
        probs = step.probs[0].tolist()
        if run.beam_probs is not None:
            run.beam_probs.append(floats(head_probs + probs))  # 4 bytes a number: a list for each step adds up
        cut = cut_at_stop(new, stops)
        new, probs = new[:cut], probs[:cut]
        detok.follow(head + new)
        run.new_ids, run.probs = head + new, head_probs + probs
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
    """Grow `run` from the library's stream of steps, yielding it after each (and once more, done, at the end).
    The stream continues what `run` holds already (a branch: the parent's tokens and the forced one, pushed to
    `detok`)."""
    detok = detok or Detokenizer(model.tokenizer)
    stops = stop_set(model, run.settings)
    head, head_probs = list(run.new_ids), list(run.probs)
    ended = False
    for step in steps:
        ended = _add_step(run, step, detok, stops, head, head_probs)
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
    message = prompt
    if settings.chat:
        prompt, ids = chat_prompt(model, prompt, settings.system)
    else:
        ids = encode_prompt(model, prompt)
    run = Run(settings, prompt, ids.tolist(), beam_probs=[] if settings.strategy == "beam search" else None,
              message=message)
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
