"""A generation request as the playground sees it: `Settings`, named as /generate's parameters, checked once
(the caps included) before any compute, and turned into the library's `GenerationConfig`.

The same names are the page's share links (`?prompt=...&strategy=beam+search&beams=3&seed=5`), so a link, an
API call and the controls all mean one thing. A model's own `generation_config.json` becomes the starting
settings with `from_generation_config`.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import asdict, field, fields, make_dataclass, replace

from axw import GenerationConfig
from axw.logit_lens import candidate_layers, is_tied
from axw.structured import check_constraint
from axw.utils import check_number
from axw.specs import APP_SPECS, FILTER_SPECS, SPEC, STOCHASTIC_BEAM_GROUPS, STRATEGIES, STRATEGY_GROUPS

from .caps import FILTERS, LOOKUP_NGRAM, MAX_BEAMS, MAX_CONTRASTIVE_K, MAX_PROMPT_CHARS, TRACE_TOP


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type some text for the model to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


def group_names(*groups: str) -> list[str]:
    """The settings of these groups (axw.specs), in their declared order."""
    return [s.name for s in APP_SPECS if s.group in groups]


# which settings each strategy reads (besides those every strategy reads); the others are not checked
USES = {strategy: group_names(*groups) for strategy, groups in STRATEGY_GROUPS.items()}
EVERY_STRATEGY = group_names("every", "penalty", "structure")
SAMPLING = group_names(*STOCHASTIC_BEAM_GROUPS)


class SettingsMethods:
    """What `Settings` does; its fields are axw.specs' settings (APP_SPECS), with their defaults."""

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
        SPEC["strategy"].check(self.strategy, app=True)
        s = {name: SPEC[name].check(getattr(self, name), SPEC[name].label, high=vocab, app=True)
             for name in self.reads()}
        SPEC["chat"].check(self.chat, "chat", app=True)
        if not isinstance(self.system, str) or len(self.system) > MAX_PROMPT_CHARS:
            raise ValueError(f"system must be a text of at most {MAX_PROMPT_CHARS} characters (the system message "
                             "of chat mode)")
        check_constraint(**constraint(self))  # two at once, or one the library refuses (an invalid regex, ...)
        s["force_step"] = number("force_step", self.force_step, 0, s["max_new_tokens"], integer=True)
        if s["force_step"]:
            top = vocab - 1 if vocab is not None else math.inf
            s["force_token"] = number("force_token (a token id)", self.force_token, 0, top, integer=True)
        return replace(self, **s)

    def filters(self) -> dict:
        """The switched-on filters by name and value, in the order they chain."""
        reads = set(self.reads())
        return {f.name: getattr(self, f.name) for f in FILTER_SPECS
                if f.name in reads and not f.is_off(getattr(self, f.name))}

    def sampling(self) -> dict:
        """GenerationConfig's sampling settings: temperature, the filters chained, their order."""
        chosen = self.filters()
        kwargs = []
        for name, value in chosen.items():
            kw = {} if SPEC[name].param is None else {SPEC[name].param: value}
            kw.update({s.param: getattr(self, s.name) for s in APP_SPECS if s.filter == name and not s.main})
            kwargs.append(kw)
        return dict(filter_logits_fn=list(chosen), filter_kwargs=kwargs)

    def config(self, model, trace: bool = True) -> GenerationConfig:
        """The library's settings for `model` (its EOS, its vocabulary for top_k), checked. Contrastive decoding's
        amateur model and speculative decoding's assistant are passed beside it (`amateur_model=`,
        `assistant_model=`), as generate takes them."""
        s = self.check(model.net.num_tokens)
        kw = dict(eos_token=self.stop_ids(model), seed=s.seed, trace=trace, trace_top=TRACE_TOP, filter_logits_fn=[])
        for name in s.reads():  # the library's own settings, by their own names
            spec, value = SPEC[name], getattr(s, name)
            if spec.library:
                kw[name] = None if spec.is_off(value) and not spec.in_range(value) else value
        if any(SPEC[name].is_filter for name in s.reads()):
            kw.update(s.sampling())
        kw.update({name: value for name, value in constraint(s).items() if value is not None})
        if s.temperature == 0 or s.strategy != "sampling":
            kw["mirostat_tau"] = None  # greedy never samples, so mirostat would steer a target it never set
        if s.strategy == "contrastive decoding":
            kw["contrastive_decode_kwargs"] = dict(alpha=s.cd_alpha, beta=s.cd_beta)
        elif s.strategy == "speculative decoding":
            if s.drafter == "prompt lookup":
                kw["prompt_lookup_num_tokens"] = s.num_assistant_tokens
            elif s.drafter == "draft model + prompt lookup":
                kw["assistant_lookup_ngram"] = LOOKUP_NGRAM
        elif s.strategy == "DoLa":  # the layers this network has, before any compute
            candidate_layers(s.dola_layers, model.net.attn_layers.depth, is_tied(model.net))
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


Settings = make_dataclass(
    "Settings", [(s.name, s.kind, field(default=s.default)) for s in APP_SPECS], bases=(SettingsMethods,),
    frozen=True)
Settings.__module__ = __name__
Settings.__doc__ = """Every setting of one generation, as /generate's parameters with its defaults (axw.specs
declares them). `check` refuses what is outside the library's ranges and the caps (ValueError saying what is
allowed); `config` is the library's GenerationConfig. Every sampler is off at its default (its off value), so a
request that leaves it out means what it always did. `force_step` > 0 asks for a what-if branch: the same run
with token `force_token` forced at that step (1-based) and continued from there."""


def constraint(settings) -> dict:
    """The structure settings as the library takes them: choices one per line (blank lines left out), the others
    as given; an empty box is off (None)."""
    lines = [line.rstrip("\r") for line in settings.choices.split("\n")] if isinstance(settings.choices, str) else []
    out = dict(choices=[line for line in lines if line.strip()] or None)
    out.update({name: getattr(settings, name) or None for name in ("regex", "json_schema", "grammar")})
    return out


def number(name, value, lo, hi, integer=False):
    """`value` if it is a finite number in [lo, hi] (a whole number when `integer`), else ValueError."""
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # sliders and JSON send whole numbers as floats
    return check_number(value, name, lo, hi, integer=integer)


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
        if config.dola_layers is not None:
            values.update(strategy="DoLa", dola_layers=SPEC["dola_layers"].check(config.dola_layers, app=True))
    fns = config.filter_logits_fn if isinstance(config.filter_logits_fn, list) else [config.filter_logits_fn]
    kws = config.filter_kwargs if isinstance(config.filter_kwargs, list) else [config.filter_kwargs]
    for fn, kw in zip(fns, kws + [{}] * len(fns)):
        if fn in FILTERS:
            param = SPEC[fn].param
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
