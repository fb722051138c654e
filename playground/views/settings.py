"""The settings panel: prompt, strategy and its settings, each with a one-line explanation.

The controls map one to one onto `Settings` (/generate's parameters): `settings_from_ui` reads them, `fill`
sets them (from a share link or a model's own settings). A new control is a field of `Settings`, a component
here, and an entry of UI_INPUTS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import gradio as gr

from ..caps import (ASSISTANT_SCHEDULES, DRAFTERS, MAX_BEAMS, MAX_CONTRASTIVE_K, MAX_DRAFT_TOKENS, MAX_NEW_TOKENS,
                    MAX_PROMPT_CHARS, SAMPLER_ORDERS, STRATEGIES)
from ..lessons import explain
from ..settings import Settings, check_prompt

# the controls, in the order the Generate button (and its undocumented /generate_stream endpoint) takes them; the
# ones after use_finetuned came later, so calls that stop there still mean what they meant
UI_INPUTS = ["model", "prompt", "strategy", "max_new_tokens", "temperature", "use_k", "k", "use_p", "p", "use_min",
             "minp", "use_a", "a", "repetition_penalty", "no_repeat_ngram_size", "seed", "beams", "length_penalty",
             "penalty_alpha", "contrastive_k", "amateur", "cd_alpha", "cd_beta", "use_finetuned",
             "sampler_order", "use_typical", "typical", "use_eps", "eps", "use_eta", "eta", "use_toph", "toph",
             "use_nsigma", "nsigma", "xtc_probability", "xtc_threshold", "dynatemp_range", "dynatemp_exponent",
             "mirostat_tau", "mirostat_eta", "dry_multiplier", "dry_base", "dry_allowed_length", "stochastic",
             "drafter", "num_assistant_tokens", "num_assistant_tokens_schedule", "force_step", "force_token", "chat",
             "system"]
FIRST_INPUTS = UI_INPUTS.index("use_finetuned") + 1  # what /generate_stream takes; the later ones by default
# each filter: its checkbox, its slider, the Settings field
FILTER_CONTROLS = [("use_k", "k", "top_k"), ("use_p", "p", "top_p"), ("use_min", "minp", "min_p"),
                   ("use_a", "a", "top_a"), ("use_typical", "typical", "typical_p"),
                   ("use_eps", "eps", "epsilon_cutoff"), ("use_eta", "eta", "eta_cutoff"),
                   ("use_toph", "toph", "top_h"), ("use_nsigma", "nsigma", "top_n_sigma")]
# each filter's checkbox label, slider label and one-line explanation with its paper
FILTER_TEXT = dict(
    use_k=("top-k", "k", "keep only the k most likely tokens (Fan et al. 2018)"),
    use_p=("top-p", "p", "keep the fewest top tokens whose probabilities add up to p (Holtzman et al. 2019)"),
    use_min=("min-p", "min-p", "keep tokens at least min-p times as likely as the top one (Nguyen et al. 2024)"),
    use_a=("top-a", "top-a ratio", "keep tokens with p >= ratio x p_max²: strict when the model is sure (BlinkDL)"),
    use_typical=("typical-p", "mass", "keep the tokens whose surprise is closest to the entropy, up to this mass "
                                      "(Meister et al. 2022, arXiv:2202.00666)"),
    use_eps=("epsilon", "epsilon", "keep tokens with p >= epsilon, a fixed floor (Hewitt et al. 2022, "
                                   "arXiv:2210.15191)"),
    use_eta=("eta", "epsilon", "keep tokens with p >= min(epsilon, √epsilon · e^-H): a lower floor when the model "
                               "is unsure (Hewitt et al. 2022)"),
    use_toph=("top-H", "top-H", "keep the likeliest tokens while they carry at most this share of the entropy "
                                "(Potraghloo et al. 2025, arXiv:2509.02510)"),
    use_nsigma=("top-n-sigma", "n", "keep logits within n standard deviations of the best; temperature cannot move "
                                    "this cut (Tang et al. 2024, arXiv:2411.07641)"),
)
# sliders: (minimum, maximum, step); a share link may ask for a value outside, within /generate's caps, and the
# slider then stretches to hold it
SLIDERS = dict(temperature=(0, 2, 0.05), k=(1, 200, 1), p=(0.05, 1, 0.01), minp=(0, 1, 0.01), a=(0, 1, 0.01),
               typical=(0.05, 1, 0.01), eps=(0, 0.02, 0.0001), eta=(0, 0.02, 0.0001), toph=(0.05, 1, 0.01),
               nsigma=(0.1, 5, 0.1),
               beams=(2, MAX_BEAMS, 1), length_penalty=(-1, 2, 0.1), penalty_alpha=(0, 1, 0.05),
               contrastive_k=(1, MAX_CONTRASTIVE_K, 1), cd_alpha=(0.01, 1, 0.01), cd_beta=(0, 2, 0.05),
               max_new_tokens=(1, MAX_NEW_TOKENS, 1), repetition_penalty=(0.5, 2, 0.05),
               no_repeat_ngram_size=(0, 6, 1), xtc_probability=(0, 1, 0.05), xtc_threshold=(0, 0.5, 0.01),
               dynatemp_range=(0, 2, 0.05), dynatemp_exponent=(0.1, 4, 0.1), mirostat_tau=(0, 10, 0.5),
               mirostat_eta=(0.01, 1, 0.01), dry_multiplier=(0, 2, 0.05), dry_base=(1, 3, 0.05),
               dry_allowed_length=(1, 8, 1), num_assistant_tokens=(1, MAX_DRAFT_TOKENS, 1))
# the sliders that are Settings fields of the same name
PLAIN_SLIDERS = ["max_new_tokens", "temperature", "repetition_penalty", "no_repeat_ngram_size", "beams",
                 "length_penalty", "penalty_alpha", "contrastive_k", "cd_alpha", "cd_beta", "xtc_probability",
                 "xtc_threshold", "dynatemp_range", "dynatemp_exponent", "mirostat_tau", "mirostat_eta",
                 "dry_multiplier", "dry_base", "dry_allowed_length", "num_assistant_tokens"]
# what the page starts with when the model has no generation_config.json of its own
UI_DEFAULTS = Settings(max_new_tokens=100, temperature=0.8, top_p=0.9)
FILTER_DEFAULTS = dict(k=40, p=0.9, minp=0.1, a=0.2, typical=0.9, eps=0.0003, eta=0.0003, toph=0.4,
                       nsigma=1.0)  # a switched-off filter's slider


def settings_from_ui(model, prompt, strategy, max_new_tokens, temperature, use_k, k, use_p, p, use_min, minp, use_a,
                     a, repetition_penalty, no_repeat_ngram_size, seed, beams, length_penalty, penalty_alpha,
                     contrastive_k, amateur, cd_alpha, cd_beta, use_finetuned, sampler_order="filters_first",
                     use_typical=False, typical=0.9, use_eps=False, eps=0.0003, use_eta=False, eta=0.0003,
                     use_toph=False, toph=0.4, use_nsigma=False, nsigma=1.0, xtc_probability=0.0, xtc_threshold=0.1,
                     dynatemp_range=0.0, dynatemp_exponent=1.0, mirostat_tau=0.0, mirostat_eta=0.1,
                     dry_multiplier=0.0, dry_base=1.75, dry_allowed_length=2, stochastic=False,
                     drafter="draft model", num_assistant_tokens=5, num_assistant_tokens_schedule="constant",
                     force_step=0, force_token=0, chat=False, system="") -> tuple[str, Settings]:
    """(prompt, Settings) from the controls; a switched-off filter is its /generate value for off."""
    check_prompt(prompt)
    return prompt, Settings(
        strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature, top_k=k if use_k else 0,
        top_p=p if use_p else 1.0, min_p=minp if use_min else 0.0, top_a=a if use_a else 0.0,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size, seed=seed, beams=beams,
        length_penalty=length_penalty, penalty_alpha=penalty_alpha, contrastive_k=contrastive_k,
        amateur=amateur or "", cd_alpha=cd_alpha, cd_beta=cd_beta, model=model or "", use_finetuned=bool(use_finetuned),
        sampler_order=sampler_order, typical_p=typical if use_typical else 1.0,
        epsilon_cutoff=eps if use_eps else 0.0, eta_cutoff=eta if use_eta else 0.0, top_h=toph if use_toph else 0.0,
        top_n_sigma=nsigma if use_nsigma else 0.0, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
        dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exponent, mirostat_tau=mirostat_tau,
        mirostat_eta=mirostat_eta, dry_multiplier=dry_multiplier, dry_base=dry_base,
        dry_allowed_length=dry_allowed_length, stochastic=stochastic, drafter=drafter,
        num_assistant_tokens=num_assistant_tokens, num_assistant_tokens_schedule=num_assistant_tokens_schedule,
        force_step=0 if force_step is None else force_step, force_token=0 if force_token is None else force_token,
        chat=False if chat is None else chat, system="" if system is None else system)


def ui_values(prompt: str, settings: Settings) -> list:
    """The values the page sends for `prompt` and `settings` (UI_INPUTS order): what the Generate button's event
    receives when a visitor sets the controls so. A switched-off filter's slider holds its default."""
    values = {name: getattr(settings, name) for name in UI_INPUTS if hasattr(settings, name)}
    values["prompt"] = prompt
    for use, slider, field in FILTER_CONTROLS:
        values[use] = getattr(settings, field) != getattr(Settings(), field)
        values[slider] = getattr(settings, field) if values[use] else FILTER_DEFAULTS[slider]
    return [values[name] for name in UI_INPUTS]


