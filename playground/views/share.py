"""Share links: the page's query holds the prompt, the model and every setting under /generate's parameter
names (?prompt=...&strategy=beam+search&beams=3&seed=5). Opening one fills the controls, and Generate then gives
the text /generate gives for those parameters; the button copies the link of the current settings."""

from __future__ import annotations

from dataclasses import replace

import gradio as gr

from ..branches import Tree
from ..settings import from_query, to_query
from ..service import user_errors
from . import with_visitor
from .settings import UI_INPUTS, fill, settings_from_ui

# the link is the page's own address with the query the server wrote
LINK = """(query) => query ? window.location.origin + window.location.pathname + '?' + query : query"""
# the button copies it, and the address bar shows it too
COPY = """(query) => {
  if (!query) return query;
  const url = window.location.origin + window.location.pathname + '?' + query;
  try { window.history.replaceState(null, '', url); } catch (e) {}
  if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  return url;
}"""


def build(app, controls, tree):
    """The link box and its button; returns (refresh(event): the box follows a generation or a branch, the
    page's load handler that fills the controls from a link)."""
    with gr.Row():
        link = gr.Textbox(label="share link", interactive=False, scale=4, min_width=240, elem_id="share-link",
                          buttons=["copy"],
                          info="the prompt, model, settings and seed: opening it fills every control",
                          placeholder="press the button for a link to these settings")
        copy = gr.Button("Copy share link", scale=0, min_width=150, size="sm", elem_id="share")

    def share_query(*values, request: gr.Request = None):
        with user_errors():
            prompt, settings = settings_from_ui(*values)
            return to_query(prompt, settings.check(), app.model_name, app.amateur_name or "")

    copy.click(with_visitor(share_query, len(controls.inputs())), controls.inputs(), link, api_visibility="private",
               queue=False).then(
        None, link, link, js=COPY)

    def load_link(request: gr.Request):
        params = dict(getattr(request, "query_params", None) or {})
        with user_errors():
            prompt, settings = from_query(params)
        if settings is None:
            return [gr.skip()] * len(UI_INPUTS)
        # a model the link names is loaded by Generate (its compute charged to the visitor), not by opening it
        return fill(prompt, settings, settings.model or None, settings.amateur or None)

    def run_query(tree, request: gr.Request = None):
        """The link of the open run: its prompt and settings, and for a branch of the generated text the token it
        forced and where (a branch of a branch has no link of its own: the link is its parent's)."""
        run = tree.get() if isinstance(tree, Tree) else None
        while run is not None and run.parent not in (None, tree.root.id if tree.root else None):
            run = tree.get(run.parent)
        if run is None:
            return gr.skip()
        settings = run.settings
        if run.parent is not None:
            settings = replace(settings, force_step=run.step + 1, force_token=run.forced)
        return to_query(run.prompt, settings, app.model_name, app.amateur_name or "")

    def refresh(event):
        """After `event` (a generation, a branch, a run opened) the box holds the link of the open run (not
        copied)."""
        event.success(run_query, tree, link, api_visibility="private", queue=False).then(None, link, link, js=LINK)

    return refresh, load_link
