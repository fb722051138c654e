"""The sample tree: sample the prompt N times (seeds seed..seed+N-1, the current settings) and see the texts as
a prefix tree, each edge as thick as the share of texts that took it; beside it how many texts are distinct and
the entropy of the first k tokens, and the same for one setting changed, side by side. A click on a node opens
its step: what the step view shows for that prefix. /sample_tree returns the tree as JSON."""

from __future__ import annotations

import html
from dataclasses import replace

import gradio as gr

from ..caps import MAX_TREE_SAMPLES
from ..numbers.sample_tree import summary
from ..render import step_html
from ..sample_tree import changed, check_request, drawn, sample_texts, tree_json
from ..sample_tree_svg import numbers_html, tree_svg
from ..service import session_of, user_errors
from ..settings import PARAMS, Settings, check_prompt, number, settings_from_dict
from . import Triggered, View, with_visitor
from .settings import settings_from_ui

CSS = """
.axw-st-scroll { overflow: auto; max-height: 460px; border: 1px solid var(--border-color-primary);
                 border-radius: 8px; padding: 4px; contain: content; }
.axw-st text { fill: var(--body-text-color); font-family: ui-monospace, monospace; font-size: 12px; }
.axw-st .axw-st-count { font-size: 9px; opacity: 0.65; }
.axw-st .axw-st-node { cursor: pointer; }
.axw-st .axw-st-node:hover text { text-decoration: underline; fill: #4f46e5; }
.axw-st .axw-st-ends text:first-of-type { font-style: italic; }
.axw-st-caption { font-weight: 600; margin: 0 0 4px; }
.axw-st-edge { fill: none; stroke: #818cf8; stroke-opacity: 0.55; stroke-linecap: round; }
"""

NODE_CLICK = """element.addEventListener('click', (e) => {
  const node = e.target.closest('[data-seed]');
  if (!node) return;
  trigger('click', {side: node.dataset.side, seed: Number(node.dataset.seed), depth: Number(node.dataset.depth)});
});"""

CHANGEABLE = [p for p in PARAMS if p not in ("seed", "model", "use_finetuned", "force_step", "force_token")]


class Handlers:
    """The sample tree's handlers, mixed into the app with `service.Playground`."""

    def sample_tree(self, prompt, settings: Settings, n, k, session: str | None):
        """(samples, model, settings, n, k): `n` texts of seeds settings.seed.., checked before any compute."""
        check_prompt(prompt)
        settings, n, k = check_request(settings, n, k)
        m, helpers, config = self.prepare(settings, session)
        return sample_texts(m, prompt, settings, config, n, helpers.get("amateur")), m, settings, n, k

    def sample_tree_api(self, prompt: str, n: int = 100, k: int = 4, settings: dict | None = None,
                        request: gr.Request = None) -> dict:
        """Sample `prompt` n times (at most 200) with `settings` (a dict of /generate's parameters by name; those
        left out take its defaults) and seeds seed..seed+n-1: each text is the one /generate gives with that
        seed. Returns the prefix tree of their tokens: `nodes` (each with `parent`, `token`, `text`, `count` of
        texts through it, `ends` there, `prob` the probability its token was chosen with, `depth`, `seed` of the
        first sample through it), the distinct `texts` with their counts, `distinct`, and `entropy`: the entropy
        in bits of the first k tokens' distribution over the n texts."""
        with self.metered(request), user_errors():
            samples, m, _, _, k = self.sample_tree(prompt, settings_from_dict(settings), n, k, session_of(request))
            return tree_json(samples, m.tokenizer, k)

    def sample_trees_ui(self, prompt, settings: Settings, n, k, name, value, request: gr.Request = None) -> dict:
        """The view's button: the tree of the current settings and, when `name` is a setting, of the same with
        it set to `value`; both checked before either is sampled."""
        session = session_of(request)
        with self.metered(request), user_errors():
            check_prompt(prompt)
            settings, n, k = check_request(settings, n, k)
            other = check_request(changed(prompt, settings, name, value), n, k)[0] if name else None
            out = dict(opened=dict(prompt=prompt, n=n, a=settings, b=other), change=f"{name} = {value}")
            for side, s in (("a", settings), ("b", other)):
                if s is not None:
                    samples, m, *_ = self.sample_tree(prompt, s, n, k, session)
                    caption = "current settings" if side == "a" else out["change"]
                    out[side] = (f'<p class="axw-st-caption">{html.escape(caption)}: {n} texts</p>'
                                 + tree_svg(drawn(samples, m.tokenizer), n, side))
                    out[side + "_numbers"] = summary(samples, k)
            return out

    def tree_step_ui(self, opened, side, seed, depth, request: gr.Request = None) -> str:
        """A node was clicked: the step of the run of `seed` (one of the tree's) after `depth` tokens, the
        distribution its next token is drawn from (the last step, at the length limit)."""
        with user_errors():
            settings = opened.get(side) if isinstance(opened, dict) and side in ("a", "b") else None
            if settings is None:
                raise ValueError("sample a tree first, then click one of its nodes")
            seed = number("seed", seed, settings.seed, settings.seed + opened["n"] - 1, integer=True)
            step = number("depth", depth, 0, settings.max_new_tokens, integer=True)
        with self.metered(request), user_errors():
            m, run, updates, _ = self.start(opened["prompt"], replace(settings, seed=seed), session_of(request))
            for run in updates:
                if len(run.rows) > step:
                    break
        row = run.rows[min(step, len(run.rows) - 1)]
        return (f'<p class="axw-note">The run of seed {seed}, step {row["step"] + 1}: the distribution its token '
                f'{row["step"] + 1} was drawn from, after the prompt and {row["step"]} generated tokens.</p>'
                + step_html(row, m.tokenizer, run.settings, branching=False))


