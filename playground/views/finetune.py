"""The Fine-tune tab: train your own copy on your text, watch the loss, generate from it, download or push it."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..caps import MAX_BATCH_SIZE, MAX_FINETUNE_STEPS, MAX_TRAIN_CHARS, MAX_UPLOAD_BYTES
from ..render import tokens_html


def loss_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"step": [r["step"] for r in history], "loss": [r["loss"] for r in history]})


def build(app, gpu, model_box, concurrency: int) -> gr.Slider:
    """The tab; returns the context-length slider, which follows the model picked."""
    gr.Markdown(
        "Train **your own copy** of the model on your text (nobody else's model changes). "
        "`mask_prob` hides that fraction of the earlier tokens from attention at each training step "
        "(forgetful causal masking, Liu et al. 2022, arXiv:2210.13432), so the model learns to predict "
        "with gaps in what it sees.")
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="training text", lines=8, max_length=MAX_TRAIN_CHARS,
                              placeholder="paste text here, or upload a .txt file")
            upload = gr.File(label=f"or upload a .txt file (at most {MAX_UPLOAD_BYTES // 1_000_000} MB)",
                             file_types=[".txt"], type="filepath", height=120)
            steps = gr.Slider(1, MAX_FINETUNE_STEPS, 50, step=1, label="steps",
                              info="optimizer steps (each on one batch of random windows)")
            lr = gr.Slider(1e-5, 1e-2, 3e-4, step=1e-5, label="learning rate",
                           info="AdamW step size, warmed up then cosine-decayed")
            batch = gr.Slider(1, MAX_BATCH_SIZE, 8, step=1, label="batch size", info="windows per step")
            ctx_max = app.model(app.model_name).max_seq_len
            ctx = gr.Slider(8, ctx_max, min(64, ctx_max), step=8, label="context length",
                            info="tokens per training window (at most the model's context)")
            mask = gr.Slider(0, 0.9, 0.15, step=0.05, label="mask_prob",
                             info="fraction of keys hidden while training (0 = plain next-token training)")
            seed = gr.Number(0, precision=0, label="seed")
            with gr.Row():
                go = gr.Button("Fine-tune", variant="primary")
                stop = gr.Button("Stop")
        with gr.Column():
            plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="training loss", height=300)
            status = gr.Markdown()
            t_prompt = gr.Textbox("ROMEO:", label="prompt for your model", lines=2)
            t_go = gr.Button("Generate from my model")
            t_out = gr.HTML(tokens_html("", [], []))
            with gr.Row():
                dl = gr.Button("Download (Hub-format zip)")
                dl_file = gr.File(label="your model", interactive=False, visible=False)
            with gr.Accordion("push to the Hugging Face Hub", open=False):
                repo = gr.Textbox(label="repo id", placeholder="your-name/my-model")
                token = gr.Textbox(label="write token", type="password",
                                   info="used for this upload only: never stored or logged")
                private = gr.Checkbox(True, label="private repo")
                push = gr.Button("Push")
                push_status = gr.Markdown()
    inputs = [model_box, text, upload, steps, lr, batch, ctx, mask, seed]
    go.click(gpu(app.finetune_ui, duration=300), inputs, [plot, status], api_visibility="private",
             concurrency_limit=1, concurrency_id="train")
    # Stop asks the training loop to end after its current step (should_stop), keeping what it learned
    stop.click(app.stop_ui, None, None, api_visibility="private", queue=False)
    t_go.click(gpu(app.generate_tuned_ui), t_prompt, t_out, api_visibility="private",
               concurrency_limit=concurrency, concurrency_id="gen")
    dl.click(app.download_ui, None, dl_file, api_visibility="private")
    push.click(app.push_ui, [repo, token, private], [push_status, token], api_visibility="private")
    return ctx
