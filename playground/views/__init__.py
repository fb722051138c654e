"""The playground's views, one module per view, each built by one function, with the handlers its events run.

A view's handlers are a `Handlers` class beside its `build` (generate, sample, forks, compare, finetune): methods
that use the core's models, fair share and runs (`playground.service.Playground`), which app.py mixes them into.
The core imports no view.

A view of the Generate tab is a `View`: the components the tab's shared handlers update (a generation, a branch,
opening a step or a run) and `place`, which turns what `generate.Handlers.show` computed (a dict by name) into one
update per component, `gr.skip()` for anything the dict lacks. A new view (a strategy's own panel, say) is a
module with a `build` returning a View, added to the list in `views.generate`; its own events are its own.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr
from gradio.helpers import special_args


@dataclass
class View:
    outputs: list = field(default_factory=list)
    place: Callable[[dict], list] = lambda shown: []
    css: str = ""


def skip(n: int = 1) -> list:
    return [gr.skip() for _ in range(n)]


def keep_on_failure(event, outputs: list):
    """After a refused request the toast says why; gradio would also leave an "Error" badge over every output of
    the event (hiding a table's rows) until it next updates. When `event` fails, update the same outputs with
    nothing new: the badges go, and what they showed before stays."""

    def unchanged(request: gr.Request = None):
        return skip(len(outputs))

    return event.failure(unchanged, None, outputs, api_visibility="private", show_progress="hidden", queue=False)


class Triggered(gr.EventData):
    """What a gr.HTML's js_on_load passed to trigger(name, data): `data`, a dict ({} when it sent none).

    A handler's parameter annotated with a gr.EventData subclass receives one built from the event's target and
    data, as gradio builds its own gr.SelectData; gradio's other route, `evt.<key>`, raises on an event sent with
    no data, which a client can send."""

    def __init__(self, target, data):
        super().__init__(target, data)
        self.data = data if isinstance(data, dict) else {}


def clicked_step(selector: str) -> str:
    """js_on_load for a gr.HTML whose elements matching `selector` carry `data-step`: a click sends that step."""
    return f"""element.addEventListener('click', (e) => {{
  const node = e.target.closest('{selector}');
  if (!node) return;
  trigger('click', {{step: Number(node.dataset.step)}});
}});"""


def step_panel(key: str, title: str, elem_id: str, selector: str, css: str) -> tuple[gr.HTML, View]:
    """A strategy's panel: a heading, and the HTML that `generate.Handlers.show` puts under `key` (hidden while
    there is none), in which a click on an element matching `selector` opens its step."""
    with gr.Column(visible=False, elem_id=f"{elem_id}-box") as box:
        gr.Markdown(title)
        html = gr.HTML("", elem_id=elem_id, js_on_load=clicked_step(selector))

    def place(shown: dict) -> list:
        if key not in shown:
            return skip(2)
        value = shown[key]
        return [gr.Column(visible=value is not None), value or ""]

    return html, View([box, html], place, css)


def with_visitor(fn: Callable, inputs: int) -> Callable:
    """`fn(*values, request=...)` as a handler of `inputs` values that gradio hands the visitor's gr.Request.

    Gradio passes the request only to a named positional parameter annotated gr.Request
    (gradio.helpers.special_args reads the signature up to the first *args), so a handler written with *values
    would run with request None: every visitor would be one, sharing one fair share and no fine-tuned copy."""
    names = [f"value_{i}" for i in range(inputs)] + ["request"]
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params[-1] = params[-1].replace(annotation=gr.Request, default=None)

    def split(args, request):
        # gradio passes the request positionally, after the values (the signature below says so)
        if request is None and len(args) == inputs + 1:
            *args, request = args
        return args, request

    if inspect.isgeneratorfunction(fn):  # gradio streams a generator's values: the handler must be one too
        @functools.wraps(fn)
        def handler(*args, request=None):
            values, request = split(args, request)
            yield from fn(*values, request=request)
    else:
        @functools.wraps(fn)
        def handler(*args, request=None):
            values, request = split(args, request)
            return fn(*values, request=request)
    handler.__signature__ = inspect.Signature(params)
    handler.__annotations__ = {"request": gr.Request}
    return handler


def receives_visitor(fn: Callable, inputs: int) -> bool:
    """Whether gradio would hand `fn`, called with `inputs` values, the request (asked of gradio itself)."""
    marker = object()
    values, *_ = special_args(fn, [None] * inputs, request=marker)
    return any(v is marker for v in values)


def check_handlers(demo: gr.Blocks):
    """Refuse to build a page with an event handler that cannot learn who is asking: the fair share, the visitor's
    fine-tuned copy and their KV caches all key on the request."""
    blind = [b.name for b in demo.fns.values() if b.fn is not None and not receives_visitor(b.fn, len(b.inputs))]
    if blind:
        raise TypeError(f"these handlers cannot receive the gr.Request (give them a named `request: gr.Request` "
                        f"parameter, or wrap them with views.with_visitor): {', '.join(sorted(set(blind)))}")