def _slider(name: str, value):
    """A slider update holding `value`: its range stretched and its step refined when needed."""
    low, high, step = SLIDERS[name]
    while step > 1e-6 and not math.isclose((value - low) / step, round((value - low) / step), abs_tol=1e-6):
        step /= 10
    return gr.Slider(value=value, minimum=min(low, value), maximum=max(high, value), step=step)


def fill(prompt: str | None, settings: Settings, model: str | None = None, amateur: str | None = None) -> list:
    """Updates for the controls (UI_INPUTS order) that show `prompt` and `settings`; the model and amateur
    pickers are set to `model` / `amateur` when given (a link names them only when not the app's own)."""
    values = dict(model=gr.Dropdown(value=model) if model else gr.skip(),
                  prompt=prompt if prompt is not None else gr.skip(),
                  strategy=settings.strategy,
                  seed=settings.seed, use_finetuned=gr.skip(),
                  amateur=gr.Dropdown(value=amateur) if amateur else gr.skip(),
                  sampler_order=settings.sampler_order, stochastic=settings.stochastic, drafter=settings.drafter,
                  num_assistant_tokens_schedule=settings.num_assistant_tokens_schedule,
                  force_step=settings.force_step, force_token=settings.force_token, chat=settings.chat,
                  system=settings.system)
    for use, slider, field in FILTER_CONTROLS:
        on = getattr(settings, field) != getattr(Settings(), field)
        values[use] = on
        values[slider] = _slider(slider, getattr(settings, field)) if on else gr.skip()
    for name in PLAIN_SLIDERS:
        values[name] = _slider(name, getattr(settings, name))
    return [values[name] for name in UI_INPUTS]


