"""`GenerationConfig`: every decoding setting in one object, checked once.

Its field names are `generate`'s keyword arguments, so
`GenerationConfig(**kwargs)` accepts what `generate(**kwargs)` does (but the
inputs and model objects: `prompt_lens`, `generator`, `amateur_model`,
`assistant_model`). It round-trips through JSON (`to_dict` / `from_dict`), is
what the playground's controls, share links and API produce, and a model
folder may carry one as `generation_config.json` (`save_pretrained` /
`from_pretrained`), as transformers models do.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from .filters import FILTER_LOGITS_FN, identity
from .processors import build_filters
from .specs import (ASSISTANT_SCHEDULES, LIBRARY_SPECS, SAMPLER_ORDERS, SPEC, STRATEGIES,  # noqa: F401 (re-exported)
                    TRANSFORMERS_ALIASES, TRANSFORMERS_FILTER_ORDER, TRANSFORMERS_GENERATE_ARGUMENTS,
                    TRANSFORMERS_TOP_K, TRANSFORMERS_UNSUPPORTED)
from .structured import CONSTRAINTS, check_constraint
from .utils import check_number

GENERATION_CONFIG_NAME = "generation_config.json"
# DRY's default sequence breakers (text-generation-webui's), given as text
DRY_BREAKERS = ("\n", ":", '"', "*")


def _filter_name(fn):
    """Built-in filters by name (so the config serialises); others as given."""
    if fn is identity:
        return None
    for name, builtin in FILTER_LOGITS_FN.items():
        if fn is builtin:
            return name
    return fn


@dataclass
class GenerationConfig:
    """Every decoding setting. The strategy follows from them: `beams` > 1
    is beam search, `penalty_alpha` contrastive search, an assistant model, an
    n-gram datastore or `prompt_lookup_num_tokens` speculative decoding,
    `dola_layers` DoLa, anything else sampling (greedy at temperature 0)."""

    # sampling: filters (names in axw.filters, or callables) chained in order, then temperature
    temperature: float = 1.0
    filter_logits_fn: str | Callable | list | None = "top_k"
    filter_kwargs: dict | list = field(default_factory=dict)
    sampler_order: str = "filters_first"  # or "temperature_first" (transformers' and llama.cpp's order)
    # samplers beyond the filters (0 / None = off)
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat_tau: float | None = None
    mirostat_eta: float = 0.1
    # penalties (1 / 0 = off)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # token ids or text; None: newline, ':', '"', '*' when there is a tokenizer
    dry_sequence_breakers: list | None = None
    # beam search
    beams: int = 1
    length_penalty: float = 0.0
    stochastic: bool = False
    # contrastive search and contrastive decoding
    penalty_alpha: float | None = None
    contrastive_k: int = 4
    contrastive_decode_kwargs: dict | list = field(default_factory=lambda: dict(beta=0.5, alpha=0.1))
    # DoLa: "low", "high" or a list of layer numbers to contrast the last layer with (None = off)
    dola_layers: str | list | None = None
    # speculative decoding (with an assistant model and/or an n-gram datastore, or drafting by prompt lookup)
    num_assistant_tokens: int = 5
    num_assistant_tokens_schedule: str = "constant"
    assistant_confidence_threshold: float = 0.0  # stop drafting below this draft probability (0 = off)
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    # with an assistant or a datastore: copy a drafted token by prompt lookup where the text's last n tokens occurred
    # before (0 = off)
    assistant_lookup_ngram: int = 0
    # length, stopping, context, randomness, the trace
    max_new_tokens: int | None = None  # how many tokens generate adds when it is not given seq_len
    eos_token: int | list[int] | None = None  # generation stops at any of these ids
    restrict_to_max_seq_len: bool = True
    cache_kv: bool = True
    seed: int | None = None
    trace: bool = False
    trace_top: int = 10
    # structured output, one at a time (axw.structured): the text is one of `choices`, matches `regex` in full,
    # is JSON valid under `json_schema` (a dict or its JSON text), or a sentence of the Lark `grammar`
    choices: list[str] | None = None
    regex: str | None = None
    json_schema: dict | str | None = None
    grammar: str | None = None
    # the prompt's last n tokens are the constrained text's beginning (a continuation of one, as a what-if branch
    # is); 0: the constrained text starts after the prompt
    constrained_prompt_tail: int = 0

    def __post_init__(self):
        self._normalise_filters()
        for name, value in check_constraint(self.choices, self.regex, self.json_schema, self.grammar).items():
            setattr(self, name, value)
        check_number(self.constrained_prompt_tail, "constrained_prompt_tail", 0, integer=True)
        for spec in LIBRARY_SPECS:  # ranges and kinds, as declared in axw.specs
            value = getattr(self, spec.name)
            if value is not None or _DEFAULTS[spec.name] is not None:  # None is off where it is the default
                setattr(self, spec.name, spec.check(value))
        if self.dry_sequence_breakers is not None:
            if not isinstance(self.dry_sequence_breakers, (list, tuple)) or not all(
                    isinstance(b, str) and b or isinstance(b, int) and not isinstance(b, bool) and b >= 0
                    for b in self.dry_sequence_breakers):
                raise ValueError("dry_sequence_breakers must be a list of token ids and non-empty strings, got "
                                 f"{self.dry_sequence_breakers!r}")
            self.dry_sequence_breakers = list(self.dry_sequence_breakers)
        self._normalise_contrastive_decode_kwargs()
        if self.max_new_tokens is not None:  # the playground passes its length to generate, not in the settings
            SPEC["max_new_tokens"].check(self.max_new_tokens)
        if isinstance(self.eos_token, (list, tuple)):  # several stop ids (Llama 3 instruct lists three)
            if not self.eos_token:
                raise ValueError("eos_token is a token id or a non-empty list of them (None = none), got []")
            self.eos_token = [check_number(i, "eos_token", 0, integer=True, allowed="token ids >= 0")
                              for i in self.eos_token]
        elif self.eos_token is not None:
            check_number(self.eos_token, "eos_token", 0, integer=True,
                         allowed="a token id >= 0 or a list of them (None = none)")

    def _normalise_filters(self):
        fns, kwargs = self.filter_logits_fn, self.filter_kwargs
        if isinstance(fns, (list, tuple)):
            fns = [_filter_name(f) for f in fns]
            fns = [f for f in fns if f is not None]
        else:
            fns = _filter_name(fns)
        if isinstance(kwargs, (list, tuple)):
            kwargs = [dict(k) if isinstance(k, dict) else k for k in kwargs]
        elif isinstance(kwargs, dict):
            kwargs = dict(kwargs)
        elif kwargs is None:
            kwargs = {}
        build_filters(fns, kwargs)  # names, kinds and ranges, before any compute
        self.filter_logits_fn, self.filter_kwargs = fns, kwargs

    def _normalise_contrastive_decode_kwargs(self):
        kwargs = self.contrastive_decode_kwargs
        many = isinstance(kwargs, (list, tuple))
        for kw in (kwargs if many else [kwargs]):
            if not isinstance(kw, dict):
                raise ValueError(f"contrastive_decode_kwargs must be a dict of alpha and beta, got {kw!r}")
            unknown = set(kw) - {"alpha", "beta"}
            if unknown:
                raise ValueError(f"contrastive_decode_kwargs take alpha and beta, got {sorted(unknown)}")
            SPEC["cd_alpha"].check(kw.get("alpha", 0.1))
            SPEC["cd_beta"].check(kw.get("beta", 0.5))
        self.contrastive_decode_kwargs = [dict(kw) for kw in kwargs] if many else dict(kwargs)

    # --- what the strategy is ---

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def constraint(self) -> str | None:
        """The constraint's name (one of `axw.structured.CONSTRAINTS`), or None."""
        return next((k for k in CONSTRAINTS if getattr(self, k) is not None), None)

    # --- overrides, dicts, files ---

    def update(self, **overrides) -> GenerationConfig:
        """A copy with `overrides` applied and checked: axw's names or transformers' (`TRANSFORMERS_ALIASES`);
        an unknown name is refused with the closest ones."""
        return replace(self, **resolve_names(overrides)) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON-able values (a custom filter callable cannot be)."""
        fns = self.filter_logits_fn if isinstance(self.filter_logits_fn, list) else [self.filter_logits_fn]
        custom = [f for f in fns if f is not None and not isinstance(f, str)]
        if custom:
            raise ValueError(f"a custom filter ({custom[0]!r}) cannot be written as JSON; use a built-in filter name")
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GenerationConfig:
        if not isinstance(values, dict):
            raise ValueError(f"a generation config is a dict of settings, got {type(values).__name__}")
        return cls().update(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `generation_config.json` into `folder` (a model folder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / GENERATION_CONFIG_NAME
        path.write_text(json.dumps(dict(format="axw", **self.to_dict()), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> GenerationConfig:
        """Read a model folder's `generation_config.json`: one written by axw,
        or transformers' (its sampling settings mapped onto axw's, with
        transformers' temperature-first order)."""
        path = Path(folder) / GENERATION_CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{folder} has no {GENERATION_CONFIG_NAME}")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} does not hold a dict of settings")
        if values.pop("format", None) == "axw":
            return cls.from_dict(values)
        return cls.from_transformers(values)

    @classmethod
    def from_transformers(cls, config) -> GenerationConfig:
        """axw's settings for a transformers `GenerationConfig` (or its dict): its sampling settings with
        transformers' meaning (temperature first; greedy unless do_sample), beams, `max_new_tokens` and EOS. The
        rest (lengths in other forms, token ids other than EOS) is not a decoding setting here and is left out."""
        values = config.to_dict() if hasattr(config, "to_dict") and not isinstance(config, dict) else config
        if not isinstance(values, dict):
            raise ValueError(f"a transformers GenerationConfig or its dict, got {type(config).__name__}")
        return cls.from_dict(from_transformers(values))


