"""Structured output: the text constrained to a format, as a stage of the pipeline.

One constraint at a time (`GenerationConfig`'s `choices`, `regex`, `json_schema` or `grammar`), compiled by
llguidance (guidance-ai/llguidance: an Earley parser over a lexer, computing each step's allowed tokens from the
model's own tokenizer). `check_constraint` refuses a bad one before any compute (two at once, an empty choice
list, a schema past the size cap, an invalid regex, schema or grammar); `Constraint` compiles it for a
tokenizer and refuses one the tokenizer cannot write; `GrammarMask` is the stage: at each step, each row's
allowed tokens, everything else at -inf, so what the model keeps is its own distribution renormalised over them
(the trace records how many tokens that is and the share of the model's probability they hold). EOS is allowed
only where the constraint accepts the text, and once it is complete EOS is all that is allowed: the run stops.

Each row has its own matcher, which follows the row's generated tokens wherever they come from: a sampled or
beam-searched token, a speculative draft (rolled back with the cache when rejected), beams reordered
(`reorder`). The mask costs about ten microseconds a step on the bundled model's 2,048 tokens
(benchmarks/structured.py).
"""

from __future__ import annotations

import functools
import json
import weakref

import torch
from torch import Tensor

from .filters import NEG_INF
from .processors import Processor

CONSTRAINTS = ("choices", "regex", "json_schema", "grammar")
WHAT = dict(choices="choice list", regex="regex", json_schema="JSON schema", grammar="Lark grammar")
MAX_CONSTRAINT_CHARS = 20_000  # a schema, grammar or regex past this is refused (a shared machine compiles it)
MAX_CHOICES = 1_000
# each byte's 8 bits, least significant first: llguidance's mask, one bit per token, read as bools in one lookup
BITS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()
JSON_OPTIONS = {"whitespace_flexible": False}


def check_constraint(choices=None, regex=None, json_schema=None, grammar=None) -> dict:
    """The constraint settings, checked and normalised (choices a list of strings, a schema a dict): ValueError
    for two at once, a wrong kind, an empty choice list or pattern, one past the size cap, or one llguidance
    cannot compile. The dict has the four names, all None but at most one."""
    given = {k: v for k, v in dict(choices=choices, regex=regex, json_schema=json_schema, grammar=grammar).items()
             if v is not None}
    if len(given) > 1:
        raise ValueError(f"one constraint at a time: got {' and '.join(given)}; give one of {', '.join(CONSTRAINTS)}")
    out = dict.fromkeys(CONSTRAINTS)
    if not given:
        return out
    (kind, value), = given.items()
    value = NORMALISE[kind](value)
    size = len(canonical(kind, value))
    if size > MAX_CONSTRAINT_CHARS:
        raise ValueError(f"the {WHAT[kind]} has {size:,} characters; at most {MAX_CONSTRAINT_CHARS:,} are allowed")
    compiled(kind, canonical(kind, value))
    out[kind] = value
    return out


def _choices(value) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"choices must be a list of strings (the text is exactly one of them), got {value!r}")
    if not value:
        raise ValueError("choices is an empty list: give at least one answer the text may be")
    if len(value) > MAX_CHOICES:
        raise ValueError(f"choices has {len(value)} answers; at most {MAX_CHOICES} are allowed")
    bad = [c for c in value if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"each choice must be a non-empty string, got {bad[0]!r}")
    return list(value)


def _text(kind: str):
    def normalise(value) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{kind} must be a non-empty string (a {WHAT[kind]}), got {value!r}")
        return value
    return normalise


def _schema(value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"json_schema must be a JSON schema: a dict, or its JSON text, got {value!r}")
    return value


NORMALISE = dict(choices=_choices, regex=_text("regex"), json_schema=_schema, grammar=_text("grammar"))


def canonical(kind: str, value) -> str:
    """The constraint as one string (what the cache and the size cap read)."""
    if kind not in ("choices", "json_schema"):
        return value
    try:
        return json.dumps(value, sort_keys=kind == "json_schema", allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{kind} must hold only what JSON can: {e}") from None


@functools.lru_cache(maxsize=256)
def compiled(kind: str, text: str) -> str:
    """llguidance's grammar for a constraint (`canonical` text), validated; ValueError saying what is wrong."""
    import llguidance as llg

    if kind == "choices":  # one alternative per answer, each a string literal
        grammar = llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in json.loads(text)))
    elif kind == "regex":
        grammar = llg.LLMatcher.grammar_from_regex(text)
    elif kind == "json_schema":
        # compact JSON, no free whitespace between items (a small model would fill the text with newlines); the
        # schema's own "x-guidance" options may say otherwise
        grammar = llg.LLMatcher.grammar_from_json_schema(text, defaults=JSON_OPTIONS)
    else:
        grammar = llg.LLMatcher.grammar_from_lark(text)
    try:
        error = llg.LLMatcher.validate_grammar(grammar)
    except (RuntimeError, TypeError) as e:  # (llguidance's own errors are messages, but be sure)
        error = str(e)
    if error:
        raise ValueError(f"the {WHAT[kind]} is not valid: {error.strip()}")
    return grammar


