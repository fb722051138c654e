"""The settings panel: prompt, strategy and its settings, each with a one-line explanation.

The controls map one to one onto `Settings` (/generate's parameters), and both come from the settings declared in
`axw.specs`: each control's kind, range, label and help are its setting's. `settings_from_ui` reads them, `fill`
sets them (from a share link or a model's own settings). A filter is an on/off checkbox beside its slider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import gradio as gr

from axw.specs import APP_SPECS, FILTER_SPECS, SPEC, Spec

from ..caps import MAX_PROMPT_CHARS, STRATEGIES
from ..lessons import explain
from ..settings import Settings, check_prompt, group_names
from ..structure import BOXES, EXAMPLES, NONE
from ..structure import example as structure_example


def control_names(spec: Spec) -> list[str]:
    """The page's controls of one setting: a filter's checkbox and its slider (a filter without a value has only
    the checkbox), or the setting's own control."""
    if spec.is_filter and spec.main:
        return [spec.toggle] + ([spec.control] if spec.param is not None else [])
    return [spec.control or spec.name]


# the controls, in the order the Generate button (and its undocumented /generate_stream endpoint) takes them: the
# settings' order, the model picker and the prompt first; the ones after use_finetuned came later, so calls that
# stop there still mean what they meant
UI_INPUTS = ["model", "prompt"] + [name for s in APP_SPECS if s.name != "model" for name in control_names(s)]
FIRST_INPUTS = UI_INPUTS.index("use_finetuned") + 1  # what /generate_stream takes; the later ones by default
# each filter: its checkbox, its slider (None: it has no value), the Settings field
FILTER_CONTROLS = [(s.toggle, s.control if s.param is not None else None, s.name) for s in FILTER_SPECS]
# each filter's checkbox label, slider label and one-line explanation with its paper
FILTER_TEXT = {s.toggle: (s.label, s.short or s.label, s.help + (f" ({s.paper})" if s.paper else ""))
               for s in FILTER_SPECS}
# sliders: (minimum, maximum, step); a share link may ask for a value outside, within /generate's caps, and the
# slider then stretches to hold it
SLIDERS = {s.control or s.name: s.slider for s in APP_SPECS if s.slider}
# the sliders that are Settings fields of the same name
PLAIN_SLIDERS = [s.name for s in APP_SPECS if s.slider and not (s.is_filter and s.main)]
# what the page starts with when the model has no generation_config.json of its own
UI_DEFAULTS = Settings(max_new_tokens=100, temperature=0.8, top_p=0.9)
FILTER_DEFAULTS = {s.control: s.start for s in FILTER_SPECS if s.param is not None}  # a switched-off filter's slider
FIRST_FILTERS = 4  # x-transformers' four filters sit in the panel; the samplers since under "more samplers"
NONE_IS_DEFAULT = {"model", "amateur", "force_step", "force_token", "chat", "system"}  # empty boxes send None


def control_default(name: str):
    """What a control holds when a call leaves it out: its setting's default, a filter off (its slider at the
    value it starts from)."""
    for s in APP_SPECS:
        if name == s.toggle:
            return False
        if s.is_filter and s.main and name == s.control:
            return s.start
        if name == (s.control or s.name):
            return s.default
    raise KeyError(name)


def settings_from_ui(*values) -> tuple[str, Settings]:
    """(prompt, Settings) from the controls' values in UI_INPUTS order (those after use_finetuned may be left
    out: their defaults); a switched-off filter is its /generate value for off."""
    if not FIRST_INPUTS <= len(values) <= len(UI_INPUTS):
        raise TypeError(f"the controls are {FIRST_INPUTS} to {len(UI_INPUTS)} values, got {len(values)}")
    given = dict(zip(UI_INPUTS, values))
    given.update({name: control_default(name) for name in UI_INPUTS[len(values):]})
    prompt = check_prompt(given["prompt"])
    out = {}
    for s in APP_SPECS:
        if s.is_filter and s.main:
            on = given[s.toggle]
            out[s.name] = bool(on) if s.param is None else given[s.control] if on else s.off
            continue
        value = given[s.control or s.name]
        out[s.name] = s.default if value is None and s.name in NONE_IS_DEFAULT else value
    out["use_finetuned"] = bool(out["use_finetuned"])
    out["amateur"], out["model"] = out["amateur"] or "", out["model"] or ""
    return prompt, Settings(**out)


