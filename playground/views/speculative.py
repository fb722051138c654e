"""Speculative decoding's rounds: in each, the tokens the drafter proposed, accepted (green) up to the first
rejection (red), with the draft's and the model's probability of each, and the model's own token that follows;
the acceptance rate and the tokens per model forward. Shown for speculative runs; a click on a round opens its
first step."""

from __future__ import annotations

import gradio as gr

from . import View, step_panel

CSS = """
.axw-spec { font-size: 13px; }
.axw-spec-head { margin: 2px 0 8px; }
.axw-round { padding: 3px 4px; border-radius: 6px; cursor: pointer; line-height: 2; }
.axw-round:hover { background: rgba(245, 158, 11, 0.12); }
.axw-round-sel { background: rgba(99, 102, 241, 0.14); }
.axw-round-n { display: inline-block; min-width: 64px; font-weight: 600; }
.axw-round-sum { margin-left: 8px; opacity: 0.7; font-size: 12px; }
.axw-chip { font-family: ui-monospace, monospace; padding: 1px 5px; margin: 0 2px; border-radius: 4px; color: #111;
            white-space: pre; }
.axw-chip-ok { background: #bbf7d0; border: 1px solid #16a34a; }
.axw-chip-no { background: #fecaca; border: 1px solid #dc2626; text-decoration: line-through; }
.axw-chip-off { background: #e5e7eb; border: 1px dashed #9ca3af; opacity: 0.6; }
.axw-chip-model { background: #c7d2fe; border: 1px solid #4f46e5; }
.axw-chip-copy { box-shadow: inset 0 -3px 0 #f59e0b; }
.axw-chip-store { box-shadow: inset 0 -3px 0 #0ea5e9; }
"""

def build() -> tuple[gr.HTML, View]:
    return step_panel(
        "speculative", "### Speculative rounds\nEach round the drafter proposes a few tokens; the model checks them "
        "all in one forward, keeps each with probability min(1, p/q) (greedy: when it is its own choice) up to the "
        "first rejection, and adds one token of its own.", "speculative", ".axw-round[data-step]", CSS)
