"""The Compare tab: one prompt and seed through the strategies chosen, side by side, each beside greedy decoding.
The sampling columns share their random numbers (one uniform draw per step from the same seed), so where their
distributions agree they pick the same token; the first token where each column departs from greedy is marked;
per column the mean log-probability under the model, distinct-2, the share of repeated 4-grams, tokens/s."""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import gradio as gr
import pandas as pd

from ..caps import MAX_COMPARE_COLUMNS, MAX_NEW_TOKENS, MAX_PROMPT_CHARS
from ..numbers.metrics import column_numbers
from ..render import rounded, show_number, show_token, tokens_html
from ..runs import chat_prompt
from ..service import session_of, throttle, user_errors
from ..settings import Settings, check_prompt
from ..structure import CHARACTER
from . import keep_on_failure

COMPARE = [  # (label, strategy, settings): the five columns /generate has always been compared on
    ("greedy", "sampling", dict(temperature=0.0)),
    ("sampling (T 0.8, top-p 0.9)", "sampling", dict(temperature=0.8, filters=dict(top_p=0.9))),
    ("beam search (4 beams)", "beam search", dict(beams=4)),
    ("contrastive search (alpha 0.6, k 4)", "contrastive search", dict(penalty_alpha=0.6, contrastive_k=4)),
    ("contrastive decoding (alpha 0.1, beta 0.5)", "contrastive decoding", dict(temperature=0.0)),
]
MORE = [  # the other columns a learner can add
    ("speculative decoding (greedy, draft model)", "speculative decoding", dict(temperature=0.0)),
    ("speculative decoding (greedy, draft model + prompt lookup)", "speculative decoding",
     dict(temperature=0.0, drafter="draft model + prompt lookup")),
    ("speculative decoding (greedy, draft model + datastore)", "speculative decoding",
     dict(temperature=0.0, drafter="draft model + datastore")),
    ("speculative decoding (greedy, prompt lookup)", "speculative decoding",
     dict(temperature=0.0, drafter="prompt lookup")),
    ("min-p 0.1 (T 0.8)", "sampling", dict(temperature=0.8, filters=dict(min_p=0.1))),
    ("top-p 0.9 (T 2, temperature first)", "sampling",
     dict(temperature=2.0, sampler_order="temperature_first", filters=dict(top_p=0.9))),
    ("min-p 0.1 (T 2, temperature first)", "sampling",
     dict(temperature=2.0, sampler_order="temperature_first", filters=dict(min_p=0.1))),
    ("typical-p 0.9 (T 0.8)", "sampling", dict(temperature=0.8, filters=dict(typical_p=0.9))),
    ("eta 0.0003 (T 0.8)", "sampling", dict(temperature=0.8, filters=dict(eta_cutoff=0.0003))),
    ("top-H 0.4 (T 0.8)", "sampling", dict(temperature=0.8, filters=dict(top_h=0.4))),
    ("top-n-sigma 1 (T 1)", "sampling", dict(temperature=1.0, filters=dict(top_n_sigma=1.0))),
    ("mirostat (tau 3, T 1)", "sampling", dict(temperature=1.0, mirostat_tau=3.0)),
    ("XTC (0.5, threshold 0.1, T 0.8)", "sampling", dict(temperature=0.8, xtc_probability=0.5)),
    ("dynamic temperature (0.8 ± 0.5)", "sampling", dict(temperature=0.8, dynatemp_range=0.5)),
    ("DRY 0.8 (greedy)", "sampling", dict(temperature=0.0, dry_multiplier=0.8)),
    ("stochastic beams (4, T 1)", "beam search", dict(beams=4, stochastic=True, temperature=1.0)),
    ("JSON schema: a character (greedy)", "sampling", dict(temperature=0.0, json_schema=CHARACTER)),
]
COLUMNS = COMPARE + MORE
LABELS = [label for label, *_ in COLUMNS]
DEFAULT_COLUMNS = [label for label, *_ in COMPARE] + [MORE[0][0]]
METRICS = ["column", "departs from greedy at", "mean log p (model)", "distinct-2", "repeated 4-grams", "tokens/s"]