_DEFAULTS = {f.name: f.default for f in fields(GenerationConfig) if f.default is not MISSING}
FIELDS = [f.name for f in fields(GenerationConfig)]
_dataclass_init = GenerationConfig.__init__
# transformers' names that are one of axw's settings under another name (or the same)
TRANSFORMERS_NAME_MAP = dict(num_beams="beams", eos_token_id="eos_token", use_cache="cache_kv",
                             max_new_tokens="max_new_tokens")


@functools.wraps(_dataclass_init)
def _init(self, *args, **kwargs):
    """GenerationConfig's fields by position or name, or transformers' names for them."""
    _dataclass_init(self, *args, **resolve_names(kwargs))


GenerationConfig.__init__ = _init


def unknown_names(names: list[str]) -> str:
    """What to say of settings that are neither axw's nor transformers' names it takes: the closest names, and
    which are transformers' settings axw does not have."""
    parts = []
    for name in names:
        if name in TRANSFORMERS_UNSUPPORTED:
            parts.append(f"{name} is transformers' setting, which axw does not have")
            continue
        if name in TRANSFORMERS_GENERATE_ARGUMENTS:
            parts.append(f"{name} is an argument of generate, not a setting: pass it to generate")
            continue
        close = difflib.get_close_matches(str(name), [*FIELDS, *TRANSFORMERS_ALIASES], n=3, cutoff=0.6)
        parts.append(f"{name}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return (f"unknown generation setting{'s' * (len(names) > 1)}: {'; '.join(parts)}. The settings: GenerationConfig's "
            "fields (axw.GenerationConfig), or transformers' names for them (axw.specs.TRANSFORMERS_ALIASES)")


