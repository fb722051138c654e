"""Sample this step N times: N tokens drawn from the open step's final distribution, their histogram beside the
exact probabilities (gr.BarPlot), so a learner sees that sampling follows the numbers."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from ..branches import Tree
from ..caps import MAX_DRAWS, MAX_NEW_TOKENS
from ..numbers.draws import draw
from ..render import show_number, show_token
from ..service import user_errors
from ..settings import number
from . import View

CSS = ".axw-draws td, .axw-draws th { text-align: right; } .axw-draws td:first-child { text-align: left; }"


def frames(labels: list[str], exact: list[float], counts: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(exact probabilities, shares of the draws, a table of both) for the plots."""
    n = sum(counts)
    exact_frame = pd.DataFrame(dict(token=labels, probability=exact))
    drawn = pd.DataFrame(dict(token=labels, share=[c / n for c in counts], count=counts))
    rows = "".join(f"<tr><td><code>{html.escape(t)}</code></td><td>{show_number(p, '.4f')}</td><td>{c:,}</td>"
                   f"<td>{show_number(c / n, '.4f')}</td></tr>" for t, p, c in zip(labels, exact, counts))
    table = (f'<table class="axw-table axw-draws"><tr><th>token</th><th>exact p</th><th>drawn</th>'
             f'<th>share of {n:,}</th></tr>{rows}</table>')
    return exact_frame, drawn, table


def empty():
    return (pd.DataFrame(dict(token=[], probability=[])).astype(dict(token="str", probability="float64")),
            pd.DataFrame(dict(token=[], share=[], count=[])).astype(dict(token="str", share="float64", count="int64")),
            "")


class Handlers:
    """The sampling view's handler, mixed into the app with `service.Playground`."""

    def sample_ui(self, tree, step, n, request: gr.Request = None):
        """Draw `n` tokens from the final distribution of `step` (0-based) of the open run: (its trace row, the
        labels, the exact probabilities, the counts), the last of each for all other tokens together."""
        run = tree.get() if isinstance(tree, Tree) else None
        with user_errors():
            if run is None or not run.rows:
                raise ValueError("generate some text and open a step first")
            step = number("step", step, 0, len(run.rows) - 1, integer=True)
            row = run.rows[step]
            exact, counts = draw(row, n, run.settings.seed)
            tokenizer = self.model_of(run).tokenizer
        # numbered so that the plots, which order their bars by label, keep the candidates' order
        labels = [f"{i + 1:02d} {show_token(tokenizer, t)}" for i, t in enumerate(row["candidates"])]
        labels.append(f"{len(labels) + 1:02d} all others")
        return row, labels, exact, counts


def build(app, tree, slider) -> View:
    with gr.Accordion("sample this step N times", open=False, elem_id="sample"):
        gr.Markdown("Draw N tokens from this step's final distribution (after the last stage), as the sampler "
                    "does once per step: the traced candidates, and all other tokens as one bar. Greedy, beam "
                    "search and contrastive search take the best token instead of drawing.")
        with gr.Row():
            n = gr.Number(1000, precision=0, minimum=1, maximum=MAX_DRAWS, label="N", scale=1, elem_id="draws")
            go = gr.Button("Sample this step", scale=1, elem_id="sample-go")
        with gr.Row():  # shown once there are draws: no empty axes before
            exact_plot = gr.BarPlot(empty()[0], x="token", y="probability", title="exact probability", height=260,
                                    elem_id="sample-exact", x_label_angle=-35, visible=False)
            drawn_plot = gr.BarPlot(empty()[1], x="token", y="share", title="share of the N draws", height=260,
                                    elem_id="sample-drawn", tooltip=["token", "share", "count"],
                                    x_label_angle=-35, visible=False)
        table = gr.HTML("", elem_id="sample-table")

    def sample_ui(tree, step, n, request: gr.Request = None):
        with user_errors():
            step = number("step", step, 1, MAX_NEW_TOKENS, integer=True)
        row, labels, exact, counts = app.sample_ui(tree, step - 1, n, request)
        exact_frame, drawn, text = frames(labels, exact, counts)
        return gr.BarPlot(exact_frame, visible=True), gr.BarPlot(drawn, visible=True), text

    go.click(sample_ui, [tree, slider, n], [exact_plot, drawn_plot, table], api_visibility="private",
             preprocess=False)

    def place(shown: dict) -> list:
        if "step" not in shown:
            return [gr.skip()] * 3
        exact_frame, drawn, text = empty()  # another step or run: its draws are not these
        return [gr.BarPlot(exact_frame, visible=False), gr.BarPlot(drawn, visible=False), text]

    return View([exact_plot, drawn_plot, table], place, CSS)