# --- one tokenizer's view: llguidance's tokenizer, built once per tokenizer ---

_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer, vocab: int, eos: list[int]):
    """llguidance's `LLTokenizer` for a `tokenizers.Tokenizer` (or an `axw.Tokenizer`), over the model's
    `vocab` ids, `eos` its end-of-text ids: from the tokenizer's own JSON (byte-level BPE, SentencePiece-style
    byte fallback: GPT-2's, Llama's, the bundled one), else from each token's text. Cached per tokenizer."""
    import llguidance as llg

    backend = getattr(tokenizer, "backend", tokenizer)
    n = max(vocab, backend.get_vocab_size(with_added_tokens=True))
    key = (n, tuple(eos))
    cache = _TOKENIZERS.setdefault(backend, {})
    if key not in cache:
        try:
            cache[key] = llg.LLTokenizer(backend.to_str(), n_vocab=n, eos_token=list(eos))
        except (ValueError, RuntimeError):  # no decoder llguidance knows: each token's text
            cache[key] = llg.LLTokenizer(llg.TokenizerWrapper(TokenTexts(backend, n, eos)), n_vocab=n,
                                         eos_token=list(eos))
    return cache[key]


class TokenTexts:
    """A tokenizer as llguidance's `TokenizerWrapper` reads one: each id's bytes, special ids marked."""

    def __init__(self, backend, n: int, eos: list[int]):
        special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special} | set(eos)
        self.eos_token_id, self.bos_token_id = eos[0], None
        self.special_token_ids = sorted(i for i in special if i < n)
        self.tokens = [b"" if i in special else backend.decode([i], skip_special_tokens=False).encode("utf-8")
                       for i in range(n)]
        self.backend = backend

    def __call__(self, text):
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return self.backend.encode(text, add_special_tokens=False).ids


class Constraint:
    """A checked constraint compiled for one model's tokenizer: `matcher()` gives a fresh matcher, `stage(start)`
    the pipeline stage of a run whose generated tokens start at position `start`. ValueError when the
    tokenizer cannot write any text the constraint allows (or, for choices, one of the answers)."""

    def __init__(self, kind: str, value, tokenizer, vocab: int, eos: list[int]):
        import llguidance as llg

        self.kind, self.value, self.vocab, self.eos = kind, value, vocab, list(eos)
        self.tokenizer = ll_tokenizer(tokenizer, vocab, eos)
        self.words = (self.tokenizer.vocab_size + 31) // 32
        self.start = llg.LLMatcher(self.tokenizer, compiled(kind, canonical(kind, value)), log_level=0)
        if self.start.is_error():
            raise ValueError(f"the {WHAT[kind]} cannot be used with this tokenizer: {self.start.get_error().strip()}")
        first = self.allowed([self.start])[0]
        first[self.eos] = False
        if not bool(first.any()):  # (EOS alone is no text: llguidance allows it where its lexer has died)
            raise ValueError(f"the {WHAT[kind]} allows no text this model's tokenizer can write")
        if kind == "choices":
            for choice in value:
                m = self.start.deep_copy()
                ids = self.tokenizer.tokenize_str(choice)
                if (self.tokenizer.decode_str(ids) != choice or m.try_consume_tokens(ids) < len(ids)
                        or not m.is_accepting()):
                    raise ValueError(f"the choice {choice!r} cannot be written with this model's tokenizer")

    def matcher(self):
        return self.start.deep_copy()

    def check_prompt(self, tokens: Tensor, tail: int):
        """ValueError unless each row's last `tail` tokens of the prompt (b, n) are a beginning the constraint
        allows (a constrained text continued: a what-if branch's forced token, say)."""
        if tail > tokens.shape[1]:
            raise ValueError(f"constrained_prompt_tail={tail} is longer than the prompt ({tokens.shape[1]} tokens)")
        for row in (tokens[:, tokens.shape[1] - tail:].tolist() if tail else []):
            m = self.matcher()
            taken = m.try_consume_tokens(row)
            if taken < len(row):
                raise ValueError(f"the {WHAT[self.kind]} does not allow the text the prompt has begun: token "
                                 f"{row[taken]} after {self.tokenizer.decode_str(row[:taken])!r}")

    def allowed(self, matchers: list) -> Tensor:
        """(len(matchers), vocab) bools: the tokens each matcher allows next."""
        words = torch.empty((len(matchers), self.words), dtype=torch.int32)
        for i, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(words[i].data_ptr(), self.words * 4)
        return BITS[words.view(torch.uint8).long()].flatten(1)[:, :self.vocab]

    def stage(self, start: int) -> GrammarMask:
        return GrammarMask(self, start)

    def describe(self) -> str:
        """The constraint in a few words, for a stage's label."""
        if self.kind == "choices":
            return "one of " + " / ".join(self.value)
        return WHAT[self.kind]


