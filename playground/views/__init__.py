"""The playground's views, one module per view, each built by one function.

A view of the Generate tab is a `View`: the components the tab's shared handlers update (a generation, a
branch, opening a step or a run) and `place`, which turns what `Playground.show` computed (a dict by name) into
one update per component, `gr.skip()` for anything the dict lacks. A new view (a strategy's own panel, say) is a
module with a `build` returning a View, added to the list in `views.generate`; its own events are its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gradio as gr


@dataclass
class View:
    outputs: list = field(default_factory=list)
    place: Callable[[dict], list] = lambda shown: []
    css: str = ""


def skip(n: int = 1) -> list:
    return [gr.skip() for _ in range(n)]


def event_data(evt) -> dict:
    """What a gr.HTML's js_on_load passed to trigger(), or {}."""
    data = getattr(evt, "_data", None)
    return data if isinstance(data, dict) else {}


def clicked_step(selector: str) -> str:
    """js_on_load for a gr.HTML whose elements matching `selector` carry `data-step`: a click sends that step."""
    return f"""element.addEventListener('click', (e) => {{
  const node = e.target.closest('{selector}');
  if (!node) return;
  trigger('click', {{step: Number(node.dataset.step)}});
}});"""


def step_panel(key: str, title: str, elem_id: str, selector: str, css: str) -> tuple[gr.HTML, View]:
    """A strategy's panel: a heading, and the HTML that `Playground.show` puts under `key` (hidden while there is
    none), in which a click on an element matching `selector` opens its step."""
    with gr.Column(visible=False, elem_id=f"{elem_id}-box") as box:
        gr.Markdown(title)
        html = gr.HTML("", elem_id=elem_id, js_on_load=clicked_step(selector))

    def place(shown: dict) -> list:
        if key not in shown:
            return skip(2)
        value = shown[key]
        return [gr.Column(visible=value is not None), value or ""]

    return html, View([box, html], place, css)
