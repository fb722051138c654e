"""A generation request as the playground sees it: `Settings`, named as /generate's parameters, checked once
(the caps included) before any compute, and turned into the library's `GenerationConfig`.

The same names are the page's share links (`?prompt=...&strategy=beam+search&beams=3&seed=5`), so a link, an
API call and the controls all mean one thing. A model's own `generation_config.json` becomes the starting
settings with `from_generation_config`.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import asdict, dataclass, fields, replace

from axw import GenerationConfig
from axw.utils import check_number

from .caps import (FILTERS, MAX_BEAMS, MAX_CONTRASTIVE_K, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, STRATEGIES, TRACE_TOP)


def number(name, value, lo, hi, integer=False):
    """`value` if it is a finite number in [lo, hi] (a whole number when `integer`), else ValueError."""
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # sliders and JSON send whole numbers as floats
    return check_number(value, name, lo, hi, integer=integer)


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text for the model to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


# each filter: its label in messages, range (the top of top_k is the vocabulary), integer, GenerationConfig's
# parameter name, and the value that means off in /generate
FILTER_SPECS = dict(top_k=("top-k", 1, None, True, "k", 0), top_p=("top-p", 0.01, 1.0, False, "thres", 1.0),
                    min_p=("min-p", 0.0, 1.0, False, "min_p", 0.0),
                    top_a=("top-a", 0.0, 1.0, False, "min_p_ratio", 0.0))


@dataclass(frozen=True)
class Settings:
    """Every setting of one generation, as /generate's parameters with its defaults. `check` refuses what is
    outside the caps (ValueError saying what is allowed); `config` is the library's GenerationConfig."""

    strategy: str = "sampling"
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_a: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0
    beams: int = 4
    length_penalty: float = 0.0
    penalty_alpha: float = 0.6
    contrastive_k: int = 4
    amateur: str = ""
    cd_alpha: float = 0.1
    cd_beta: float = 0.5
    model: str = ""
    use_finetuned: bool = False

    # --- checks, before any compute ---

    def check(self, vocab: int | None = None) -> Settings:
        """A copy with whole numbers as ints, or ValueError. Settings the strategy does not use are not checked
        (as /generate always did); `vocab` bounds top_k when known."""
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        s = dict(
            repetition_penalty=number("repetition penalty", self.repetition_penalty, 0.5, 3.0),
            no_repeat_ngram_size=number("no-repeat n-gram size", self.no_repeat_ngram_size, 0, 10, integer=True),
            max_new_tokens=number("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS, integer=True),
            seed=number("seed", self.seed, 0, 2**31 - 1, integer=True))
        if self.strategy in ("sampling", "contrastive decoding"):
            s["temperature"] = number("temperature", self.temperature, 0.0, 5.0)
        if self.strategy == "sampling":
            for name, (label, lo, hi, integer, _, off) in FILTER_SPECS.items():
                value = getattr(self, name)
                if value != off or not isinstance(value, (int, float)) or isinstance(value, bool):
                    top = vocab if hi is None else hi
                    s[name] = number(label, value, lo, top if top is not None else math.inf, integer)
        elif self.strategy == "beam search":
            s.update(beams=number("beams", self.beams, 2, MAX_BEAMS, integer=True),
                     length_penalty=number("length penalty", self.length_penalty, -2.0, 2.0))
        elif self.strategy == "contrastive search":
            s.update(penalty_alpha=number("penalty alpha", self.penalty_alpha, 0.0, 1.0),
                     contrastive_k=number("contrastive k", self.contrastive_k, 1, MAX_CONTRASTIVE_K, integer=True))
        else:
            s.update(cd_alpha=number("contrastive decoding alpha", self.cd_alpha, 0.001, 1.0),
                     cd_beta=number("contrastive decoding beta", self.cd_beta, 0.0, 5.0))
        return replace(self, **s)

    def filters(self) -> dict:
        """The switched-on filters by name and value, in the order they chain."""
        return {name: getattr(self, name) for name in FILTERS if getattr(self, name) != FILTER_SPECS[name][5]}

    def config(self, model, trace: bool = True) -> GenerationConfig:
        """The library's settings for `model` (its EOS, its vocabulary for top_k), checked. Contrastive decoding's
        amateur model is passed beside it (`amateur_model=`), as generate takes it."""
        s = self.check(model.net.num_tokens)
        kw = dict(eos_token=model.eos_token_id, repetition_penalty=s.repetition_penalty,
                  no_repeat_ngram_size=s.no_repeat_ngram_size, seed=s.seed, trace=trace, trace_top=TRACE_TOP,
                  filter_logits_fn=[])
        if s.strategy == "sampling":
            chosen = s.filters()
            kw.update(temperature=s.temperature, filter_logits_fn=list(chosen),
                      filter_kwargs=[{FILTER_SPECS[n][4]: v} for n, v in chosen.items()])
        elif s.strategy == "beam search":
            kw.update(beams=s.beams, length_penalty=s.length_penalty)
        elif s.strategy == "contrastive search":
            kw.update(penalty_alpha=s.penalty_alpha, contrastive_k=s.contrastive_k)
        else:
            kw.update(temperature=s.temperature, contrastive_decode_kwargs=dict(alpha=s.cd_alpha, beta=s.cd_beta))
        return GenerationConfig(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


PARAMS = [f.name for f in fields(Settings)]
DEFAULTS = Settings()


def settings_from_dict(values) -> Settings:
    """Settings from a dict of /generate's parameters by name (those left out take its defaults)."""
    if values is None:
        return DEFAULTS
    if not isinstance(values, dict):
        raise ValueError(f"settings are a dict of /generate's parameters by name, got {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in PARAMS)
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}: /generate's parameters are {', '.join(PARAMS)}")
    return Settings(**values)


# --- share links: the query holds the prompt and the settings under /generate's names ---

LINK_EXCLUDED = {"use_finetuned"}  # a visitor's own fine-tuned copy cannot travel in a link


def to_query(prompt: str, settings: Settings, default_model: str = "", default_amateur: str = "") -> str:
    """The query string of a share link: the prompt, the strategy and seed always, every other setting that
    differs from /generate's default; the model and amateur when they are not the app's own."""
    values = dict(prompt=prompt)
    for name in PARAMS:
        value = getattr(settings, name)
        if name in LINK_EXCLUDED:
            continue
        if name == "model" and value in ("", default_model):
            continue
        if name == "amateur" and value in ("", default_amateur):
            continue
        if name in ("strategy", "seed") or value != getattr(DEFAULTS, name):
            values[name] = value
    return urllib.parse.urlencode({k: _text(v) for k, v in values.items()})


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _parse(name: str, raw: str):
    kind = type(getattr(DEFAULTS, name))
    if kind is str:
        return raw
    if kind is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name} in the link must be true or false, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} in the link must be a number, got {raw!r}") from None
    if kind is int:
        if not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"{name} in the link must be a whole number, got {raw!r}")
        return int(value)
    return value


