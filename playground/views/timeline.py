"""The uncertainty timeline: over all steps, how unsure the model was (the entropy of its distribution and of
the processed one), the chosen token's probability and rank, and how many tokens were kept (gr.LinePlot; a
radio picks the measure, every point's tooltip has all of them). A click on a point opens that step."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from ..render import rounded
from . import View, skip

MEASURES = {  # what the radio offers: the series drawn (label, timeline field), and the y axis's title
    "uncertainty (entropy, bits)": ([("the model", "model_entropy"), ("after processing", "final_entropy")],
                                    "entropy (bits)"),
    "chosen token's probability": ([("chosen token", "chosen_prob")], "probability it was chosen with"),
    "chosen token's rank": ([("rank", "chosen_rank")], "rank under the model (1 = most likely)"),
    "tokens kept": ([("kept", "kept")], "tokens kept after the last stage"),
    "probability the constraint removed": ([("removed by the constraint", "constraint_removed")],
                                           "the model's probability outside the allowed tokens"),
}
DEFAULT = next(iter(MEASURES))
COLUMNS = ["step", "value", "series", "token", "p", "rank", "kept", "entropy"]
TYPES = dict(step="int64", value="float64", series="str", token="str", p="float64", rank="float64", kept="int64",
             entropy="float64")

# Gradio's plots report a dragged range (select), not a click; a click on the timeline reads the step of the
# point the plot's tooltip shows (the nearest one) and opens it
POINT_CLICK = """document.addEventListener('click', (e) => {
  if (!e.target.closest('#timeline')) return;
  const tip = document.querySelector('#vg-tooltip-element.visible');
  if (!tip) return;
  for (const row of tip.querySelectorAll('tr')) {
    const key = row.querySelector('.key'), value = row.querySelector('.value');
    if (key && value && key.textContent.trim() === 'step') {
      trigger('click', {step: Number(value.textContent) - 1});
      return;
    }
  }
}, true);"""

CSS = "#timeline-bridge { display: none; }"


def frame(records: list[dict], measure: str = DEFAULT, tokenizer=None) -> pd.DataFrame:
    """The plot's data: a row per step and series of `measure`, with every number in the tooltip."""
    rows = []
    for r in records:
        label = tokenizer.decode([r["token"]]) if tokenizer is not None and r["token"] is not None else ""
        for series, key in MEASURES[measure][0]:
            value = r.get(key)  # None: no point (no rank, no constraint)
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            # rounded as the tooltip shows them (no negative zero: an entropy of -1e-9 bits is 0)
            rows.append(dict(step=r["step"], value=rounded(float(value), 4), series=series, token=repr(label)[1:-1],
                             p=rounded(r["chosen_prob"], 4), rank=r["chosen_rank"], kept=r["kept"],
                             entropy=rounded(r["final_entropy"], 3)))
    return pd.DataFrame(rows, columns=COLUMNS).astype(TYPES)  # typed even when empty: the axes are numbers


def start_frame(measure: str) -> pd.DataFrame:
    """What a plot starts with: each of its series at one point (nothing drawn). Gradio takes a plot's series
    from the data it starts with, so they must all be there."""
    return pd.DataFrame([dict(step=1, value=0.0, series=s, token="", p=None, rank=None, kept=0, entropy=0.0)
                         for s, _ in MEASURES[measure][0]], columns=COLUMNS).astype(TYPES)


def build() -> tuple[gr.Radio, dict, gr.HTML, View]:
    """The radio and the plots, hidden until a run has steps to draw (no empty axes before it)."""
    with gr.Column(visible=False, elem_id="timeline-box") as box:
        measure = gr.Radio(list(MEASURES), value=DEFAULT, label="timeline", elem_id="timeline-measure",
                           info="how each step went; hover a point for all its numbers, click it to open that step")
        plots = {}
        with gr.Column(elem_id="timeline"):
            for name, (series, unit) in MEASURES.items():
                plots[name] = gr.LinePlot(start_frame(name), x="step", y="value",
                                          color="series" if len(series) > 1 else None, tooltip=COLUMNS, height=240,
                                          x_title="step", y_title=unit, show_label=False, visible=name == DEFAULT,
                                          elem_classes=["axw-timeline"])
    bridge = gr.HTML("", elem_id="timeline-bridge", js_on_load=POINT_CLICK)

    def pick(name, request: gr.Request = None):
        return [gr.LinePlot(visible=n == name) for n in MEASURES]

    measure.change(pick, measure, list(plots.values()), api_visibility="private", queue=False)

    def place(shown: dict) -> list:
        if "timeline" not in shown:
            return skip(1 + len(plots))
        records = shown["timeline"]
        return [gr.Column(visible=bool(records)), *(frame(records, name, shown.get("tokenizer")) for name in MEASURES)]

    return measure, plots, bridge, View([box, *plots.values()], place, CSS)