# a lesson's button: its look-for line shows, and the page runs it where it runs (a paired lesson opens Compare:
# another event, so each chains its own tab's handler); its share links stay plain links
LESSON_CLICK = """element.addEventListener('click', (e) => {
  const button = e.target.closest('.axw-lesson-run');
  const item = button && button.closest('.axw-lesson-item');
  if (!item) return;
  element.querySelectorAll('.axw-lesson-item').forEach((other) =>
    other.classList.toggle('axw-lesson-open', other === item));
  trigger(item.dataset.tab === 'compare' ? 'submit' : 'click',
          {strategy: item.dataset.strategy, index: Number(item.dataset.index)});
});"""
LESSON_CSS = """
.axw-explain { margin: 0 0 4px; }
.axw-lessons-head { margin: 6px 0 2px; font-weight: 600; font-size: inherit; }
.axw-lessons { margin: 0; padding: 0; list-style: none; }
.axw-lesson-item { margin: 4px 0; }
.axw-lesson-run { font: inherit; text-align: left; cursor: pointer; padding: 3px 8px; border-radius: 6px;
                  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary);
                  color: var(--body-text-color); }
.axw-lesson-run:hover { border-color: var(--color-accent); }
.axw-lesson-open .axw-lesson-run { border-color: var(--color-accent); background: var(--color-accent-soft); }
.axw-lesson-links { display: block; margin: 1px 0 0 10px; font-size: 12px; opacity: 0.85; }
.axw-lesson-look { display: none; margin: 4px 0 6px 10px; padding-left: 8px; font-size: 13px;
                   border-left: 3px solid var(--color-accent); }
.axw-lesson-look b { font-size: inherit; }
.axw-lesson-open .axw-lesson-look { display: block; }
"""


