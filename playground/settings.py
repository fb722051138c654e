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

from .caps import (ASSISTANT_SCHEDULES, DRAFTERS, FILTERS, LOOKUP_NGRAM, MAX_BEAMS, MAX_CONTRASTIVE_K, MAX_DRAFT_TOKENS,
                   MAX_NEW_TOKENS, MAX_PROMPT_CHARS, SAMPLER_ORDERS, STRATEGIES, TRACE_TOP)


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
                    top_a=("top-a", 0.0, 1.0, False, "min_p_ratio", 0.0),
                    typical_p=("typical-p", 0.01, 1.0, False, "mass", 1.0),
                    epsilon_cutoff=("epsilon cutoff", 0.0, 0.5, False, "epsilon", 0.0),
                    eta_cutoff=("eta cutoff", 0.0, 0.5, False, "epsilon", 0.0),
                    top_h=("top-H", 0.0, 1.0, False, "top_h", 0.0),
                    top_n_sigma=("top-n-sigma", 0.0, 10.0, False, "n", 0.0))
# the other settings with a range: label in messages, low, high, integer
RANGES = dict(
    repetition_penalty=("repetition penalty", 0.5, 3.0, False),
    no_repeat_ngram_size=("no-repeat n-gram size", 0, 10, True),
    max_new_tokens=("max new tokens", 1, MAX_NEW_TOKENS, True), seed=("seed", 0, 2**31 - 1, True),
    temperature=("temperature", 0.0, 5.0, False), beams=("beams", 2, MAX_BEAMS, True),
    length_penalty=("length penalty", -2.0, 2.0, False), penalty_alpha=("penalty alpha", 0.0, 1.0, False),
    contrastive_k=("contrastive k", 1, MAX_CONTRASTIVE_K, True),
    cd_alpha=("contrastive decoding alpha", 0.001, 1.0, False), cd_beta=("contrastive decoding beta", 0.0, 5.0, False),
    xtc_probability=("XTC probability", 0.0, 1.0, False), xtc_threshold=("XTC threshold", 0.0, 1.0, False),
    dynatemp_range=("dynamic temperature range", 0.0, 5.0, False),
    dynatemp_exponent=("dynamic temperature exponent", 0.01, 10.0, False),
    mirostat_tau=("mirostat tau", 0.0, 20.0, False), mirostat_eta=("mirostat eta", 0.001, 1.0, False),
    dry_multiplier=("DRY multiplier", 0.0, 5.0, False), dry_base=("DRY base", 1.0, 4.0, False),
    dry_allowed_length=("DRY allowed length", 1, 20, True),
    num_assistant_tokens=("draft tokens per round", 1, MAX_DRAFT_TOKENS, True))
# the choices: label in messages, allowed values
CHOICES = dict(sampler_order=("sampler order", SAMPLER_ORDERS), drafter=("drafter", DRAFTERS),
               num_assistant_tokens_schedule=("draft schedule", ASSISTANT_SCHEDULES))
# which settings each strategy reads (besides those every strategy reads); the others are not checked
SAMPLING = ["temperature", "sampler_order", *FILTERS]
USES = {
    "sampling": [*SAMPLING, "xtc_probability", "xtc_threshold", "dynatemp_range", "dynatemp_exponent", "mirostat_tau",
                 "mirostat_eta"],
    "beam search": ["beams", "length_penalty", "stochastic"],
    "contrastive search": ["penalty_alpha", "contrastive_k"],
    "contrastive decoding": ["temperature", "cd_alpha", "cd_beta"],
    "speculative decoding": [*SAMPLING, "dynatemp_range", "dynatemp_exponent", "drafter", "num_assistant_tokens",
                             "num_assistant_tokens_schedule"],
}
EVERY_STRATEGY = ["max_new_tokens", "seed", "repetition_penalty", "no_repeat_ngram_size", "dry_multiplier", "dry_base",
                  "dry_allowed_length", "force_step", "force_token"]


