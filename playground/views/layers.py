"""The layer view (logit lens): what each layer would have predicted at the open step, so a learner sees where in
the network the choice formed; for DoLa, the two layers it contrasted are marked. It costs one forward over the
step's prefix, so it is computed when a learner opens a step (or presses its button), never while generating."""

from __future__ import annotations

import gradio as gr

from ..branches import Tree
from ..caps import MAX_NEW_TOKENS
from ..layer_panels import layers_html
from ..numbers.layers import layer_view
from ..service import session_of, user_errors
from ..settings import number
from . import View

CSS = """
.axw-layer-table tr.axw-contrasted { background: rgba(249, 115, 22, 0.16); }
.axw-layer-table td small { opacity: 0.75; }
"""


class Handlers:
    """The layer view's handler, mixed into the app with `service.Playground`."""

    def layers_ui(self, tree, step, request: gr.Request = None) -> str:
        """The layer view of `step` (0-based) of the open run, as HTML."""
        run = tree.get() if isinstance(tree, Tree) else None
        with user_errors():
            if run is None or not run.rows:
                raise ValueError("generate some text and open a step first")
            step = number("step", step, 0, len(run.rows) - 1, integer=True)
            model = self.model_of(run, session_of(request))
        with self.metered(request), user_errors():
            lens = layer_view(model, run, step)
        return layers_html(lens, model.tokenizer)


def build(app, gpu, tree, slider) -> tuple[View, callable]:
    """The view, and `follow(event)`: after `event` (a step opened) the view shows that step's layers."""
    with gr.Accordion("layers: where the choice formed", open=True, elem_id="layers"):
        go = gr.Button("Show the layers of this step", size="sm", elem_id="layers-go")
        shown = gr.HTML(layers_html(None, None), elem_id="layer-view")

    def layers_ui(tree, step, request: gr.Request = None):
        with user_errors():
            step = number("step", step, 1, MAX_NEW_TOKENS, integer=True)
        return app.layers_ui(tree, step - 1, request)

    handler = gpu(layers_ui)
    go.click(handler, [tree, slider], [shown], api_visibility="private", preprocess=False)

    def follow(event):
        event.then(handler, [tree, slider], [shown], api_visibility="private", show_progress="hidden")

    def place(values: dict) -> list:
        # another step or run: its layers are not these (a step the learner opened fills them again, `follow`)
        return [layers_html(None, None)] if "step" in values else [gr.skip()]

    return View([shown], place, CSS), follow
