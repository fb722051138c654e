"""The what-if branches: each branch point (the token taken and the one forced), any run reopened, and two
shown side by side, the prefix they share dimmed."""

from __future__ import annotations

import gradio as gr

from ..branches import Tree
from ..render import forks_html, side_by_side
from ..service import user_errors
from . import View, skip

CSS = ".axw-forks td { vertical-align: top; }"


class Handlers:
    """The branches view's handler, mixed into the app with `service.Playground`."""

    def side_by_side_ui(self, tree, a, b, request: gr.Request = None):
        """Runs `a` and `b` (ids in the visitor's tree) side by side, the prefix they share dimmed."""
        with user_errors():
            runs = [tree.get(i) if isinstance(tree, Tree) else None for i in (a, b)]
            ref = next((r for r in runs if r is not None), None)
            if ref is None:
                return side_by_side(None, None, None)
            return side_by_side(*runs, self.model_of(ref).tokenizer)


def build(app, tree) -> tuple[gr.Dropdown, View]:
    gr.Markdown("### What-if branches\nIn the step view, click a candidate to force it at that step: the text goes "
                "on from there with the same settings and seed, reusing what the model already read.",
                elem_id="forks-title")
    forks = gr.HTML(forks_html([], None), elem_id="forks")
    with gr.Row():
        opened = gr.Dropdown([], label="open", info="show this run in the output, step view and timeline",
                             elem_id="open-run", scale=1)
        a = gr.Dropdown([], label="side by side: left", elem_id="compare-a", scale=1)
        b = gr.Dropdown([], label="side by side: right", elem_id="compare-b", scale=1)
    with gr.Row(equal_height=True):
        left, right = gr.HTML(elem_id="side-a"), gr.HTML(elem_id="side-b")
    both = side_by_side(None, None, None)
    left.value, right.value = both

    def side_ui(tree, a, b, request: gr.Request = None):
        return app.side_by_side_ui(tree, a, b, request)

    for picker in (a, b):
        picker.input(side_ui, [tree, a, b], [left, right], api_visibility="private")

    def place(shown: dict) -> list:
        if "forks" not in shown:
            return skip(6)
        choices, current = shown["choices"], shown["current"]
        run = shown["run"]
        left_id = run.parent if run.parent is not None else current
        right_id = current if run.parent is not None else None
        pair = app.side_by_side_ui(shown["tree"], left_id, right_id) if right_id is not None else \
            side_by_side(None, None, None)
        return [shown["forks"], gr.Dropdown(choices=choices, value=current),
                gr.Dropdown(choices=choices, value=left_id), gr.Dropdown(choices=choices, value=right_id), *pair]

    return opened, View([forks, opened, a, b, left, right], place, CSS)