@dataclass(frozen=True)
class Settings:
    """Every setting of one generation, as /generate's parameters with its defaults. `check` refuses what is
    outside the caps (ValueError saying what is allowed); `config` is the library's GenerationConfig. Every
    sampler is off at its default (its neutral value), so a request that leaves it out means what it always did.
    `force_step` > 0 asks for a what-if branch: the same run with token `force_token` forced at that step
    (1-based) and continued from there."""

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
    # the samplers since x-transformers' four, and their order (all off by default)
    sampler_order: str = "filters_first"
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_h: float = 0.0
    top_n_sigma: float = 0.0  # 0 = off (the filter itself at n = 0 would keep only the top token)
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat_tau: float = 0.0  # 0 = off
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # stochastic beam search; speculative decoding
    stochastic: bool = False
    drafter: str = "draft model"
    num_assistant_tokens: int = 5
    num_assistant_tokens_schedule: str = "constant"
    # a what-if branch: force token `force_token` at step `force_step` (1-based; 0 = none)
    force_step: int = 0
    force_token: int = 0
    # chat mode: the prompt is the user's message, laid out with the model's chat template after `system` (if any)
    chat: bool = False
    system: str = ""

    # --- checks, before any compute ---

    def reads(self) -> list[str]:
        """The settings this strategy reads (stochastic beam search reads the sampling settings too)."""
        uses = EVERY_STRATEGY + USES[self.strategy]
        if self.strategy == "beam search" and self.stochastic is True:
            uses += SAMPLING
        return uses

    def check(self, vocab: int | None = None) -> Settings:
        """A copy with whole numbers as ints, or ValueError. Settings the strategy does not use are not checked
        (as /generate always did); `vocab` bounds top_k and force_token when known."""
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        s = {}
        for name in self.reads():
            value = getattr(self, name)
            if name in FILTER_SPECS:
                label, lo, hi, integer, _, off = FILTER_SPECS[name]
                if value != off or not isinstance(value, (int, float)) or isinstance(value, bool):
                    top = vocab if hi is None else hi
                    s[name] = number(label, value, lo, top if top is not None else math.inf, integer)
            elif name in RANGES:
                label, lo, hi, integer = RANGES[name]
                s[name] = number(label, value, lo, hi, integer)
            elif name == "stochastic":
                if not isinstance(value, bool):
                    raise ValueError(f"stochastic must be true or false, got {value!r}")
            elif name in CHOICES:
                label, allowed = CHOICES[name]
                if not isinstance(value, str) or value not in allowed:
                    raise ValueError(f"{label} must be one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(self.chat, bool):
            raise ValueError(f"chat must be true or false, got {self.chat!r}")
        if not isinstance(self.system, str) or len(self.system) > MAX_PROMPT_CHARS:
            raise ValueError(f"system must be a text of at most {MAX_PROMPT_CHARS} characters (the system message "
                             "of chat mode)")
        s["force_step"] = number("force_step", self.force_step, 0, s["max_new_tokens"], integer=True)
        if s["force_step"]:
            top = vocab - 1 if vocab is not None else math.inf
            s["force_token"] = number("force_token (a token id)", self.force_token, 0, top, integer=True)
        return replace(self, **s)

    def filters(self) -> dict:
        """The switched-on filters by name and value, in the order they chain."""
        return {name: getattr(self, name) for name in FILTERS if getattr(self, name) != FILTER_SPECS[name][5]}

    def sampling(self) -> dict:
        """GenerationConfig's sampling settings: temperature, the filters chained, their order."""
        chosen = self.filters()
        kw = dict(temperature=self.temperature, filter_logits_fn=list(chosen),
                  filter_kwargs=[{FILTER_SPECS[n][4]: v} for n, v in chosen.items()])
        if self.sampler_order != "filters_first":
            kw["sampler_order"] = self.sampler_order
        if self.dynatemp_range and self.strategy != "beam search":
            kw.update(dynatemp_range=self.dynatemp_range, dynatemp_exponent=self.dynatemp_exponent)
        return kw

    def config(self, model, trace: bool = True) -> GenerationConfig:
        """The library's settings for `model` (its EOS, its vocabulary for top_k), checked. Contrastive decoding's
        amateur model and speculative decoding's assistant are passed beside it (`amateur_model=`,
        `assistant_model=`), as generate takes them."""
        s = self.check(model.net.num_tokens)
        kw = dict(eos_token=self.stop_ids(model), repetition_penalty=s.repetition_penalty,
                  no_repeat_ngram_size=s.no_repeat_ngram_size, seed=s.seed, trace=trace, trace_top=TRACE_TOP,
                  filter_logits_fn=[])
        if s.dry_multiplier:
            kw.update(dry_multiplier=s.dry_multiplier, dry_base=s.dry_base, dry_allowed_length=s.dry_allowed_length)
        if s.strategy == "sampling":
            kw.update(s.sampling())
            if s.xtc_probability:
                kw.update(xtc_probability=s.xtc_probability, xtc_threshold=s.xtc_threshold)
            # greedy skips the sampling stages, mirostat among them (and the library's mirostat would then
            # update a target it never set)
            if s.mirostat_tau and s.temperature > 0:
                kw.update(mirostat_tau=s.mirostat_tau, mirostat_eta=s.mirostat_eta)
        elif s.strategy == "beam search":
            kw.update(beams=s.beams, length_penalty=s.length_penalty)
            if s.stochastic:
                kw.update(stochastic=True, **s.sampling())
        elif s.strategy == "contrastive search":
            kw.update(penalty_alpha=s.penalty_alpha, contrastive_k=s.contrastive_k)
        elif s.strategy == "contrastive decoding":
            kw.update(temperature=s.temperature, contrastive_decode_kwargs=dict(alpha=s.cd_alpha, beta=s.cd_beta))
        else:
            kw.update(s.sampling(), num_assistant_tokens=s.num_assistant_tokens,
                      num_assistant_tokens_schedule=s.num_assistant_tokens_schedule)
            if s.drafter == "prompt lookup":
                kw["prompt_lookup_num_tokens"] = s.num_assistant_tokens
            elif s.drafter == "draft model + prompt lookup":
                kw["assistant_lookup_ngram"] = LOOKUP_NGRAM
        return GenerationConfig(**kw)

    def stop_ids(self, model) -> int | list[int] | None:
        """Where the text ends: in chat mode any of the model's stop ids (its EOS and end-of-turn tokens), else its
        EOS."""
        stops = list(getattr(model, "stop_token_ids", None) or [])
        if self.chat and stops:
            return stops
        return model.eos_token_id

    def unforced(self) -> Settings:
        """The same settings without the what-if branch."""
        return replace(self, force_step=0, force_token=0)

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

# the filters a model's own settings start the controls with: x-transformers' four (the samplers since are set
# by hand, and a model's file asking for them is named in the model line)
# what a model's generation_config.json may set that has a control of its own
STARTING_SAMPLERS = ("sampler_order", "xtc_probability", "xtc_threshold", "dynatemp_range", "dynatemp_exponent",
                     "mirostat_eta", "dry_multiplier", "dry_base", "dry_allowed_length", "stochastic")


def from_generation_config(config: GenerationConfig | None) -> tuple[Settings, list[str]]:
    """The controls' starting settings from a model's GenerationConfig, and the names of what it asks for that
    the controls do not start from (left out). None gives /generate's defaults."""
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
        if fn in FILTERS:
            param = FILTER_SPECS[fn][4]
            if param in (kw or {}):
                values[fn] = kw[param]
            elif fn == "top_k":
                unsupported.append("top_k without k")
        elif fn is not None:
            unsupported.append(str(fn))
    if [f for f in fns if f in FILTERS] != [f for f in FILTERS if f in fns]:
        unsupported.append("its filter order")
    values.update(repetition_penalty=min(max(config.repetition_penalty, 0.5), 3.0),
                  no_repeat_ngram_size=min(config.no_repeat_ngram_size, 10))
    if config.seed is not None and 0 <= config.seed < 2**31:
        values["seed"] = config.seed
    values.update({name: getattr(config, name) for name in STARTING_SAMPLERS})
    if config.mirostat_tau is not None:
        values["mirostat_tau"] = config.mirostat_tau
    defaults = GenerationConfig()
    for name in ("prompt_lookup_num_tokens", "dry_sequence_breakers"):
        if getattr(config, name) != getattr(defaults, name):
            unsupported.append(name)
    settings = Settings(**values)
    try:
        settings = settings.check()
    except ValueError as e:
        return DEFAULTS, [f"its settings ({e})"]
    return settings, unsupported