def filter_row(name: str, on: bool, slider: tuple, label: str, info: str):
    """A filter's on/off checkbox beside its slider (minimum, maximum, default, step)."""
    low, high, value, step = slider
    with gr.Row():
        use = gr.Checkbox(on, label=name, scale=1, min_width=80)
        setting = gr.Slider(low, high, value, step=step, label=label, scale=4, info=info)
    return use, setting


@dataclass
class Controls:
    """The settings panel's components by UI_INPUTS name, and the groups shown per strategy."""

    components: dict
    groups: dict
    lessons: gr.HTML | None = None  # the strategy's explanation and lessons: a click on one runs it (views.lessons)

    def inputs(self) -> list:
        return [self.components[name] for name in UI_INPUTS]

    def __getitem__(self, name):
        return self.components[name]


def visible(strategy: str, stochastic: bool = False) -> dict:
    """Which groups of the panel a strategy uses, by name: those holding a setting it reads (Settings.reads)."""
    reads = set(Settings(strategy=strategy, stochastic=stochastic).reads()) if strategy in STRATEGIES else set()
    return dict(temperature="temperature" in reads, filters="top_k" in reads, xtc_mirostat="xtc_probability" in reads,
                dynatemp="dynatemp_range" in reads, beam="beams" in reads, cs="penalty_alpha" in reads,
                amateur="cd_alpha" in reads or "drafter" in reads, cd="cd_alpha" in reads,
                speculative="drafter" in reads)


def prompt_box() -> gr.Textbox:
    """The prompt: with `chat_rows`, the panel's head, which the Generate tab places around its button (passed to
    `build` as `head`)."""
    return gr.Textbox("ROMEO:", label="prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt")


def chat_rows(start: Settings | None = None) -> dict:
    """Chat mode and the system message, by UI_INPUTS name."""
    s = start or UI_DEFAULTS
    c = {}
    with gr.Row(equal_height=True):
        c["chat"] = gr.Checkbox(s.chat, label="chat mode", scale=1, min_width=120, elem_id="chat",
                                info="instruct models")
        c["system"] = gr.Textbox(s.system, label="system message", lines=1, scale=3, max_length=MAX_PROMPT_CHARS,
                                 placeholder="optional", elem_id="system",
                                 info="chat mode: the prompt is your message, laid out with the model's chat "
                                      "template; the reply ends at its end-of-turn token")
    return c


