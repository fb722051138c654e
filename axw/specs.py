"""Every decoding setting, declared once.

A `Spec` says what a setting is: its name (generate's keyword, the playground's /generate parameter and share-link
key), its kind, the range the library accepts, the value that switches it off, its default in the playground, its
label and one line of help with the paper it comes from. Everything else is derived from these declarations:
`GenerationConfig`'s checks, the filters' checks, the playground's `Settings`, its controls and their order,
/generate's parameters and the sampler table in the README (`python scripts/sampler_table.py` writes it). A new sampler is its
processor and one entry here.

The playground accepts the library's ranges; `cap` narrows a few of them for a shared machine (how many tokens,
beams, candidates a visitor may ask for), and `slider` is only what a slider shows before a link stretches it.

This module imports nothing of axw's but `utils`: any module may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from .utils import check_number

# the strategies, one name each in the library (`GenerateOutput.strategy`, `Run.strategy_name`), the playground
# and the docs
STRATEGIES = ("sampling", "beam search", "contrastive search", "contrastive decoding", "speculative decoding",
              "DoLa")
# the one mapping table: the runtime's step functions (`Run.strategy`) by these names; contrastive decoding is
# sampling's steps with an amateur model
STRATEGY_STEPS = {"sampling": "sample", "beam search": "beam", "contrastive search": "contrastive",
                  "contrastive decoding": "sample", "speculative decoding": "speculative", "DoLa": "dola"}
SAMPLER_ORDERS = ("filters_first", "temperature_first")
ASSISTANT_SCHEDULES = ("constant", "heuristic")
# speculative decoding's drafters in the playground; "datastore": the n-gram datastore in the draft model's folder
DRAFTERS = ("draft model", "draft model + prompt lookup", "draft model + datastore", "datastore", "amateur",
            "prompt lookup")

# which groups of settings each strategy reads, besides the groups "every" and "penalty" ("stateful": filters that
# keep state from token to token, for sampling alone; stochastic beam search reads the sampling groups
# "temperature", "order" and "filters" too)
STRATEGY_GROUPS = {
    "sampling": ("temperature", "order", "filters", "xtc", "dynatemp", "mirostat", "stateful"),
    "beam search": ("beam",),
    "contrastive search": ("contrastive search",),
    "contrastive decoding": ("temperature", "contrastive decoding"),
    "speculative decoding": ("temperature", "order", "filters", "dynatemp", "speculative"),
    "DoLa": ("temperature", "order", "filters", "dola"),
}
STOCHASTIC_BEAM_GROUPS = ("temperature", "order", "filters")


@dataclass(frozen=True)
class Spec:
    """One setting. `low`/`high` bound what the library accepts (None: unbounded; a filter's None high is the
    vocabulary); `off` is the value that switches it off, accepted beside the range (None: never off). A filter
    setting names its filter in `axw.filters` and the keyword it passes the value as (`param`; None for a filter
    without one, switched on by True); a filter's further settings name the filter too, with `main=False`."""

    name: str
    kind: type
    default: Any  # the playground's and /generate's default (a sampler's: its off value)
    label: str
    help: str = ""
    paper: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    off: Any = None
    choices: tuple = ()
    group: str = "every"
    filter: str | None = None
    param: str | None = None
    main: bool = True  # a filter's on/off setting (False: one more of its parameters)
    library: bool = True  # a GenerationConfig field (False: the playground's own, or a filter's parameter)
    app: bool = True  # a playground setting and /generate parameter (False: the library's alone)
    cap: tuple | None = None  # the playground's narrower (low, high)
    slider: tuple | None = None  # the page's slider: (low, high, step)
    start: Any = None  # a switched-off filter's slider value
    control: str | None = None  # the page's control, when not named `name`
    toggle: str | None = None  # a filter's on/off checkbox on the page
    short: str | None = None  # the slider's label beside the checkbox, when not `label`
    checked: str = ""  # what the tests check it against (the sampler table's last column)
    # a setting of its own shape (DoLa's layers: a name or a list) checks itself: checker(value, name, app)
    checker: Callable | None = None

    @property
    def integer(self) -> bool:
        return self.kind is int

    @property
    def is_filter(self) -> bool:
        return self.filter is not None

    def is_off(self, value) -> bool:
        """`value` switches the setting off."""
        if self.kind is bool:
            return value is False
        return self.off is not None and not isinstance(value, bool) and value == self.off

    def allowed(self) -> str:
        """What the range allows, in words."""
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}, "
        hi = "" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        what = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            words = f"{what} in {lo}{hi}"
        elif self.low is not None:
            words = f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            words = f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            words = f"a finite {what}"
        return words + (f" ({self.off:g} = off)" if self.off is not None and self.kind is not bool else "")

    def check(self, value, name: str | None = None, high: float | None = None, app: bool = False):
        """`value` if the library accepts it, else ValueError naming `name` (the setting's name by default) and
        what is allowed; `high` stands in for an open top (top_k's vocabulary). `app`: as the playground takes
        it, its off value too, within its cap, a whole float as an int (sliders and JSON send those)."""
        name = name or self.name
        if self.checker is not None:
            return self.checker(value, name, app)
        if self.kind is bool:  # the library takes 0 and 1 too
            if value is not True and value is not False and (app or type(value) is not int or value not in (0, 1)):
                raise ValueError(f"{name} must be {'true or false' if app else 'True or False'}, got {value!r}")
            return bool(value)
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
            return value
        if app and self.integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        if app and self.is_off(value):
            return value
        bounds = self
        if app and self.cap:
            bounds = Spec(self.name, self.kind, self.default, self.label, low=self.cap[0], high=self.cap[1],
                          off=self.off)
        top = bounds.high if bounds.high is not None else high
        words = bounds.allowed() if top == bounds.high else None
        if words and not app and self.off is not None and not self.in_range(self.off):
            words = words.rsplit(" (", 1)[0]  # the library has no off value outside the range
        return check_number(value, name, bounds.low, top, integer=self.integer, low_open=bounds.low_open,
                            high_open=bounds.high_open, allowed=words)

    def in_range(self, value) -> bool:
        """`value` lies in the library's range (a flag's or a choice's every value does)."""
        if self.kind in (bool, str):
            return True
        try:
            check_number(value, self.name, self.low, self.high, integer=self.integer, low_open=self.low_open,
                         high_open=self.high_open)
        except ValueError:
            return False
        return True


