"""The Generate tab: on top the prompt, the Generate button and chat mode, the text beside them (click a token);
below, the strategy's settings and the share link on the left, and on the right the strategy's own view, the
timeline (click a point), the step view (click a candidate to branch) and sampling a step N times; the what-if
branches below. The visitor's runs live in a gr.State (a `branches.Tree`).

`Handlers` are the tab's handlers: a generation, a branch, opening a step or a run all compute what the views
show (`Handlers.show`, a dict by name), which each view places (`View.place`)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import gradio as gr

from ..branches import Tree
from ..numbers.timeline import timeline as timeline_of
from ..panels import beam_tree_svg, speculative_html
from ..render import forks_html, step_html, tokens_html
from ..runs import Run
from ..service import session_of, throttle, user_errors
from ..settings import Settings, number
from . import (Triggered, View, beam_tree, branch_files, forks, keep_on_failure, layers, lessons, output, sample,
               sample_tree, settings, share, skip, speculative, step, timeline, with_visitor)
from .settings import settings_from_ui


# after another step of the same run opens (the slider holds it, 1-based), the beam tree and the speculative
# rounds, which the server leaves as drawn, move their mark to it; the tree scrolls sideways to show it
MARK_STEP = """(value) => {
  const step = Number(value) - 1;
  document.querySelectorAll('#beam-tree .axw-tree-head[data-step]').forEach((head) =>
    head.classList.toggle('axw-tree-sel', Number(head.dataset.step) === step));
  const head = document.querySelector('#beam-tree .axw-tree-sel');
  const box = head && head.closest('.axw-tree-scroll');
  if (box) {
    const x = head.getBBox().x;
    const hidden = x < box.scrollLeft || x > box.scrollLeft + box.clientWidth - 80;
    if (hidden) box.scrollLeft = Math.max(0, x - box.clientWidth / 2);
  }
  document.querySelectorAll('#speculative .axw-round[data-step]').forEach((round) =>
    round.classList.toggle('axw-round-sel', Number(round.dataset.step) <= step && step <= Number(round.dataset.last)));
}"""


def streaming(run: Run, tree: Tree | None = None) -> dict:
    """What a run's stream shows: its text as far as it has come and how many steps it took; at the end, with
    the visitor's `tree`."""
    shown = dict(output=tokens_html(run.prompt, run.pieces, run.probs, forced=run.step, specials=run.specials),
                 steps=len(run.rows))
    return shown if tree is None else {**shown, "tree": tree}