def build(app, controls, gpu, concurrency: int) -> View:
    with gr.Accordion("sample the prompt N times: the tree of texts", open=False, elem_id="sample-tree"):
        gr.Markdown("Sample the prompt N times with these settings (seeds seed, seed+1, …) and merge the texts "
                    "into a tree: each edge is as thick as the share of texts that took it, a chain of tokens no "
                    "text leaves is one node. Pick a setting to change to see a second tree beside it. Click a "
                    "node to open its step.")
        with gr.Row():
            n = gr.Number(100, precision=0, minimum=1, maximum=MAX_TREE_SAMPLES, label=f"N (at most "
                          f"{MAX_TREE_SAMPLES})", elem_id="tree-n", min_width=90)
            k = gr.Number(4, precision=0, minimum=1, label="k: entropy of the first k tokens", elem_id="tree-k",
                          min_width=90)
            name = gr.Dropdown([("(none)", "")] + [(p, p) for p in CHANGEABLE], value="", label="change one setting",
                               elem_id="tree-change", min_width=140)
            value = gr.Textbox("", label="to", elem_id="tree-value", min_width=90)
        go = gr.Button("Sample the prompt N times", elem_id="tree-go")
        numbers = gr.HTML("", elem_id="tree-numbers")
        with gr.Row(equal_height=False):  # side by side; on a phone one above the other
            with gr.Column(min_width=320):
                left = gr.HTML("", elem_id="tree-a", js_on_load=NODE_CLICK)
            with gr.Column(min_width=320):
                right = gr.HTML("", elem_id="tree-b", js_on_load=NODE_CLICK)
        opened_step = gr.HTML("", elem_id="tree-step")
    opened = gr.State(None)

    def trees_ui(*values, request: gr.Request = None):
        *controls_values, n, k, name, value = values
        with user_errors():
            prompt, settings = settings_from_ui(*controls_values)
        out = app.sample_trees_ui(prompt, settings, n, k, name, value, request)
        b = out.get("b_numbers")
        return (numbers_html(out["a_numbers"], b, out["change"]), out["a"],
                gr.HTML(out.get("b", ""), visible=b is not None), "", out["opened"])

    def step_ui(opened, evt: Triggered, request: gr.Request = None):
        data = evt.data
        return app.tree_step_ui(opened, data.get("side"), data.get("seed"), data.get("depth"), request)

    inputs = controls.inputs() + [n, k, name, value]
    go.click(gpu(with_visitor(trees_ui, len(inputs))), inputs, [numbers, left, right, opened_step, opened],
             api_visibility="private", preprocess=False, concurrency_limit=concurrency, concurrency_id="gen")
    for html_box in (left, right):
        html_box.click(step_ui, [opened], opened_step, api_visibility="private", show_progress="hidden")
    return View([], lambda shown: [], CSS)