def ui_values(prompt: str, settings: Settings) -> list:
    """The values the page sends for `prompt` and `settings` (UI_INPUTS order): what the Generate button's event
    receives when a visitor sets the controls so. A switched-off filter's slider holds its default."""
    values = {(s.control or s.name): getattr(settings, s.name) for s in APP_SPECS if not s.is_filter or not s.main}
    values["prompt"] = prompt
    for use, slider, field in FILTER_CONTROLS:
        values[use] = not SPEC[field].is_off(getattr(settings, field))
        if slider is not None:
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
                  prompt=prompt if prompt is not None else gr.skip(), use_finetuned=gr.skip(),
                  amateur=gr.Dropdown(value=amateur) if amateur else gr.skip())
    for s in APP_SPECS:
        if not s.is_filter and not s.slider and s.name not in values:
            values[s.control or s.name] = getattr(settings, s.name)
    for use, slider, field in FILTER_CONTROLS:
        on = not SPEC[field].is_off(getattr(settings, field))
        values[use] = on
        if slider is not None:
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


def filter_row(name: str, on: bool, slider: tuple | None, label: str, info: str):
    """A filter's on/off checkbox beside its slider (minimum, maximum, default, step); a filter without a value
    is the checkbox alone, with its explanation."""
    if slider is None:
        return gr.Checkbox(on, label=name, info=info), None
    low, high, value, step = slider
    with gr.Row():
        use = gr.Checkbox(on, label=name, scale=1, min_width=80)
        setting = gr.Slider(low, high, value, step=step, label=label, scale=4, info=info)
    return use, setting


def explained(spec: Spec) -> str:
    """A setting's one line of help, with its paper."""
    return spec.help + (f" ({spec.paper})" if spec.paper else "")


def control(name: str, start: Settings, **kwargs):
    """The control of setting `name` as it declares it, showing its value in `start`: a slider, a checkbox, a
    choice of its values, or a number box."""
    spec, value = SPEC[name], getattr(start, name)
    kwargs = dict(label=spec.short or spec.label, info=explained(spec)) | kwargs
    if spec.slider:
        low, high, step = spec.slider
        return gr.Slider(min(low, value), max(high, value), value, step=step, **kwargs)
    if spec.kind is bool:
        return gr.Checkbox(value, **kwargs)
    if spec.choices:
        return gr.Radio(list(spec.choices), value=value, **kwargs)
    if spec.kind is str:  # a text: DoLa's layers on one line, the structure group's constraints on several
        structure = spec.group == "structure"
        return gr.Textbox(value, lines=2 if structure else 1, max_lines=12 if structure else 1, **kwargs)
    return gr.Number(value, precision=0 if spec.integer else None, **kwargs)


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
                speculative="drafter" in reads, dola="dola_layers" in reads)


def prompt_box() -> gr.Textbox:
    """The prompt: with `chat_rows`, the panel's head, which the Generate tab places around its button (passed to
    `build` as `head`)."""
    return gr.Textbox("ROMEO:", label="prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt")