CSS = """
.axw-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(300px, 100%), 1fr)); gap: 10px;
            overflow-x: auto; }
.axw-col { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; min-width: 0; }
.axw-col h4 { margin: 0 0 4px; font-size: 14px; }
.axw-col .axw-out { min-height: 80px; font-size: 13px; border: none; padding: 2px; overflow-wrap: anywhere; }
.axw-col .axw-metrics { font-size: 12px; opacity: 0.85; margin-top: 6px; }
.axw-col .axw-err { color: #b91c1c; }
/* phones: the numbers table scrolls sideways in its own box (gradio's); its columns are narrowed and their labels
   wrapped, so the first column (the long strategy names) leaves room for the numbers beside it */
@media (max-width: 640px) {
  #compare-metrics th, #compare-metrics td { width: 84px !important; min-width: 84px !important;
                                             max-width: 84px !important; }
  #compare-metrics th:first-child, #compare-metrics td:first-child { width: 140px !important;
                                                                     min-width: 140px !important;
                                                                     max-width: 140px !important; }
  #compare-metrics th span, #compare-metrics .body-cell:first-child span,
  #compare-metrics td:first-child .cell-wrap { white-space: normal; overflow-wrap: anywhere; }
}
"""


# the columns fill in below the column picker: a click on Compare brings them into view when they are below it
SHOW_GRID = """() => {
  const grid = document.querySelector('#compare-grid');
  if (grid && grid.getBoundingClientRect().top > window.innerHeight - 160)
    grid.scrollIntoView({behavior: 'smooth', block: 'start'});
}"""

NOTE_CSS = """
.axw-lesson-note { margin: 0; padding: 4px 10px; border-left: 3px solid var(--color-accent);
                   background: var(--color-accent-soft); border-radius: 4px; font-size: 14px; }
.axw-lesson-note b { font-size: inherit; }
"""


def settings_of(strategy: str, settings: dict) -> Settings:
    values = {k: v for k, v in settings.items() if k != "filters"}
    return Settings(strategy=strategy, **values, **settings.get("filters", {}))