class GrammarMask(Processor):
    """The constraint's mask (llguidance): the tokens the constraint allows next keep their logits, every other
    is -inf, so the distribution after it is the model's renormalised over the allowed tokens. Each row's matcher
    follows that row's generated tokens (from position `start` on): it consumes the new ones and rolls back
    those no longer there (rejected speculative drafts). A row whose text the constraint has ended (its EOS read)
    or cannot follow (a rejected draft, a dead beam) is left as it is: none of its tokens will be kept."""

    name = "grammar"

    def __init__(self, constraint: Constraint, start: int):
        self.constraint, self.start = constraint, start
        self.matchers: list = []
        self.consumed: list[list[int]] = []

    def __call__(self, logits, tokens, valid=None):
        b = logits.shape[0]
        if not self.matchers:
            self.matchers = [self.constraint.matcher() for _ in range(b)]
            self.consumed = [[] for _ in range(b)]
        follows = [self.follow(i, row) for i, row in enumerate(tokens[:, self.start:].tolist())]
        allowed = self.constraint.allowed(self.matchers)
        if not all(follows):
            allowed |= ~torch.tensor(follows)[:, None]
        vocab = logits.shape[-1]
        if allowed.shape[-1] < vocab:  # ids past the tokenizer's: never text
            allowed = torch.cat((allowed, allowed.new_zeros((b, vocab - allowed.shape[-1]))), dim=-1)
        return torch.where(allowed.to(logits.device), logits, NEG_INF)

    def follow(self, i: int, generated: list[int]) -> bool:
        """Bring row i's matcher to its `generated` tokens; False when it cannot follow them (see the class)."""
        matcher, have = self.matchers[i], self.consumed[i]
        if generated[:len(have)] != have:  # tokens taken back: roll back to what is still there
            same = next((k for k, (a, c) in enumerate(zip(have, generated)) if a != c), min(len(have), len(generated)))
            matcher.rollback(len(have) - same)
            del have[same:]
        new = generated[len(have):]
        if new:
            took = matcher.try_consume_tokens(new)
            have.extend(new[:took])
            if took < len(new):
                return False
        return not (have and have[-1] in self.constraint.eos)

    def reorder(self, index: Tensor):
        """Rows follow `index` (beam search): a row kept twice gets a copy of its matcher."""
        if not self.matchers:
            return
        seen, matchers, consumed = set(), [], []
        for j in index.tolist():
            matchers.append(self.matchers[j].deep_copy() if j in seen else self.matchers[j])
            consumed.append(list(self.consumed[j]))
            seen.add(j)
        self.matchers, self.consumed = matchers, consumed


def prepare(wrapper, config):
    """A run's config and its `Constraint` (None without one): the constraint compiled for the model's tokenizer,
    with the model's EOS as the stop id when the config names none (a constrained run stops when the text is
    complete). ValueError, before any compute, without a tokenizer or an EOS."""
    from dataclasses import replace

    kind = next((k for k in CONSTRAINTS if getattr(config, k) is not None), None)
    if kind is None:
        return config, None
    tokenizer = getattr(wrapper, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{kind}: a constraint needs the model's tokenizer (model.tokenizer) to know what each "
                         "token writes")
    eos = config.eos_token
    if eos is None:
        eos = getattr(wrapper, "eos_token_id", None)
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError(f"{kind}: a constraint ends the text with an end-of-text token; the model has none, so "
                             "pass eos_token")
        config = replace(config, eos_token=eos)
    eos = eos if isinstance(eos, list) else [eos]
    return config, Constraint(kind, getattr(config, kind), tokenizer, wrapper.net.num_tokens, eos)