def build(model_box, choices, amateur: str | None, start: Settings | None = None,
          head: dict | None = None) -> Controls:
    """The panel, starting from `start` (a model's own settings) or the page's defaults; `head`: its prompt and
    chat rows placed elsewhere (`prompt_box`, `chat_rows`), else they lead it. Only the settings the chosen
    strategy uses are shown; the samplers beyond the first four sit in an accordion."""
    s = start or UI_DEFAULTS
    c = dict(model=model_box)
    shown = visible(s.strategy, s.stochastic)
    groups = {}

    def slider(name, label, info, value=None, **kwargs):
        low, high, step = SLIDERS[name]
        value = getattr(s, name) if value is None else value
        return gr.Slider(min(low, value), max(high, value), value, step=step, label=label, info=info, **kwargs)

    def filters(uses):
        for use, name, field in FILTER_CONTROLS:
            if use not in uses:
                continue
            label, slider_label, info = FILTER_TEXT[use]
            on = getattr(s, field) != getattr(Settings(), field)
            low, high, step = SLIDERS[name]
            value = getattr(s, field) if on else FILTER_DEFAULTS[name]
            c[use], c[name] = filter_row(label, on, (min(low, value), max(high, value), value, step), slider_label,
                                         info)

    c.update(dict(prompt=prompt_box(), **chat_rows(s)) if head is None else head)
    c["strategy"] = gr.Radio(STRATEGIES, value=s.strategy, label="strategy", elem_id="strategy")
    lesson = gr.HTML(explain(s.strategy), elem_id="lesson", elem_classes=["axw-lesson"], js_on_load=LESSON_CLICK,
                     css_template=LESSON_CSS)
    with gr.Group(visible=shown["beam"]) as groups["beam"]:
        c["beams"] = slider("beams", "beams", "how many sequences are kept at each step")
        c["length_penalty"] = slider("length_penalty", "length penalty",
                                     "score / length^penalty: > 0 favours longer beams")
        c["stochastic"] = gr.Checkbox(s.stochastic, label="stochastic beams",
                                      info="rank beams by Gumbel-perturbed log-probabilities under the sampling "
                                           "distribution: a sample of whole sequences (Kool et al. 2019, "
                                           "arXiv:1903.06059)", elem_id="stochastic")
    with gr.Group(visible=shown["cs"]) as groups["cs"]:
        c["penalty_alpha"] = slider("penalty_alpha", "penalty alpha", "weight of the degeneration penalty (0 = greedy)")
        c["contrastive_k"] = slider("contrastive_k", "k", "how many likely tokens are considered")
    with gr.Group(visible=shown["speculative"]) as groups["speculative"]:
        c["drafter"] = gr.Radio(DRAFTERS, value=s.drafter, label="drafter", elem_id="drafter",
                                info="who proposes the tokens: the bundled draft model (distilled from this one), "
                                     "the draft model where prompt lookup finds nothing to copy, the draft model "
                                     "where its n-gram datastore (what this model said after each n-gram in its "
                                     "own continuations) knows nothing, the datastore alone, the amateur "
                                     "model, or prompt lookup (copy what followed the last n-gram's earlier "
                                     "occurrence; Saxena 2023)")
        c["num_assistant_tokens"] = slider("num_assistant_tokens", "draft tokens per round",
                                           "how many tokens the drafter proposes before the model checks them")
        c["num_assistant_tokens_schedule"] = gr.Radio(
            ASSISTANT_SCHEDULES, value=s.num_assistant_tokens_schedule, label="draft schedule",
            info="heuristic: two more after a round all accepted, one fewer otherwise (transformers')")
    with gr.Group(visible=shown["amateur"]) as groups["amateur"]:
        c["amateur"] = gr.Dropdown(choices, value=amateur, allow_custom_value=True, label="amateur model",
                                   info="a smaller model with the same tokenizer (contrastive decoding; the "
                                        "'amateur' drafter)")
    with gr.Group(visible=shown["cd"]) as groups["cd"]:
        c["cd_alpha"] = slider("cd_alpha", "alpha (plausibility)",
                               "only tokens with p >= alpha x p_max of the expert are allowed")
        c["cd_beta"] = slider("cd_beta", "beta", "score = (1 + beta) expert - beta amateur logits")
    with gr.Group(visible=shown["temperature"]) as groups["temperature"]:
        c["temperature"] = slider("temperature", "temperature",
                                  "divides the logits: < 1 sharpens, > 1 flattens, 0 = greedy (Ackley et al. 1985)")
    with gr.Group(visible=shown["filters"]) as groups["filters"]:
        gr.Markdown("Filters cut unlikely tokens before sampling, chained in this order:")
        filters(["use_k", "use_p", "use_min", "use_a"])
    with gr.Accordion("more samplers", open=False, visible=shown["filters"], elem_id="more-samplers") as more:
        groups["more"] = more
        c["sampler_order"] = gr.Radio(SAMPLER_ORDERS, value=s.sampler_order, label="sampler order",
                                      elem_id="sampler-order",
                                      info="filters_first: the filters cut, then temperature reshapes what is left "
                                           "(x-transformers); temperature_first: temperature moves the cuts "
                                           "(transformers, llama.cpp)")
        filters(["use_typical", "use_eps", "use_eta", "use_toph", "use_nsigma"])
        with gr.Group(visible=shown["xtc_mirostat"]) as groups["xtc_mirostat"]:
            c["xtc_probability"] = slider("xtc_probability", "XTC probability",
                                          "exclude top choices: each step, with this probability, drop every token "
                                          "above the threshold but the least likely of them (Weidmann 2024, "
                                          "text-generation-webui #6335); 0 = off")
            c["xtc_threshold"] = slider("xtc_threshold", "XTC threshold", "what counts as a top choice")
            c["mirostat_tau"] = slider("mirostat_tau", "mirostat tau",
                                       "target surprise in bits: keep tokens with surprise <= mu, mu steered towards "
                                       "tau after each token (Basu et al. 2020, arXiv:2007.14966); 0 = off")
            c["mirostat_eta"] = slider("mirostat_eta", "mirostat eta", "how fast mu follows the target")
        with gr.Group(visible=shown["dynatemp"]) as groups["dynatemp"]:
            c["dynatemp_range"] = slider("dynatemp_range", "dynamic temperature range",
                                         "temperature ± range, scaled by the entropy: cold when the model is sure, "
                                         "hot when it is not (kalomaze 2023, llama.cpp's dynatemp); 0 = off")
            c["dynatemp_exponent"] = slider("dynatemp_exponent", "dynamic temperature exponent",
                                            "shapes how the entropy maps onto the range")
    with gr.Accordion("length, seed and penalties", open=True):
        c["max_new_tokens"] = slider("max_new_tokens", "max new tokens",
                                     f"how many tokens to generate (at most {MAX_NEW_TOKENS})")
        c["seed"] = gr.Number(s.seed, precision=0, label="seed", info="the same seed and settings give the same text")
        c["repetition_penalty"] = slider("repetition_penalty", "repetition penalty",
                                         "> 1 makes tokens already in the text less likely (Keskar et al. 2019; "
                                         "1 = off)")
        c["no_repeat_ngram_size"] = slider("no_repeat_ngram_size", "no-repeat n-gram",
                                           "forbid repeating any n-gram of this size (Paulus et al. 2017; 0 = off)")
        c["dry_multiplier"] = slider("dry_multiplier", "DRY multiplier",
                                     "don't repeat yourself: penalise a token that would extend a repeat, by "
                                     "multiplier x base^(length - allowed) (Weidmann 2024, text-generation-webui "
                                     "#5677); 0 = off")
        with gr.Row():
            c["dry_base"] = slider("dry_base", "DRY base", "how fast the penalty grows with the repeat's length")
            c["dry_allowed_length"] = slider("dry_allowed_length", "DRY allowed length",
                                             "repeats this long go unpunished")
    c["use_finetuned"] = gr.Checkbox(False, label="use my fine-tuned model",
                                     info="the copy you trained in the Fine-tune tab")
    # a share link's what-if branch: Generate forces this token at this step (1-based; 0 = none)
    with gr.Row(visible=False):
        c["force_step"] = gr.Number(s.force_step, precision=0, label="force step", elem_id="force-step")
        c["force_token"] = gr.Number(s.force_token, precision=0, label="force token", elem_id="force-token")
    controls = Controls(c, groups, lesson)
    names = list(groups)

    def show(strategy, stochastic, request: gr.Request = None):
        shown = visible(strategy, stochastic)
        updates = [gr.Accordion(visible=shown["filters"]) if name == "more" else gr.Group(visible=shown[name])
                   for name in names]
        return [explain(strategy), *updates]

    for event in (c["strategy"].change, c["stochastic"].change):
        event(show, [c["strategy"], c["stochastic"]], [lesson, *(groups[n] for n in names)],
              api_visibility="private", queue=False)
    return controls


def starting(settings: Settings | None) -> Settings | None:
    """A model's own settings as the panel's start: its length is the page's (a model's config has none)."""
    return replace(settings, max_new_tokens=UI_DEFAULTS.max_new_tokens) if settings is not None else None
