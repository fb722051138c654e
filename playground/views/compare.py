"""The Compare tab: one prompt and seed through five strategies, side by side."""

from __future__ import annotations

import gradio as gr

from ..caps import MAX_NEW_TOKENS, MAX_PROMPT_CHARS
from ..settings import Settings

COMPARE = [  # (label, strategy, settings)
    ("greedy", "sampling", dict(temperature=0.0)),
    ("sampling (T 0.8, top-p 0.9)", "sampling", dict(temperature=0.8, filters=dict(top_p=0.9))),
    ("beam search (4 beams)", "beam search", dict(beams=4)),
    ("contrastive search (alpha 0.6, k 4)", "contrastive search", dict(penalty_alpha=0.6, contrastive_k=4)),
    ("contrastive decoding (alpha 0.1, beta 0.5)", "contrastive decoding", dict(temperature=0.0)),
]


def settings_of(strategy: str, settings: dict) -> Settings:
    values = {k: v for k, v in settings.items() if k != "filters"}
    return Settings(strategy=strategy, **values, **settings.get("filters", {}))


def build(app, gpu, model_box, amateur_box, concurrency: int):
    gr.Markdown("One prompt and seed through five strategies, side by side.")
    with gr.Row():
        prompt = gr.Textbox("ROMEO:", label="prompt", lines=2, scale=3, max_length=MAX_PROMPT_CHARS)
        seed = gr.Number(0, precision=0, label="seed", scale=1)
        new = gr.Slider(1, MAX_NEW_TOKENS, 60, step=1, label="max new tokens", scale=2)
    go = gr.Button("Compare", variant="primary")
    boxes = []
    with gr.Row(equal_height=True):
        for label, *_ in COMPARE:
            boxes.append(gr.Textbox(label=label, lines=10, max_lines=20, interactive=False, min_width=200))
    go.click(gpu(app.compare_ui), [model_box, prompt, seed, new, amateur_box], boxes, api_visibility="private",
             concurrency_limit=concurrency, concurrency_id="gen")