class Handlers(sample.Handlers, sample_tree.Handlers, forks.Handlers, layers.Handlers, branch_files.Handlers):
    """The Generate tab's handlers, mixed into the app with `service.Playground` (whose models, fair share and
    runs they use): a run, its steps, its branches."""

    def show(self, tree: Tree, run: Run, step: int | None = 0, full: bool = True) -> dict:
        """What the views draw of `run` with `step` (0-based) open, by name: the output with that token
        highlighted and the step view; with `full`, also the strategy's own view (the beam tree, speculative
        rounds) with the step marked, the timeline and the branches. Opening another step of the same run (`full`
        off) leaves those as drawn: the page moves the strategy view's mark itself (MARK_STEP), so a large
        beam tree is not drawn and sent again on every click. Each view places what it needs."""
        m = self.model_of(run)
        selected = None if step is None or not run.rows else min(max(int(step), 0), len(run.rows) - 1)
        row = run.rows[selected] if selected is not None else None
        previous = run.rows[selected - 1] if selected else None
        strategy = run.settings.strategy
        shown = dict(tree=tree, run=run, selected=selected, steps=len(run.rows), tokenizer=m.tokenizer,
                     output=tokens_html(run.prompt, run.pieces, run.probs, selected=selected, forced=run.step,
                                         specials=run.specials),
                     step=step_html(row, m.tokenizer, run.settings, previous=previous))
        if full:
            shown.update(beam_tree=beam_tree_svg(run.rows, m.tokenizer, run.prompt, selected,
                                                 run.settings.length_penalty) if strategy == "beam search" else None,
                         speculative=speculative_html(run.rows, m.tokenizer, selected,
                                                      self.drafter_label(run.settings))
                         if strategy == "speculative decoding" else None,
                         timeline=timeline_of(run), forks=forks_html(list(tree.runs.values()), m.tokenizer, run.id),
                         choices=tree.choices(m.tokenizer), current=run.id)
        return shown

    def drafter_label(self, settings: Settings) -> str:
        """The drafter as the rounds view names it: which model drafts."""
        if settings.drafter == "prompt lookup":
            return "prompt lookup"
        name = self.drafter_name(settings)
        first, *more = settings.drafter.split(" + ")
        return " + ".join([f"{first} ({Path(name or '').name or name})", *more])

    def generate_ui(self, *values, request: gr.Request = None, views: bool = True):
        """The Generate button. `values`: the controls (views.settings.UI_INPUTS order), then the visitor's tree.
        Yields what the views show: the output while it streams, then everything (without `views`: the output and
        the tree, for a page that draws the views itself afterwards). A share link's what-if branch (force_step) is
        generated after its text, and opened."""
        *controls, tree = values
        session = session_of(request)
        with self.metered(request), user_errors():
            prompt, settings = settings_from_ui(*controls)
            force = settings.check().force_step
            m, run, updates, cache = self.start(prompt, settings.unforced(), session, keep_cache=True)
            if force:  # refused before any compute when the forced token is not a token of this model
                settings.check(m.net.num_tokens)
            for run in throttle(updates):
                if not run.done:
                    yield streaming(run)
            tree = tree if isinstance(tree, Tree) else Tree()
            run.session = session
            tree.add(run)
            self.caches.drop(session)
            self.caches.put(session, run.id, cache)
            yield self.show(tree, run, 0) if views else streaming(run, tree)
            if force:
                yield from self.branch_ui(tree, force - 1, settings.force_token, request, metered=False, views=views)

    def branch_ui(self, tree, step, token, request: gr.Request = None, metered: bool = True, views: bool = True):
        """A candidate was clicked in the step view: branch the open run at `step` (0-based) with `token`, and
        open the branch. Yields like generate_ui."""
        session = session_of(request)
        parent = tree.get() if isinstance(tree, Tree) else None
        with (self.metered(request) if metered else nullcontext()), user_errors():
            if parent is None:
                raise ValueError("generate some text first: a branch starts from one of its steps")
            m, run, updates, cache = self.branch(parent, step, token, session, kept=self.caches.get(session, parent.id))
            for run in throttle(updates):
                if not run.done:
                    yield streaming(run)
            run.session = session
            tree.add(run)
            self.caches.drop(session, keep=set(tree.runs))
            self.caches.put(session, run.id, cache)
            yield self.show(tree, run, run.step) if views else streaming(run, tree)

    def step_ui(self, tree, step, request: gr.Request = None):
        """Open `step` (0-based) of the open run: the step view, and the output with that token highlighted."""
        with user_errors():
            run = tree.get() if isinstance(tree, Tree) else None
            if run is None or not run.rows:
                return {}
            step = number("step", step, 0, len(run.rows) - 1, integer=True)
            return self.show(tree, run, step, full=False)

    def open_ui(self, tree, run_id, request: gr.Request = None):
        """Open another run of the tree (the generated text or a branch), at its branch step."""
        with user_errors():
            run = tree.get(run_id) if isinstance(tree, Tree) else None
            if run is None:
                raise ValueError("that run is gone: generate again, or pick another")
            tree.current = run.id
            return self.show(tree, run, run.step if run.step is not None else 0)


