"""Share links: the page's query holds the prompt, the model and every setting under /generate's parameter
names (?prompt=...&strategy=beam+search&beams=3&seed=5). Opening one fills the controls, and Generate then gives
the text /generate gives for those parameters; the button copies the link of the current settings."""

from __future__ import annotations

import gradio as gr

from ..settings import from_query, to_query
from ..service import user_errors
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


def build(app, controls):
    """The link box and its button; returns (refresh(event): the box follows a generation, the page's load
    handler that fills the controls from a link)."""
    with gr.Row():
        link = gr.Textbox(label="share link", interactive=False, scale=4, elem_id="share-link", buttons=["copy"],
                          info="the prompt, model, settings and seed: opening it fills every control",
                          placeholder="press the button for a link to these settings")
        copy = gr.Button("Copy share link", scale=0, min_width=150, size="sm", elem_id="share")

    def share_query(*values):
        with user_errors():
            prompt, settings = settings_from_ui(*values)
            return to_query(prompt, settings.check(), app.model_name, app.amateur_name or "")

    copy.click(share_query, controls.inputs(), link, api_visibility="private", queue=False).then(
        None, link, link, js=COPY)

    def load_link(request: gr.Request):
        params = dict(getattr(request, "query_params", None) or {})
        with user_errors():
            prompt, settings = from_query(params)
        if settings is None:
            return [gr.skip()] * len(UI_INPUTS)
        # a model the link names is loaded by Generate (its compute charged to the visitor), not by opening it
        return fill(prompt, settings, settings.model or None, settings.amateur or None)

    def refresh(event):
        """After `event` (a generation) the box holds the link of what was generated (not copied)."""
        event.success(share_query, controls.inputs(), link, api_visibility="private", queue=False).then(
            None, link, link, js=LINK)

    return refresh, load_link