DOLA_NAMES = ("low", "high")  # transformers' names for DoLa's candidate layers
MAX_DOLA_LAYERS = 64


def check_dola_layers(value, name: str = "dola_layers", app: bool = False):
    """DoLa's candidate premature layers as transformers takes them: "low", "high", or a list of layer numbers
    (0: the embeddings, i: the i-th layer's output), here also as text ("2, 4, 6"). Returns the name or the list
    (`app`: the name or the text, "2, 4, 6"); whether the layers lie below the network's depth is checked where
    the network is known (`axw.logit_lens.candidate_layers`)."""
    allowed = (f'{name} must be "low", "high" or a list of distinct layer numbers >= 0 (at most '
               f"{MAX_DOLA_LAYERS}), as text: 2, 4, 6")
    layers = value
    if isinstance(value, str):
        if value.strip() in DOLA_NAMES:
            return value.strip()
        try:
            layers = [int(part) for part in value.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{allowed}; got {value!r}") from None
    if not isinstance(layers, (list, tuple)) or not layers or len(layers) > MAX_DOLA_LAYERS or any(
            type(i) is not int or i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"{allowed}; got {value!r}")
    return ", ".join(map(str, layers)) if app else list(layers)


def _filter(name, kind, default, label, help, paper, param, low, high, toggle, control, slider, start, off,
            short=None, **kw) -> Spec:
    kw.setdefault("group", "filters")
    return Spec(name, kind, default, label, help, paper, low=low, high=high, off=off, filter=name, param=param,
                library=False, toggle=toggle, control=control, slider=slider, start=start, short=short, **kw)


MAX_NEW_TOKENS = 512  # the playground's caps for a shared machine
MAX_BEAMS = 8
MAX_CONTRASTIVE_K = 16
MAX_DRAFT_TOKENS = 16
MAX_SEED = 2**31 - 1
MAX_TEMPERATURE = 5.0  # past it every token is about as likely: the page has nothing more to show
STRUCTURED_PAPER = "llguidance (guidance-ai); Willard & Louf 2023, arXiv:2307.09702"

SPECS: list[Spec] = [
    Spec("strategy", str, "sampling", "strategy", "how the next token is chosen", choices=STRATEGIES, group="app",
         library=False),
    Spec("max_new_tokens", int, 64, "max new tokens", f"how many tokens to generate (at most {MAX_NEW_TOKENS})",
         low=1, library=False, cap=(1, MAX_NEW_TOKENS), slider=(1, MAX_NEW_TOKENS, 1)),
    Spec("temperature", float, 0.8, "temperature", "divides the logits: < 1 sharpens, > 1 flattens, 0 = greedy",
         "Ackley et al. 1985", low=0, group="temperature", cap=(0, MAX_TEMPERATURE), slider=(0, 2, 0.05), checked="transformers' TemperatureLogitsWarper"),
    _filter("top_k", int, 0, "top-k", "keep only the k most likely tokens", "Fan et al. 2018, arXiv:1805.04833",
            "k", 1, None, "use_k", "k", (1, 200, 1), 40, off=0, short="k", checked="transformers' TopKLogitsWarper"),
    _filter("top_p", float, 1.0, "top-p", "keep the fewest top tokens whose probabilities add up to p",
            "Holtzman et al. 2019, arXiv:1904.09751", "thres", 0, 1, "use_p", "p", (0.05, 1, 0.01), 0.9, off=1.0,
            short="p", low_open=True, checked="transformers' TopPLogitsWarper"),
    _filter("min_p", float, 0.0, "min-p", "keep tokens at least min-p times as likely as the top one",
            "Nguyen et al. 2024, arXiv:2407.01082", "min_p", 0, 1, "use_min", "minp", (0, 1, 0.01), 0.1, off=0.0, checked="transformers' MinPLogitsWarper"),
    _filter("top_a", float, 0.0, "top-a", "keep tokens with p >= ratio x p_max²: strict when the model is sure",
            "BlinkDL", "min_p_ratio", 0, 1, "use_a", "a", (0, 1, 0.01), 0.2, off=0.0, short="top-a ratio", checked="hand computation"),
    Spec("repetition_penalty", float, 1.0, "repetition penalty",
         "> 1 makes tokens already in the text less likely (1 = off)", "Keskar et al. 2019, arXiv:1909.05858", low=0,
         low_open=True, off=1.0, group="penalty", slider=(0.5, 2, 0.05), checked="transformers' RepetitionPenaltyLogitsProcessor"),
    Spec("no_repeat_ngram_size", int, 0, "no-repeat n-gram size", "forbid repeating any n-gram of this size (0 = off)",
         "Paulus et al. 2017, arXiv:1705.04304", low=0, off=0, group="penalty", slider=(0, 6, 1), checked="transformers' NoRepeatNGramLogitsProcessor"),
    Spec("seed", int, 0, "seed", "the same seed and settings give the same text", low=0, high=2**63, high_open=True,
         cap=(0, MAX_SEED)),
    Spec("beams", int, 4, "beams", "how many sequences are kept at each step", low=1, group="beam",
         cap=(2, MAX_BEAMS), slider=(2, MAX_BEAMS, 1)),
    Spec("length_penalty", float, 0.0, "length penalty", "score / length^penalty: > 0 favours longer beams",
         group="beam", slider=(-1, 2, 0.1)),
    Spec("penalty_alpha", float, 0.6, "penalty alpha", "weight of the degeneration penalty (0 = greedy)",
         "Su et al. 2022, arXiv:2202.06417", low=0, high=1, group="contrastive search", slider=(0, 1, 0.05)),
    Spec("contrastive_k", int, 4, "contrastive k", "how many likely tokens are considered", low=1,
         group="contrastive search", cap=(1, MAX_CONTRASTIVE_K), slider=(1, MAX_CONTRASTIVE_K, 1), short="k"),
    Spec("amateur", str, "", "amateur model", "a smaller model with the same tokenizer (contrastive decoding; the "
         "'amateur' drafter)", group="app", library=False),
    Spec("cd_alpha", float, 0.1, "contrastive decoding alpha",
         "only tokens with p >= alpha x p_max of the expert are allowed", "Li et al. 2022, arXiv:2210.15097", low=0,
         high=1, low_open=True, group="contrastive decoding", library=False, slider=(0.01, 1, 0.01),
         short="alpha (plausibility)"),
    Spec("cd_beta", float, 0.5, "contrastive decoding beta", "score = (1 + beta) expert - beta amateur logits",
         "O'Brien & Lewis 2023, arXiv:2309.09117", low=0, group="contrastive decoding", library=False,
         slider=(0, 2, 0.05), short="beta"),
    Spec("model", str, "", "model", "a Hub repo id (empty: the default model)", group="app", library=False),
    Spec("use_finetuned", bool, False, "use my fine-tuned model", "the copy you trained in the Fine-tune tab",
         group="app", library=False),
    Spec("sampler_order", str, "filters_first", "sampler order",
         "filters_first: the filters cut, then temperature reshapes what is left (x-transformers); temperature_first: "
         "temperature moves the cuts (transformers, llama.cpp)", choices=SAMPLER_ORDERS, group="order"),
    _filter("typical_p", float, 1.0, "typical-p", "keep the tokens whose surprise is closest to the entropy, up to "
            "this mass", "Meister et al. 2022, arXiv:2202.00666", "mass", 0, 1, "use_typical", "typical",
            (0.05, 1, 0.01), 0.9, off=1.0, short="mass", low_open=True, checked="transformers' TypicalLogitsWarper"),
    _filter("epsilon_cutoff", float, 0.0, "epsilon cutoff", "keep tokens with p >= epsilon, a fixed floor",
            "Hewitt et al. 2022, arXiv:2210.15191", "epsilon", 0, 0.5, "use_eps", "eps", (0, 0.02, 0.0001), 0.0003,
            off=0.0, short="epsilon", checked="transformers' EpsilonLogitsWarper"),
    _filter("eta_cutoff", float, 0.0, "eta cutoff", "keep tokens with p >= min(epsilon, √epsilon · e^-H): a lower "
            "floor when the model is unsure", "Hewitt et al. 2022, arXiv:2210.15191", "epsilon", 0, 0.5, "use_eta",
            "eta", (0, 0.02, 0.0001), 0.0003, off=0.0, short="epsilon", checked="transformers' EtaLogitsWarper"),
    _filter("top_h", float, 0.0, "top-H", "keep the likeliest tokens while they carry at most this share of the "
            "entropy", "Potraghloo et al. 2025, arXiv:2509.02510", "top_h", 0, 1, "use_toph", "toph",
            (0.05, 1, 0.01), 0.4, off=0.0, low_open=True, checked="transformers' TopHLogitsWarper"),
    _filter("top_n_sigma", float, 0.0, "top-n-sigma", "keep logits within n standard deviations of the best; "
            "temperature cannot move this cut", "Tang et al. 2024, arXiv:2411.07641", "n", 0, 100, "use_nsigma",
            "nsigma", (0.1, 5, 0.1), 1.0, off=0.0, short="n", low_open=True, checked="hand computation"),
    Spec("xtc_probability", float, 0.0, "XTC probability", "exclude top choices: each step, with this probability, "
         "drop every token above the threshold but the least likely of them (0 = off)",
         "Weidmann 2024, text-generation-webui #6335", low=0, high=1, off=0.0, group="xtc", slider=(0, 1, 0.05), checked="hand computation"),
    Spec("xtc_threshold", float, 0.1, "XTC threshold", "what counts as a top choice", low=0, high=1, group="xtc",
         slider=(0, 0.5, 0.01)),
    Spec("dynatemp_range", float, 0.0, "dynamic temperature range", "temperature ± range, scaled by the entropy: "
         "cold when the model is sure, hot when it is not (0 = off)", "kalomaze 2023, llama.cpp's dynatemp", low=0,
         high=5, off=0.0, group="dynatemp", slider=(0, 2, 0.05), checked="hand computation"),
    Spec("dynatemp_exponent", float, 1.0, "dynamic temperature exponent", "shapes how the entropy maps onto the "
         "range", low=0, high=100, low_open=True, group="dynatemp", slider=(0.1, 4, 0.1)),
    Spec("mirostat_tau", float, 0.0, "mirostat tau", "target surprise in bits: keep tokens with surprise <= mu, mu "
         "steered towards tau after each token (0 = off)", "Basu et al. 2020, arXiv:2007.14966", low=0, high=20,
         low_open=True, off=0.0, group="mirostat", slider=(0, 10, 0.5), checked="hand computation; holds the surprise at tau"),
    Spec("mirostat_eta", float, 0.1, "mirostat eta", "how fast mu follows the target", low=0, high=1, low_open=True,
         group="mirostat", slider=(0.01, 1, 0.01)),
    Spec("dry_multiplier", float, 0.0, "DRY multiplier", "don't repeat yourself: penalise a token that would extend a "
         "repeat, by multiplier x base^(length - allowed) (0 = off)", "Weidmann 2024, text-generation-webui #5677",
         low=0, off=0.0, group="penalty", slider=(0, 2, 0.05), checked="hand computation"),
    Spec("dry_base", float, 1.75, "DRY base", "how fast the penalty grows with the repeat's length", low=1, high=100,
         group="penalty", slider=(1, 3, 0.05)),
    Spec("dry_allowed_length", int, 2, "DRY allowed length", "repeats this long go unpunished", low=1,
         group="penalty", slider=(1, 8, 1)),
    Spec("stochastic", bool, False, "stochastic", "rank beams by Gumbel-perturbed log-probabilities under the "
         "sampling distribution: a sample of whole sequences", "Kool et al. 2019, arXiv:1903.06059", group="beam",
         short="stochastic beams"),
    Spec("drafter", str, "draft model", "drafter", "who proposes the tokens: the bundled draft model (distilled from "
         "this one), the draft model where prompt lookup finds nothing to copy, the draft model where its n-gram "
         "datastore (what this model said after each n-gram in its own continuations) knows nothing, the datastore "
         "alone, the amateur model, or prompt lookup (copy what followed the last n-gram's earlier occurrence)",
         "Leviathan et al. 2023, arXiv:2211.17192; Saxena 2023", choices=DRAFTERS, group="speculative",
         library=False),
    Spec("num_assistant_tokens", int, 5, "draft tokens per round",
         "how many tokens the drafter proposes before the model checks them", low=1, high=128, group="speculative",
         cap=(1, MAX_DRAFT_TOKENS), slider=(1, MAX_DRAFT_TOKENS, 1)),
    Spec("num_assistant_tokens_schedule", str, "constant", "draft schedule",
         "heuristic: two more after a round all accepted, one fewer otherwise (transformers')",
         choices=ASSISTANT_SCHEDULES, group="speculative"),
    Spec("force_step", int, 0, "force_step", "a what-if branch: force a token at this step (1-based; 0 = none)",
         group="app", library=False),
    Spec("force_token", int, 0, "force_token", "the token id a what-if branch forces", group="app", library=False),
    Spec("chat", bool, False, "chat mode", "the prompt is your message, laid out with the model's chat template after "
         "the system message", group="app", library=False),
    Spec("system", str, "", "system message", "chat mode's system message", group="app", library=False),
    # later settings come last, so calls that give /generate's parameters by position mean what they meant
    _filter("p_less", bool, False, "p-less", "keep tokens with p >= Σ p², the chance two draws agree: no parameter, "
            "strict when the model is sure", "p-less sampling, arXiv:2509.23234", None, None, None, "use_pless",
            None, None, None, off=False, checked="hand computation"),
    _filter("adaptive_p", float, -1.0, "adaptive-p target", "steer the chosen tokens' probability towards this "
            "target over time: after safe choices it favours less likely tokens, after risky ones safer ones "
            "(sampling only; runs last)", "MrJackSpade; llama.cpp #17927", "target", 0, 1, "use_adaptive",
            "adaptive", (0, 1, 0.05), 0.5, off=-1.0, short="target", group="stateful", checked="hand computation"),
    Spec("adaptive_p_decay", float, 0.9, "adaptive-p decay", "how slowly the average of the chosen probabilities "
         "forgets", low=0, high=0.99, group="stateful", filter="adaptive_p", param="decay", main=False,
         library=False, slider=(0, 0.99, 0.01)),
    Spec("dola_layers", str, "high", "DoLa layers", 'the early layers the last one is contrasted with: "low" (the '
         'first half), "high" (the second half) or layer numbers, 2, 4, 6 (0 = the embeddings); each step the one '
         "whose distribution differs most from the last layer's (Jensen-Shannon divergence) is subtracted, in "
         "log-probabilities, over the tokens the last layer finds plausible. Use a repetition penalty of about 1.2",
         "Chuang et al. 2023, arXiv:2309.03883", group="dola", checker=check_dola_layers),
    # structured output (axw.structured), one at a time: GenerationConfig takes choices as a list and a schema as a
    # dict (or its JSON text) and checks them itself; the playground takes each as text (choices one per line)
    Spec("choices", str, "", "choices", "the text is exactly one of these answers, one per line (empty = off)",
         STRUCTURED_PAPER, group="structure", library=False),
    Spec("regex", str, "", "regex", "the text matches this regular expression in full (Rust's regex syntax; empty "
         "= off)", STRUCTURED_PAPER, group="structure", library=False),
    Spec("json_schema", str, "", "JSON schema", "the text is JSON valid under this schema (empty = off)",
         STRUCTURED_PAPER, group="structure", library=False),
    Spec("grammar", str, "", "Lark grammar", "the text is a sentence of this Lark grammar, from its rule `start` "
         "(empty = off)", STRUCTURED_PAPER, group="structure", library=False),
    # the library's alone
    Spec("frac_num_tokens", float, 0.1, "top_k's frac_num_tokens", "k as a share of the vocabulary, when k is not "
         "given (x-transformers')", low=0, high=1, low_open=True, group="filters", filter="top_k",
         param="frac_num_tokens", main=False, library=False, app=False),
    Spec("min_p_pow", float, 2.0, "top_a's min_p_pow", "the power of p_max", low=0, high=100, low_open=True,
         group="filters", filter="top_a", param="min_p_pow", main=False, library=False, app=False),
    Spec("assistant_confidence_threshold", float, 0.0, "assistant confidence threshold",
         "stop drafting below this draft probability (0 = off)", low=0, high=1, high_open=True, group="speculative",
         app=False),
    Spec("prompt_lookup_num_tokens", int, None, "prompt lookup tokens", "draft by prompt lookup, this many tokens a "
         "round (None = off)", "Saxena 2023", low=1, high=128, group="speculative", app=False),
    Spec("max_matching_ngram_size", int, 2, "prompt lookup n-gram", "the longest n-gram prompt lookup matches",
         low=1, high=32, group="speculative", app=False),
    Spec("assistant_lookup_ngram", int, 0, "assistant lookup n-gram", "with an assistant or a datastore: copy a "
         "drafted token by prompt lookup where the text's last n tokens occurred before (0 = off)", low=0, high=32,
         off=0, group="speculative", app=False),
    Spec("restrict_to_max_seq_len", bool, True, "restrict to max_seq_len", "feed the model at most its context, the "
         "latest tokens (x-transformers')", app=False),
    Spec("cache_kv", bool, True, "cache keys and values", "reuse each position's keys and values", app=False),
    Spec("trace", bool, False, "trace", "record what each stage did at each step", app=False),
    Spec("trace_top", int, 10, "trace top", "candidates recorded per traced step", low=1, app=False),
]
SPEC: dict[str, Spec] = {s.name: s for s in SPECS}
FILTER_SPECS: list[Spec] = [s for s in SPECS if s.is_filter and s.main]  # in the order the playground chains them
LIBRARY_SPECS: list[Spec] = [s for s in SPECS if s.library]  # GenerationConfig's checked fields
APP_SPECS: list[Spec] = [s for s in SPECS if s.app]  # the playground's settings, in /generate's order


def filter_param_spec(filter_name: str, param: str) -> Spec | None:
    """The spec of a built-in filter's keyword, when one is declared."""
    for s in SPECS:
        if s.filter == filter_name and s.param == param:
            return s
    return None


# transformers' names, which generate and GenerationConfig take beside axw's own: each name and what it means here.
# The filters among them (top_k, top_p, ...) are the filter settings above of the same name, chained in
# TRANSFORMERS_FILTER_ORDER; with do_sample given, transformers' meaning holds (True: temperature before the filters
# and top_k 50 unless given; False: greedy, or beam search with num_beams).
TRANSFORMERS_ALIASES = {
    "do_sample": "sampling as transformers samples (True) or greedy / beam search (False); left out: axw's default",
    "top_k": 'the filter "top_k" (0 = off)', "top_p": 'the filter "top_p" (1 = off)', "min_p": 'the filter "min_p"',
    "typical_p": 'the filter "typical_p" (1 = off)', "epsilon_cutoff": 'the filter "epsilon_cutoff"',
    "eta_cutoff": 'the filter "eta_cutoff"', "top_h": 'the filter "top_h"',
    "num_beams": "beams", "eos_token_id": "eos_token", "use_cache": "cache_kv",
    "max_new_tokens": "how many tokens to generate (generate's seq_len)",
}
# transformers' arguments of generate that are no setting but go beside the settings, as in transformers: what
# generate (and stream / beam_search where they make sense) takes under each name
TRANSFORMERS_GENERATE_ARGUMENTS = {
    "input_ids": "the prompts (generate's first argument), so generate(**tokenizer(texts, ...)) works",
    "inputs": "the prompts (generate's first argument)",
    "attention_mask": "(batch, n) 1 on each row's tokens, 0 on padding, left or right: rows of different lengths, "
                      "each continuing as it would alone",
    "pad_token_id": "the pad for this call: left padding and what follows a row's EOS (default: pad_value)",
    "streamer": "an object with put(ids) and end(): put the prompt, then each step's new token; one row only",
    "num_return_sequences": "sampling: each prompt's row repeated that many times, each its own sample; beam "
                            "search: the best beams of each prompt",
    "output_scores": "with return_dict_in_generate: each step's processed scores in GenerateOutput.scores",
    "output_logits": "with return_dict_in_generate: each step's raw logits in GenerateOutput.logits",
}
TRANSFORMERS_FILTER_ORDER = ("top_h", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
TRANSFORMERS_TOP_K = 50  # transformers' default top_k when it samples
# transformers' GenerationConfig settings axw does not have (an error names them as such)
TRANSFORMERS_UNSUPPORTED = (
    "assistant_early_exit", "assistant_lookbehind", "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
    "cache_config", "cache_implementation", "compile_config", "constraints", "decoder_start_token_id",
    "disable_compile", "diversity_penalty", "early_stopping", "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty", "exponential_decay_length_penalty", "force_words_ids", "forced_bos_token_id",
    "forced_eos_token_id", "guidance_scale", "low_memory", "max_length", "max_time", "min_length", "min_new_tokens",
    "num_beam_groups", "output_attentions", "output_hidden_states", "remove_invalid_values", "renormalize_logits",
    "sequence_bias", "stop_strings", "suppress_tokens", "target_lookbehind", "token_healing", "watermarking_config",
)


def transformers_table() -> str:
    """The table of transformers' names axw takes (docs/transformers.md): the settings' aliases, which generate,
    stream, beam_search and GenerationConfig take, and generate's own arguments."""
    rows = ["| transformers | where | in axw |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | setting | {what} |" for name, what in TRANSFORMERS_ALIASES.items()]
    rows += [f"| `{name}` | generate | {what} |" for name, what in TRANSFORMERS_GENERATE_ARGUMENTS.items()]
    return "\n".join(rows)


SAMPLER_GROUPS = ("temperature", "filters", "stateful", "xtc", "dynatemp", "mirostat", "penalty")
TABLE_START, TABLE_END = "<!-- samplers: python scripts/sampler_table.py -->", "<!-- samplers end -->"


def sampler_table() -> str:
    """The sampler table (in the README): each sampling setting, how the library and /generate take it, its
    range with the value that is off, what it does, its paper and what the tests check it against."""
    rows = ["| sampler | library | /generate: range (off) | what it does | paper | checked against |",
            "| --- | --- | --- | --- | --- | --- |"]
    for s in APP_SPECS:
        if s.group not in SAMPLER_GROUPS:
            continue
        if s.is_filter:
            library = f'`filter_logits_fn="{s.filter}"`' + (f", `{s.param}`" if s.param else "")
        else:
            library = f"`{s.name}`"
        rows.append(f"| {s.label} | {library} | `{s.name}`: {_range(s)} | {s.help} | {s.paper} | {s.checked} |")
    return "\n".join(rows)


def _range(s: Spec) -> str:
    if s.cap is not None:
        return f"[{s.cap[0]:g}, {s.cap[1]:g}] (the library: {_range(replace(s, cap=None))})"
    if s.kind is bool:
        return "true / false (false)"
    lo = "" if s.low is None else ("(" if s.low_open else "[") + f"{s.low:g}"
    hi = ("vocab" if s.is_filter else "∞") if s.high is None else f"{s.high:g}"
    text = f"{lo}, {hi}{')' if s.high_open or (s.high is None and not s.is_filter) else ']'}"
    return text + (f" ({s.off:g})" if s.off is not None else "")


def write_table(path: str) -> bool:
    """Put the sampler table between its markers in `path`; True when that changed the file."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    new = text[:start] + "\n" + sampler_table() + "\n" + text[end:]
    if new != text:
        Path(path).write_text(new, encoding="utf-8")
    return new != text