def build(app, gpu, model_box, choices, concurrency: int):
    """The tab; returns (the settings panel, the share link's load handler, the views' CSS)."""
    start, _ = app.starting_settings()
    tree = gr.State(None)
    # the first screen: the prompt and the Generate button, the text beside them (on a phone, right below)
    with gr.Row():
        with gr.Column(scale=2):
            head = dict(prompt=settings.prompt_box())
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=100)
                stop = gr.Button("Stop", scale=1, min_width=80)
            head.update(settings.chat_rows(settings.starting(start)))
            link_box = gr.Column()  # the share link, once the controls it reads exist
        with gr.Column(scale=3):
            out, output_view = output.build()
    # below: the strategy and its settings, and what the run shows
    with gr.Row():
        with gr.Column(scale=2):
            controls = settings.build(model_box, choices, app.amateur_name, settings.starting(start), head)
        with gr.Column(scale=3):
            tree_html, tree_view = beam_tree.build()
            rounds, rounds_view = speculative.build()
            _, _, bridge, timeline_view = timeline.build()
            slider, chart, step_view = step.build()
            sample_view = sample.build(app, tree, slider)
            layers_view, follow_step = layers.build(app, gpu, tree, slider)
    with link_box:
        refresh_link, load_link = share.build(app, controls, tree)
    opened, forks_view = forks.build(app, tree)
    refresh_file, wire_file = branch_files.build(app, tree)
    sample_tree_view = sample_tree.build(app, controls, gpu, concurrency)
    # the what-if branch as an endpoint of this page (benchmarks call it; the browser clicks a candidate)
    with gr.Row(visible=False):
        branch_step, branch_token = gr.Number(0, precision=0), gr.Number(0, precision=0)
        branch_go = gr.Button("branch")

    # a share link's what-if branch is generated once: afterwards the page's controls hold no branch
    unforce = View([controls["force_step"], controls["force_token"]],
                   lambda shown: [0, 0] if "forks" in shown else skip(2))
    views = [output_view, tree_view, rounds_view, step_view, timeline_view, sample_view, layers_view, sample_tree_view,
             forks_view,
             unforce,
             View([tree], lambda shown: [shown["tree"]] if "tree" in shown else [gr.skip()])]
    outputs = [c for v in views for c in v.outputs]

    def place(shown: dict) -> list:
        return [u for v in views for u in v.place(shown)]

    # a run streams to the text and, at its end, the visitor's tree: only those two outputs, since gradio builds
    # a new component for every other output of each streamed update, even one left as it is; then a second event
    # draws every view of the run (`show_run`)
    with gr.Row(visible=False):  # the steps streamed so far (an API client reads the text first, then this)
        progress = gr.Number(0, precision=0, elem_id="streamed-steps")
    streamed_outputs = [out, progress, tree]

    def streamed(updates):
        for shown in updates:
            yield [shown["output"], shown.get("steps", gr.skip()), shown["tree"] if "tree" in shown else gr.skip()]

    # the handlers: each runs the service and places what it shows; the names are what ZeroGPU reports
    def generate_ui(*values, request: gr.Request = None):
        yield from streamed(app.generate_ui(*values, request=request, views=False))

    def branch_ui(tree, evt: Triggered, request: gr.Request = None):
        yield from branch_stream(tree, evt.data.get("step"), evt.data.get("token"), request)

    def branch_stream(tree, step, token, request: gr.Request = None):
        yield from streamed(app.branch_ui(tree, step, token, request=request, views=False))

    def show_run(tree, request: gr.Request = None):
        """Every view of the run a stream has just finished (the tree's open run, at its branch step)."""
        return place(app.open_ui(tree, tree.current if isinstance(tree, Tree) else None, request))

    def select_step(tree, evt: Triggered, request: gr.Request = None):
        return place(app.step_ui(tree, evt.data.get("step"), request))

    def slide_step(tree, value, request: gr.Request = None):
        return place(app.step_ui(tree, int(value or 1) - 1, request))

    def open_run(tree, run_id, request: gr.Request = None):
        return place(app.open_ui(tree, run_id, request))

    gen = dict(concurrency_limit=concurrency, concurrency_id="gen")
    # the controls' values reach the handler as sent (preprocess=False), so a bad one, from the page or a client
    # calling these endpoints, gets our message rather than a component's conversion error
    raw = dict(gen, preprocess=False)
    inputs = controls.inputs() + [tree]
    generate = gpu(with_visitor(generate_ui, len(inputs)))
    shown = dict(api_visibility="private", show_progress="hidden")
    run = go.click(generate, inputs, streamed_outputs, api_name="generate_controls", api_visibility="undocumented",
                   **raw)
    submitted = controls["prompt"].submit(generate, inputs, streamed_outputs, api_visibility="private", **raw)
    # a lesson of this tab fills the controls as its share link would, then runs as the button does
    lesson = controls.lessons.click(lessons.open_in_generate, None, controls.inputs(), api_visibility="private",
                                    queue=False).success(generate, inputs, streamed_outputs, api_visibility="private",
                                                         **raw)
    # the Generate button's endpoint as it was before the later controls: those take their defaults (a client
    # passing the first values only would otherwise be refused by gradio for the missing ones)
    with gr.Row(visible=False):
        old_go = gr.Button("generate")
    old_run = old_go.click(gpu(with_visitor(generate_ui, settings.FIRST_INPUTS + 1)),
                           inputs[:settings.FIRST_INPUTS] + [tree], streamed_outputs, api_name="generate_stream",
                           api_visibility="undocumented", **raw)
    branched = chart.click(gpu(branch_ui), [tree], streamed_outputs, api_visibility="private", **gen)
    branch_go_event = branch_go.click(gpu(branch_stream), [tree, branch_step, branch_token], streamed_outputs,
                                      api_name="branch_stream", api_visibility="undocumented", **raw)
    streams = (run, submitted, lesson, old_run, branched, branch_go_event)
    shows = [event.success(show_run, [tree], outputs, **shown) for event in streams]
    stop.click(None, cancels=[run, submitted, branched, old_run, lesson])

    opened_step = [out.click(select_step, [tree], outputs, **shown)]
    for clickable in (bridge, tree_html, rounds):
        opened_step.append(clickable.click(select_step, [tree], outputs, **shown))
    opened_step.append(slider.input(slide_step, [tree, slider], outputs, **shown))
    for event in opened_step:
        event.then(None, [slider], None, js=MARK_STEP, api_visibility="private", show_progress="hidden")
        follow_step(event)
    opened_event = opened.input(open_run, [tree, opened], outputs, **shown)
    for event in (*streams, opened_event):
        refresh_link(event)
        refresh_file(event)
    refresh_link(wire_file(place, outputs))
    for event in streams:
        keep_on_failure(event, streamed_outputs)
    for event in (*shows, opened_event, *opened_step):
        keep_on_failure(event, outputs)
    css = "\n".join(v.css for v in views)
    return controls, load_link, css
