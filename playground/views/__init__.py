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
