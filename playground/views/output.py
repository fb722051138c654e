"""The generated text, each token coloured by the probability it was chosen with; a click on a token opens its
step (the step view follows, and the token stays highlighted)."""

from __future__ import annotations

import gradio as gr

from ..render import legend, tokens_html
from . import View, skip

CSS = """
.axw-out { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; font-size: 15px;
           padding: 10px; border: 1px solid var(--border-color-primary); border-radius: 8px; min-height: 120px; }
.axw-out .axw-prompt { font-weight: 600; }
.axw-out .axw-special { font-weight: 400; font-size: 12px; color: #6d28d9; background: #ede9fe; border-radius: 3px;
                       padding: 0 2px; }
.axw-out .axw-tok { border-radius: 3px; color: #111; cursor: pointer; }
.axw-out .axw-tok:hover { outline: 1px solid #6366f1; }
.axw-out .axw-sel { outline: 2px solid #4f46e5; box-shadow: 0 0 0 3px rgba(79, 70, 229, 0.25); }
.axw-out .axw-forced { text-decoration: underline wavy #4f46e5; text-underline-offset: 4px; }
.axw-out .axw-shared { opacity: 0.45; }
/* side by side with the prompt (wide screens): room for a run's text before it comes; until then the box says
   what it is for (drawn by CSS, so no part of the text) */
@media (min-width: 1024px) { #output .axw-out { min-height: 380px; } }
#output .axw-out:has(.axw-prompt:empty):not(:has(.axw-tok))::before {
  content: "Press Generate: the text appears here, each token coloured by the probability it was chosen with.";
  font-family: var(--font); font-size: 14px; opacity: 0.55; }
.axw-legend span { padding: 1px 6px; border-radius: 3px; color: #111; white-space: nowrap; }
"""

# a click on a token sends its step; the listener sits on the component, so it survives each new text
TOKEN_CLICK = """element.addEventListener('click', (e) => {
  const tok = e.target.closest('.axw-tok[data-i]');
  if (!tok) return;
  element.querySelectorAll('.axw-sel').forEach((t) => t.classList.remove('axw-sel'));
  tok.classList.add('axw-sel');
  trigger('click', {step: Number(tok.dataset.i)});
});"""


def build() -> tuple[gr.HTML, View]:
    out = gr.HTML(tokens_html("", [], []), label="output", elem_id="output", js_on_load=TOKEN_CLICK)
    gr.HTML(legend())

    def place(shown: dict) -> list:
        return [shown["output"]] if "output" in shown else skip()

    return out, View([out], place, CSS)