def resolve_names(kwargs: dict) -> dict:
    """`kwargs` with transformers' names (`TRANSFORMERS_ALIASES`) put as axw's settings; ValueError for an unknown
    name, or for the same setting given by both names."""
    unknown = [k for k in kwargs if k not in FIELDS and k not in TRANSFORMERS_ALIASES]
    if unknown:
        raise ValueError(unknown_names(unknown))
    aliased = {k: v for k, v in kwargs.items() if k in TRANSFORMERS_ALIASES}
    if not aliased:
        return kwargs
    translated = transformers_settings(aliased)
    both = sorted(set(translated) & set(kwargs) - set(TRANSFORMERS_ALIASES))
    if both:
        raise ValueError(f"{', '.join(both)} given twice: by axw's name and by transformers' "
                         f"({', '.join(sorted(aliased))}); give one")
    return {**translated, **{k: v for k, v in kwargs.items() if k not in aliased}}


def transformers_settings(values: dict) -> dict:
    """axw's settings for transformers' names (a subset of `TRANSFORMERS_ALIASES`)."""
    out = {TRANSFORMERS_NAME_MAP[k]: v for k, v in values.items() if k in TRANSFORMERS_NAME_MAP}
    sample = values.get("do_sample")
    if sample not in (None, True, False):
        raise ValueError(f"do_sample must be True or False, got {sample!r}")
    if sample is True and values.get("top_k") is None:
        values = dict(values, top_k=TRANSFORMERS_TOP_K)
    fns, kwargs = [], []
    for name in TRANSFORMERS_FILTER_ORDER:
        value, spec = values.get(name), SPEC[name]
        if value is not None and not (spec.off is not None and value == spec.off and not isinstance(value, bool)):
            fns.append(spec.filter)
            kwargs.append({spec.param: value})
    if fns or sample is not None:
        out.update(filter_logits_fn=fns, filter_kwargs=kwargs)
    if sample is True:
        out["sampler_order"] = "temperature_first"
    elif sample is False and (values.get("num_beams") or 1) <= 1:
        out["temperature"] = 0.0
    return out


def from_transformers(values: dict) -> dict:
    """axw settings for a transformers `generation_config.json`'s: sampling (temperature first, top_k 50 unless
    given) or greedy, beams, the penalties, contrastive search, `max_new_tokens` and EOS (other token ids and
    lengths are not decoding settings here)."""
    sample = bool(values.get("do_sample", False))
    out: dict[str, Any] = {"sampler_order": "temperature_first", "temperature": 0.0}
    if sample:  # the filters by transformers' names, with its top_k 50 unless given
        filters = {k: values[k] for k in TRANSFORMERS_FILTER_ORDER if k in values}
        out.update(transformers_settings({"do_sample": True, **filters}))
        out["temperature"] = 1.0 if values.get("temperature") is None else values["temperature"]
    for key in ("max_new_tokens", "eos_token_id"):
        if values.get(key) is not None:
            out[TRANSFORMERS_NAME_MAP[key]] = values[key]
    for key in ("repetition_penalty", "no_repeat_ngram_size", "penalty_alpha", "dola_layers"):
        if values.get(key) is not None:
            out[key] = values[key]
    if values.get("penalty_alpha") is not None and values.get("top_k"):
        out["contrastive_k"] = values["top_k"]
    if (values.get("num_beams") or 1) > 1:
        out.update(beams=values["num_beams"],
                   length_penalty=1.0 if values.get("length_penalty") is None else values["length_penalty"])
    return out
