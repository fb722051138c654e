"""The step view: what happened to the distribution at one step (the numbers after each stage, the strategy's
panels, the candidates); the slider is the keyboard path to it. A click on a candidate forces that token at
this step and continues from there: a what-if branch (views.generate wires it)."""

from __future__ import annotations

import gradio as gr

from ..render import step_html
from . import View, skip

CSS = """
/* a table wider than its place (many stages, a phone) scrolls sideways in its own box, the page keeps its width:
   the table element is that box, its body (all its rows: no <thead>) the table, stretched to the box's width and
   growing past it */
.axw-table { font-size: 13px; }
table.axw-table, .prose table.axw-table { display: block; overflow-x: auto; width: 100%; max-width: 100%;
                                          padding: 0; border: 0; }
.axw-table > tbody { display: table; width: 100%; border-collapse: collapse;
                     border: 1px solid var(--body-text-color); }
.axw-alpha { max-width: 100%; height: auto; }
.axw-table th, .axw-table td { border-bottom: 1px solid var(--border-color-primary); padding: 3px 6px;
                               text-align: left; }
.axw-table tr.axw-chosen { background: rgba(99, 102, 241, 0.15); font-weight: 600; }
.axw-table td.axw-cut { color: #b91c1c; font-style: italic; }
.axw-table td.axw-gone { opacity: 0.45; }
.axw-table tr.axw-cand { cursor: pointer; }
.axw-table tr.axw-cand:hover { background: rgba(245, 158, 11, 0.18); }
.axw-table td.axw-whatif { color: #4f46e5; font-size: 12px; white-space: nowrap; }
.axw-bar { position: relative; min-width: 90px; height: 18px; background: rgba(128,128,128,0.12); border-radius: 3px; }
.axw-bar div { position: absolute; left: 0; top: 0; bottom: 0; background: #818cf8; border-radius: 3px; }
.axw-bar span { position: relative; padding-left: 4px; font-size: 12px; }
.axw-beam { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.axw-stages { margin: 6px 0 8px 1.2em; padding: 0; font-size: 13px; }
.axw-stages li { margin: 1px 0; }
.axw-forced-note { color: #4f46e5; }
.axw-table tr.axw-kept td { font-weight: 600; }
.axw-table tr.axw-gone td { opacity: 0.45; }
.axw-sweep th, .axw-sweep td { text-align: center; padding: 2px 3px; }
.axw-alpha { margin: 6px 0; }
.axw-alpha text { fill: var(--body-text-color); }
.axw-alpha .axw-axis { stroke: #94a3b8; }
.axw-alpha .axw-line { stroke: #94a3b8; stroke-width: 1; opacity: 0.6; }
.axw-alpha .axw-line-win { stroke: #4f46e5; stroke-width: 2; }
.axw-alpha .axw-now { stroke: #f59e0b; stroke-width: 2; stroke-dasharray: 4 3; }
.axw-bar2 { position: relative; min-width: 140px; height: 18px; background: rgba(128,128,128,0.12);
            border-radius: 3px; }
.axw-bar2 .axw-e { position: absolute; left: 0; top: 0; bottom: 0; background: #818cf8; border-radius: 3px; }
.axw-bar2 .axw-a { position: absolute; left: 0; top: 5px; bottom: 5px; background: rgba(249, 115, 22, 0.85);
                   border-radius: 2px; }
.axw-bar2 .axw-cut-line { position: absolute; top: -2px; bottom: -2px; width: 0; border-left: 2px dashed #dc2626; }
"""

# a click on a candidate row sends the step and the token to force there
CANDIDATE_CLICK = """element.addEventListener('click', (e) => {
  const row = e.target.closest('tr[data-token]');
  const step = e.target.closest('[data-step]');
  if (!row || !step) return;
  row.classList.add('axw-chosen');
  trigger('click', {step: Number(step.dataset.step), token: Number(row.dataset.token)});
});"""


def build() -> tuple[gr.Slider, gr.HTML, View]:
    # shown once a run has steps
    slider = gr.Slider(1, 2, 1, step=1, label="step", interactive=False, elem_id="step", visible=False,
                       info="pick a step (or click a token) to see how the distribution was shaped")
    chart = gr.HTML(step_html(None, None), elem_id="step-chart", js_on_load=CANDIDATE_CLICK)

    def place(shown: dict) -> list:
        if "step" not in shown:
            return skip(2)
        steps, selected = shown["steps"], shown["selected"]
        # a slider needs minimum < maximum
        return [gr.Slider(minimum=1, maximum=max(steps, 2), value=(selected or 0) + 1, step=1,
                          interactive=steps > 1, visible=steps > 0), shown["step"]]

    return slider, chart, View([slider, chart], place, CSS)
