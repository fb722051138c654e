"""The beam tree: every candidate beam search expanded at every step (each live beam's best few), kept, pruned
or finished, from the prompt to the returned beam, whose path is drawn thick; pruned branches stay visible,
faded. Shown for beam-search runs; a click on a node or a step's header opens that step."""

from __future__ import annotations

import gradio as gr

from . import View, step_panel

CSS = """
.axw-tree-scroll { overflow-x: auto; border: 1px solid var(--border-color-primary); border-radius: 8px;
                   padding: 4px; max-height: 520px; overflow-y: auto; contain: content; }
/* phones: the tree is many screens wide; its box takes the card's whole width and most of the screen's height */
@media (max-width: 640px) {
  .axw-tree-scroll { max-height: 70vh; padding: 2px; margin: 0 -6px; }
}
.axw-tree text { fill: var(--body-text-color); }
.axw-tree .axw-tree-head { font-weight: 600; cursor: pointer; }
.axw-tree .axw-tree-sel { fill: #4f46e5; text-decoration: underline; }
.axw-tree .axw-node { cursor: pointer; }
.axw-tree .axw-node-pruned text { opacity: 0.35; }
.axw-tree .axw-node-ended text { opacity: 0.45; font-style: italic; }
.axw-tree .axw-node-finished text { fill: #b45309; }
.axw-tree .axw-node-returned text { font-weight: 700; fill: #4338ca; }
.axw-tree .axw-score { font-size: 9px; opacity: 0.7; }
.axw-tree .axw-node:hover text { text-decoration: underline; }
.axw-edge { fill: none; stroke-width: 1; }
.axw-edge-kept { stroke: #64748b; }
.axw-edge-pruned { stroke: #94a3b8; opacity: 0.3; stroke-dasharray: 2 2; }
.axw-edge-path { stroke: #4f46e5; stroke-width: 2.5; }
.axw-tree-legend { font-size: 12px; margin: 2px 0 6px; }
.axw-tree-legend .axw-p { opacity: 0.4; }
"""

def build() -> tuple[gr.HTML, View]:
    return step_panel(
        "beam_tree", "### The beam tree\nEvery candidate beam search weighed: at each step each live beam's best "
        "continuations, ranked; the best few go on, the rest are pruned (faded). The returned beam's path is drawn "
        "thick.", "beam-tree", "[data-step]", CSS)