def from_query(params) -> tuple[str | None, Settings | None]:
    """(prompt, Settings) from a share link's query (a mapping of names to strings); (None, None) when it holds
    none of ours. Every setting it gives is checked, whatever the strategy, so a link fills the controls with
    values they can hold; a bad one is a ValueError naming it. Names that are not ours are ignored."""
    values, prompt = {}, None
    for name, raw in dict(params).items():
        if name == "prompt":
            prompt = check_prompt(raw)
        elif name in PARAMS and name not in LINK_EXCLUDED:
            values[name] = _parse(name, raw)
    if prompt is None and not values:
        return None, None
    settings = Settings(**values)
    settings.check()  # the strategy first: its name is checked there
    for strategy in STRATEGIES:  # then every strategy's settings, so none slips through unchecked
        replace(settings, strategy=strategy).check()
    return prompt, settings.check()


# --- a model's own settings (its generation_config.json) as the starting ones ---

def from_generation_config(config: GenerationConfig | None) -> tuple[Settings, list[str]]:
    """The controls' starting settings from a model's GenerationConfig, and the names of what it asks for that
    the playground has no control for (left out). None gives /generate's defaults."""
    if config is None:
        return DEFAULTS, []
    values, unsupported = {}, []
    if config.beams > 1:
        values.update(strategy="beam search", beams=min(config.beams, MAX_BEAMS),
                      length_penalty=max(-2.0, min(2.0, config.length_penalty)))
    elif config.penalty_alpha is not None:
        values.update(strategy="contrastive search", penalty_alpha=config.penalty_alpha,
                      contrastive_k=min(config.contrastive_k, MAX_CONTRASTIVE_K))
    else:
        values.update(strategy="sampling", temperature=min(config.temperature, 5.0))
        fns = config.filter_logits_fn if isinstance(config.filter_logits_fn, list) else [config.filter_logits_fn]
        kws = config.filter_kwargs if isinstance(config.filter_kwargs, list) else [config.filter_kwargs]
        for fn, kw in zip(fns, kws + [{}] * len(fns)):
            if fn in FILTER_SPECS:
                param = FILTER_SPECS[fn][4]
                if param in (kw or {}):
                    values[fn] = kw[param]
                elif fn == "top_k":
                    unsupported.append("top_k without k")
            elif fn is not None:
                unsupported.append(str(fn))
        if [f for f in fns if f in FILTER_SPECS] != [f for f in FILTERS if f in fns]:
            unsupported.append("its filter order")
    values.update(repetition_penalty=min(max(config.repetition_penalty, 0.5), 3.0),
                  no_repeat_ngram_size=min(config.no_repeat_ngram_size, 10))
    if config.seed is not None and 0 <= config.seed < 2**31:
        values["seed"] = config.seed
    defaults = GenerationConfig()
    for name in ("sampler_order", "xtc_probability", "dynatemp_range", "mirostat_tau", "dry_multiplier",
                 "stochastic", "prompt_lookup_num_tokens"):
        if getattr(config, name) != getattr(defaults, name):
            unsupported.append(name)
    settings = Settings(**values)
    try:
        settings = settings.check()
    except ValueError as e:
        return DEFAULTS, [f"its settings ({e})"]
    return settings, unsupported