def chat_rows(start: Settings | None = None) -> dict:
    """Chat mode and the system message, by UI_INPUTS name."""
    s = start or UI_DEFAULTS
    c = {}
    with gr.Row(equal_height=True):
        c["chat"] = control("chat", s, scale=1, min_width=120, elem_id="chat", info="instruct models")
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

    def place(*names, **kwargs):
        for name in names:
            c[name] = control(name, s, **kwargs)

    def filters(specs):
        for f in specs:
            on = not f.is_off(getattr(s, f.name))
            label, slider_label, info = FILTER_TEXT[f.toggle]
            slider = None
            if f.param is not None:
                low, high, step = f.slider
                value = getattr(s, f.name) if on else f.start
                slider = (min(low, value), max(high, value), value, step)
            c[f.toggle], widget = filter_row(label, on, slider, slider_label, info)
            if widget is not None:
                c[f.control] = widget
            place(*(x.name for x in APP_SPECS if x.filter == f.name and not x.main))

    c.update(dict(prompt=prompt_box(), **chat_rows(s)) if head is None else head)
    place("strategy", info=None, elem_id="strategy")
    lesson = gr.HTML(explain(s.strategy), elem_id="lesson", elem_classes=["axw-lesson"], js_on_load=LESSON_CLICK,
                     css_template=LESSON_CSS)
    with gr.Group(visible=shown["beam"]) as groups["beam"]:
        place("beams", "length_penalty")
        place("stochastic", elem_id="stochastic")
    with gr.Group(visible=shown["cs"]) as groups["cs"]:
        place("penalty_alpha", "contrastive_k")
    with gr.Group(visible=shown["speculative"]) as groups["speculative"]:
        place("drafter", elem_id="drafter")
        place("num_assistant_tokens", "num_assistant_tokens_schedule")
    with gr.Group(visible=shown["amateur"]) as groups["amateur"]:
        c["amateur"] = gr.Dropdown(choices, value=amateur, allow_custom_value=True, label=SPEC["amateur"].label,
                                   info=SPEC["amateur"].help)
    with gr.Group(visible=shown["cd"]) as groups["cd"]:
        place("cd_alpha", "cd_beta")
    with gr.Group(visible=shown["dola"]) as groups["dola"]:
        place("dola_layers", elem_id="dola-layers")
    with gr.Group(visible=shown["temperature"]) as groups["temperature"]:
        place("temperature")
    with gr.Group(visible=shown["filters"]) as groups["filters"]:
        gr.Markdown("Filters cut unlikely tokens before sampling, chained in this order:")
        filters(FILTER_SPECS[:FIRST_FILTERS])
    with gr.Accordion("more samplers", open=False, visible=shown["filters"], elem_id="more-samplers") as more:
        groups["more"] = more
        place("sampler_order", elem_id="sampler-order")
        filters([f for f in FILTER_SPECS[FIRST_FILTERS:] if f.group == "filters"])
        with gr.Group(visible=shown["xtc_mirostat"]) as groups["xtc_mirostat"]:  # sampling's alone
            place(*group_names("xtc", "mirostat"))
            filters([f for f in FILTER_SPECS if f.group == "stateful"])
        with gr.Group(visible=shown["dynatemp"]) as groups["dynatemp"]:
            place(*group_names("dynatemp"))
    with gr.Accordion("length, seed and penalties", open=True):
        place("max_new_tokens", "seed", "repetition_penalty", "no_repeat_ngram_size", "dry_multiplier")
        with gr.Row():
            place("dry_base", "dry_allowed_length")
    with gr.Accordion("structure", open=False, elem_id="structure"):
        gr.Markdown("Constrain the text to a format, one at a time: the grammar stage keeps only the tokens the "
                    "format allows next, so what the model keeps is its own distribution renormalised over them.")
        example = gr.Dropdown(list(EXAMPLES), value=NONE, label="ready examples", elem_id="structure-example")
        for name in BOXES:
            c[name] = control(name, s, elem_id=f"structure-{name.replace('_', '-')}")

    def fill_example(name, request: gr.Request = None):
        return structure_example(name)

    example.change(fill_example, example, [c[name] for name in BOXES], api_visibility="private", queue=False)
    c["use_finetuned"] = control("use_finetuned", replace(s, use_finetuned=False))
    # a share link's what-if branch: Generate forces this token at this step (1-based; 0 = none)
    with gr.Row(visible=False):
        place("force_step", label="force step", info=None, elem_id="force-step")
        place("force_token", label="force token", info=None, elem_id="force-token")
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
