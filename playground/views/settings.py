"""The settings panel: prompt, strategy and its settings, each with a one-line explanation.

The controls map one to one onto `Settings` (/generate's parameters): `settings_from_ui` reads them, `fill`
sets them (from a share link or a model's own settings). A new control is a field of `Settings`, a component
here, and an entry of UI_INPUTS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import gradio as gr

from ..caps import MAX_BEAMS, MAX_CONTRASTIVE_K, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, STRATEGIES
from ..settings import Settings, check_prompt

STRATEGY_INFO = {
    "sampling": "draw each token at random from the filtered, tempered distribution (temperature 0 = greedy: "
                "always the most likely token)",
    "beam search": "keep the most likely few sequences (beams) at every step and return the best: likely, often dull",
    "contrastive search": "take the likely token least similar to the text so far (Su et al. 2022): fights loops",
    "contrastive decoding": "prefer tokens the big model likes much more than a small 'amateur' model "
                            "(Li et al. 2022): removes the amateur's generic mistakes",
}

# the controls, in the order the Generate button (and its undocumented /generate_stream endpoint) takes them
UI_INPUTS = ["model", "prompt", "strategy", "max_new_tokens", "temperature", "use_k", "k", "use_p", "p", "use_min",
             "minp", "use_a", "a", "repetition_penalty", "no_repeat_ngram_size", "seed", "beams", "length_penalty",
             "penalty_alpha", "contrastive_k", "amateur", "cd_alpha", "cd_beta", "use_finetuned"]
# each filter: its checkbox, its slider, the Settings field
FILTER_CONTROLS = [("use_k", "k", "top_k"), ("use_p", "p", "top_p"), ("use_min", "minp", "min_p"),
                   ("use_a", "a", "top_a")]
# sliders: (minimum, maximum, step); a share link may ask for a value outside, within /generate's caps, and the
# slider then stretches to hold it
SLIDERS = dict(temperature=(0, 2, 0.05), k=(1, 200, 1), p=(0.05, 1, 0.01), minp=(0, 1, 0.01), a=(0, 1, 0.01),
               beams=(2, MAX_BEAMS, 1), length_penalty=(-1, 2, 0.1), penalty_alpha=(0, 1, 0.05),
               contrastive_k=(1, MAX_CONTRASTIVE_K, 1), cd_alpha=(0.01, 1, 0.01), cd_beta=(0, 2, 0.05),
               max_new_tokens=(1, MAX_NEW_TOKENS, 1), repetition_penalty=(0.5, 2, 0.05),
               no_repeat_ngram_size=(0, 6, 1))
# what the page starts with when the model has no generation_config.json of its own
UI_DEFAULTS = Settings(max_new_tokens=100, temperature=0.8, top_p=0.9)
FILTER_DEFAULTS = dict(k=40, p=0.9, minp=0.1, a=0.2)  # a switched-off filter's slider


def settings_from_ui(model, prompt, strategy, max_new_tokens, temperature, use_k, k, use_p, p, use_min, minp, use_a,
                     a, repetition_penalty, no_repeat_ngram_size, seed, beams, length_penalty, penalty_alpha,
                     contrastive_k, amateur, cd_alpha, cd_beta, use_finetuned) -> tuple[str, Settings]:
    """(prompt, Settings) from the controls; a switched-off filter is its /generate value for off."""
    check_prompt(prompt)
    return prompt, Settings(
        strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature, top_k=k if use_k else 0,
        top_p=p if use_p else 1.0, min_p=minp if use_min else 0.0, top_a=a if use_a else 0.0,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size, seed=seed, beams=beams,
        length_penalty=length_penalty, penalty_alpha=penalty_alpha, contrastive_k=contrastive_k,
        amateur=amateur or "", cd_alpha=cd_alpha, cd_beta=cd_beta, model=model or "", use_finetuned=bool(use_finetuned))


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
                  strategy=gr.Radio(value=settings.strategy, info=STRATEGY_INFO[settings.strategy]),
                  seed=settings.seed, use_finetuned=gr.skip(),
                  amateur=gr.Dropdown(value=amateur) if amateur else gr.skip())
    for use, slider, field in FILTER_CONTROLS:
        on = getattr(settings, field) != getattr(Settings(), field)
        values[use] = on
        values[slider] = _slider(slider, getattr(settings, field)) if on else gr.skip()
    for name in ("max_new_tokens", "temperature", "repetition_penalty", "no_repeat_ngram_size", "beams",
                 "length_penalty", "penalty_alpha", "contrastive_k", "cd_alpha", "cd_beta"):
        values[name] = _slider(name, getattr(settings, name))
    return [values[name] for name in UI_INPUTS]


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

    def inputs(self) -> list:
        return [self.components[name] for name in UI_INPUTS]

    def __getitem__(self, name):
        return self.components[name]


def build(model_box, choices, amateur: str | None, start: Settings | None = None) -> Controls:
    """The panel, starting from `start` (a model's own settings) or the page's defaults."""
    s = start or UI_DEFAULTS
    c = dict(model=model_box)

    def slider(name, label, info, value=None):
        low, high, step = SLIDERS[name]
        value = getattr(s, name) if value is None else value
        return gr.Slider(min(low, value), max(high, value), value, step=step, label=label, info=info)

    c["prompt"] = gr.Textbox("ROMEO:", label="prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt")
    c["strategy"] = gr.Radio(STRATEGIES, value=s.strategy, label="strategy", info=STRATEGY_INFO[s.strategy],
                             elem_id="strategy")
    with gr.Group(visible=s.strategy in ("sampling", "contrastive decoding")) as sampling_box:
        c["temperature"] = slider("temperature", "temperature",
                                  "divides the logits: < 1 sharpens, > 1 flattens, 0 = greedy")
        gr.Markdown("Filters cut unlikely tokens before sampling, applied in this order:")
        specs = dict(use_k=("top-k", "k", "keep only the k most likely tokens"),
                     use_p=("top-p", "p", "keep the fewest top tokens whose probabilities add up to p"),
                     use_min=("min-p", "min-p", "keep tokens at least min-p times as likely as the top one"),
                     use_a=("top-a", "top-a ratio", "keep tokens with p >= ratio x p_max²: strict when the model is "
                                                    "sure"))
        for use, name, field in FILTER_CONTROLS:
            label, slider_label, info = specs[use]
            on = getattr(s, field) != getattr(Settings(), field)
            low, high, step = SLIDERS[name]
            value = getattr(s, field) if on else FILTER_DEFAULTS[name]
            c[use], c[name] = filter_row(label, on, (min(low, value), max(high, value), value, step), slider_label,
                                         info)
    with gr.Group(visible=s.strategy == "beam search") as beam_box:
        c["beams"] = slider("beams", "beams", "how many sequences are kept at each step")
        c["length_penalty"] = slider("length_penalty", "length penalty",
                                     "score / length^penalty: > 0 favours longer beams")
    with gr.Group(visible=s.strategy == "contrastive search") as cs_box:
        c["penalty_alpha"] = slider("penalty_alpha", "penalty alpha", "weight of the degeneration penalty (0 = greedy)")
        c["contrastive_k"] = slider("contrastive_k", "k", "how many likely tokens are considered")
    with gr.Group(visible=s.strategy == "contrastive decoding") as cd_box:
        c["amateur"] = gr.Dropdown(choices, value=amateur, allow_custom_value=True, label="amateur model",
                                   info="a smaller model with the same tokenizer")
        c["cd_alpha"] = slider("cd_alpha", "alpha (plausibility)",
                               "only tokens with p >= alpha x p_max of the expert are allowed")
        c["cd_beta"] = slider("cd_beta", "beta", "score = (1 + beta) expert - beta amateur logits")
    with gr.Accordion("length, seed and penalties", open=True):
        c["max_new_tokens"] = slider("max_new_tokens", "max new tokens",
                                     f"how many tokens to generate (at most {MAX_NEW_TOKENS})")
        c["seed"] = gr.Number(s.seed, precision=0, label="seed", info="the same seed and settings give the same text")
        c["repetition_penalty"] = slider("repetition_penalty", "repetition penalty",
                                         "> 1 makes tokens already in the text less likely (1 = off)")
        c["no_repeat_ngram_size"] = slider("no_repeat_ngram_size", "no-repeat n-gram",
                                           "forbid repeating any n-gram of this size (0 = off)")
    c["use_finetuned"] = gr.Checkbox(False, label="use my fine-tuned model",
                                     info="the copy you trained in the Fine-tune tab")
    controls = Controls(c, dict(sampling=sampling_box, beam=beam_box, cs=cs_box, cd=cd_box))

    def show(strategy):
        return (gr.Radio(info=STRATEGY_INFO.get(strategy, "")),
                gr.Group(visible=strategy in ("sampling", "contrastive decoding")),
                gr.Group(visible=strategy == "beam search"), gr.Group(visible=strategy == "contrastive search"),
                gr.Group(visible=strategy == "contrastive decoding"))

    c["strategy"].change(show, c["strategy"], [c["strategy"], sampling_box, beam_box, cs_box, cd_box],
                         api_visibility="private", queue=False)
    return controls


def starting(settings: Settings | None) -> Settings | None:
    """A model's own settings as the panel's start: its length is the page's (a model's config has none)."""
    return replace(settings, max_new_tokens=UI_DEFAULTS.max_new_tokens) if settings is not None else None