def _number(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return show_number(value, fmt)


def column_html(col: dict, tokenizer) -> str:
    """One column: its label, the text (what it shares with greedy dimmed, the first token that departs
    underlined), its numbers."""
    label = html.escape(col["label"])
    if col.get("error"):
        return f'<div class="axw-col"><h4>{label}</h4><p class="axw-err">{html.escape(col["error"])}</p></div>'
    if "run" not in col:
        return f'<div class="axw-col" data-label="{label}"><h4>{label}</h4><p class="axw-note">waiting…</p></div>'
    run = col["run"]
    at = col.get("departs")
    reference = col["label"] == COMPARE[0][0]
    shared = 0 if reference else len(run.new_ids) if at is None and col.get("done") else (at or 0)
    text = tokens_html(run.prompt, run.pieces, [None] * len(run.pieces), forced=at, shared=shared,
                       specials=run.specials)
    if not col.get("done"):
        return f'<div class="axw-col" data-label="{label}"><h4>{label}</h4>{text}</div>'
    if reference:
        where = "the reference"
    elif at is None:
        where = "the same text as greedy"
    elif at < len(run.new_ids):
        where = f"departs from greedy at step {at + 1} ({html.escape(show_token(tokenizer, run.new_ids[at]))})"
    else:
        where = f"ends at step {at + 1}, where greedy goes on"
    numbers = (f"{where} · mean log p {_number(col['logprob'], '.2f')} · "
               f"distinct-2 {_number(col['distinct2'], '.2f')}"
               f" · repeated 4-grams {_number(col['repeated4'], '.0%')} · {_number(col['speed'], '.0f')} tokens/s")
    return (f'<div class="axw-col" data-label="{label}" data-departs="{"" if at is None else at}"><h4>{label}</h4>'
            f'{text}<div class="axw-metrics">{numbers}</div></div>')


def grid_html(cols: list[dict], tokenizer) -> str:
    if not cols:
        return '<p class="axw-note">Pick the columns and press Compare.</p>'
    return '<div class="axw-grid">' + "".join(column_html(c, tokenizer) for c in cols) + "</div>"


def metrics_frame(cols: list[dict]) -> pd.DataFrame:
    rows = []
    for c in cols:
        if c.get("error") or not c.get("done"):
            continue
        at = c.get("departs")
        rows.append({"column": c["label"], "departs from greedy at": "–" if at is None else str(at + 1),
                     "mean log p (model)": rounded(c["logprob"], 3), "distinct-2": rounded(c["distinct2"], 3),
                     "repeated 4-grams": rounded(c["repeated4"], 3), "tokens/s": rounded(c["speed"], 0)})
    return pd.DataFrame(rows, columns=METRICS)


class Handlers:
    """The Compare tab's handlers, mixed into the app with `service.Playground` (whose models, fair share and
    runs they use)."""

    def compare_view_ui(self, model_name, prompt, seed, max_new_tokens, amateur, columns,
                        request: gr.Request = None, chat: bool = False, system: str = ""):
        """The Compare tab: (the columns' HTML, their numbers) as they stream; in chat mode (`chat`, `system`)
        every column answers the same laid-out chat."""
        with self.metered(request):
            tokenizer = None
            for cols in self._compare(model_name, prompt, seed, max_new_tokens, amateur, columns, session_of(request),
                                      chat, system):
                if tokenizer is None:
                    with user_errors():
                        tokenizer = self.model(model_name).tokenizer
                yield grid_html(cols, tokenizer), metrics_frame(cols)

    def _compare(self, model_name, prompt, seed, max_new_tokens, amateur, labels, session, chat=False, system=""):
        """Yields the columns (dicts: label, run or error, and once done its numbers) as they stream, greedy first
        (whether picked or not: the others are measured against it). Everything is checked
        before the first column runs; a column that cannot run (no amateur, say) says why in its place."""
        with user_errors():
            check_prompt(prompt)
            m = self.model(model_name)
            common = Settings(seed=seed, max_new_tokens=max_new_tokens, chat=chat, system=system).check()
            if common.chat:
                chat_prompt(m, prompt, common.system)  # a model without a template is refused once, not per column
            if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x in LABELS for x in labels):
                raise ValueError(f"columns must be a list of these: {', '.join(LABELS)}")
            if len(labels) > MAX_COMPARE_COLUMNS:
                raise ValueError(f"at most {MAX_COMPARE_COLUMNS} columns at a time")
            greedy = COMPARE[0][0]
            if greedy not in labels:
                labels = [greedy, *labels]
            chosen = [c for c in COLUMNS if c[0] in labels]
            cols = []
            for label, strategy, values in chosen:
                settings = replace(settings_of(strategy, values), model=model_name or "", amateur=amateur or "",
                                   seed=common.seed, max_new_tokens=common.max_new_tokens, chat=common.chat,
                                   system=common.system)
                try:
                    cols.append(dict(label=label, updates=self.start(prompt, settings, session, trace=False)[2]))
                except ValueError as e:  # e.g. no amateur model: say so in that column, run the others
                    cols.append(dict(label=label, error=str(e)))
        reference_ids = None
        with user_errors():
            for col in cols:
                if "updates" not in col:
                    continue
                seconds, updates = 0.0, throttle(col.pop("updates"))
                while True:  # the time spent generating, not showing
                    began = time.perf_counter()
                    run = next(updates, None)
                    seconds += time.perf_counter() - began
                    if run is None:
                        break
                    col["run"] = run
                    yield cols
                run = col["run"]
                if col["label"] == COMPARE[0][0]:
                    reference_ids = run.new_ids
                col.update(done=True, **column_numbers(m, run, seconds, reference_ids))
        yield cols


@dataclass
class Panel:
    """What a lesson sets in the Compare tab, and `run(event)`, which chains the Compare button's handler after
    `event` (the page's own: the visitor's request, fair share and concurrency as for the button)."""

    prompt: gr.Textbox
    seed: gr.Number
    new: gr.Slider
    columns: gr.CheckboxGroup
    note: gr.HTML
    run: Callable


def build(app, gpu, model_box, amateur_box, concurrency: int, chat_box=None, system_box=None):
    """The tab; the model, amateur, chat mode and system message are the Generate tab's (its components)."""
    gr.Markdown("One prompt and seed through the strategies you pick, each beside **greedy decoding** (always the "
                "first column). The sampling columns draw from the same random numbers (one uniform number per "
                "step from the seed; XTC flips its coins from a generator of its own), so where their "
                "distributions agree they pick the same token. In each column the text it shares with greedy is "
                "dimmed and its first token that departs is underlined. Per column: the mean log-probability of "
                "its tokens under the model, distinct-2 (the share of different token pairs), the share of 4-grams "
                "that repeat an earlier one (a loop), and tokens per second.")
    # a paired lesson's title and what to look for (views.lessons), until the visitor changes what it set
    note = gr.HTML("", visible=False, elem_id="compare-lesson", css_template=NOTE_CSS)
    # the prompt and the Compare button on the first screen; the columns to pick below them
    with gr.Row():
        prompt = gr.Textbox("ROMEO:", label="prompt", lines=2, scale=3, max_length=MAX_PROMPT_CHARS,
                            elem_id="compare-prompt",
                            info="with chat mode ticked in the Generate tab: your message, in the model's template")
        with gr.Column(scale=3):
            with gr.Row():
                seed = gr.Number(0, precision=0, label="seed", scale=1, min_width=100, elem_id="compare-seed")
                new = gr.Slider(1, MAX_NEW_TOKENS, 60, step=1, label="max new tokens", scale=2,
                                elem_id="compare-new")
            go = gr.Button("Compare", variant="primary", elem_id="compare-go")
    columns = gr.CheckboxGroup(LABELS, value=DEFAULT_COLUMNS, label="columns", elem_id="compare-columns",
                               info="greedy is always shown; speculative decoding at temperature 0 gives greedy's "
                                    "text in fewer model forwards")
    grid = gr.HTML(grid_html([], None), elem_id="compare-grid")
    # the numbers show once a column has them (no empty table before a run)
    table = gr.Dataframe(metrics_frame([]), label="numbers", interactive=False, elem_id="compare-metrics",
                         visible=False)
    def compare_ui(model_name, prompt, seed, new, amateur, columns, chat=False, system="", request: gr.Request = None):
        for cols, numbers in app.compare_view_ui(model_name, prompt, seed, new, amateur, columns, request,
                                                 chat=bool(chat), system=system or ""):
            yield cols, gr.Dataframe(numbers, visible=True) if len(numbers) else numbers

    inputs = [model_box, prompt, seed, new, amateur_box, columns] + [c for c in (chat_box, system_box) if c]
    compared = go.click(gpu(compare_ui), inputs, [grid, table], api_visibility="private",
                        concurrency_limit=concurrency, concurrency_id="gen", preprocess=False)
    go.click(None, js=SHOW_GRID, api_visibility="private", queue=False)
    keep_on_failure(compared, [grid, table])  # a refused Compare leaves the last result as it was

    def run(event):
        """The Compare button's run, chained after `event` (a lesson that set the controls) when it succeeds."""
        chained = event.success(gpu(compare_ui), inputs, [grid, table], api_visibility="private",
                                concurrency_limit=concurrency, concurrency_id="gen", preprocess=False)
        keep_on_failure(chained, [grid, table])
        return chained

    def unnote(request: gr.Request = None):
        return gr.HTML(visible=False)

    gr.on([prompt.input, seed.input, new.input, columns.input], unnote, None, note, api_visibility="private",
          queue=False, show_progress="hidden")
    return CSS, Panel(prompt, seed, new, columns, note, run)

