"""The Fine-tune tab: train your own copy on your text, watch the loss, generate from it, download or push it."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from ..caps import MAX_BATCH_SIZE, MAX_FINETUNE_STEPS, MAX_TRAIN_CHARS, MAX_UPLOAD_BYTES
from ..finetune import START_FROM, START_OVER, loss_curves
from ..render import tokens_html


TRAINING, HELDOUT = "training", "held-out"


def loss_frame(history: list[dict]) -> pd.DataFrame:
    """The plot's rows: step, loss and which curve (training or held-out), from the loop's progress records. A
    curve with no point yet has one row without a loss (drawn as nothing): the page fixes the plot's colours and
    legend from the curve names in its data when it first draws it, so both are there from the start."""
    train_curve, heldout = loss_curves(history)
    rows = [(step, loss, TRAINING) for step, loss in train_curve] + [(step, loss, HELDOUT) for step, loss in heldout]
    rows += [(0, math.nan, name) for name, curve in ((TRAINING, train_curve), (HELDOUT, heldout)) if not curve]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]).astype({"step": int, "loss": float, "curve": str})


MASK_INFO = (
    "fraction of the earlier tokens hidden from attention at each training step (forgetful causal masking, Liu et "
    "al. 2022, arXiv:2210.13432; 0.15 is the paper's setting). Expect a higher training loss than at 0: the model "
    "sees less of the text before each token. The paper reports better zero- and few-shot results and more "
    "robust models from it. The held-out loss is scored without masking. 0 = plain next-token training.")


def build(app, gpu, model_box, concurrency: int) -> gr.Slider:
    """The tab; returns the context-length slider, which follows the model picked."""
    gr.Markdown(
        "Train **your own copy** of the model on your text (nobody else's model changes). The last tenth of the "
        "text is held out: its loss, drawn beside the training loss, shows what carries over to text the model "
        "does not train on. When the training loss keeps falling while the held-out loss stops falling or "
        "rises, the model is memorising your text (overfitting): fewer steps or a lower learning rate help.")
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="training text", lines=6, max_length=MAX_TRAIN_CHARS,
                              placeholder="paste text here, or upload a .txt file")
            upload = gr.File(label=f"or upload a .txt file (at most {MAX_UPLOAD_BYTES // 1_000_000} MB)",
                             file_types=[".txt"], type="filepath", height=120)
            with gr.Row():
                go = gr.Button("Fine-tune", variant="primary", elem_id="ft-go")
                stop = gr.Button("Stop")
            steps = gr.Slider(1, MAX_FINETUNE_STEPS, 50, step=1, label="steps",
                              info="optimizer steps (each on one batch of random windows)")
            lr = gr.Slider(1e-5, 1e-2, 3e-4, step=1e-5, label="learning rate",
                           info="AdamW step size, warmed up then cosine-decayed")
            batch = gr.Slider(1, MAX_BATCH_SIZE, 8, step=1, label="batch size", info="windows per step")
            ctx_max = app.model(app.model_name).max_seq_len
            ctx = gr.Slider(8, ctx_max, min(64, ctx_max), step=8, label="context length",
                            info="tokens per training window (at most the model's context)")
            mask = gr.Slider(0, 0.9, 0.15, step=0.05, label="mask_prob", info=MASK_INFO)
            seed = gr.Number(0, precision=0, label="seed")
            start_from = gr.Radio(START_FROM, value=START_OVER, label="start from",
                                  info="continue trains a copy of your fine-tuned model further (if that run "
                                       "fails, your copy stays as it was); start over trains a new copy of the "
                                       "base model, replacing yours")
        with gr.Column():
            # no empty axes before a run: the curves show with the first update
            plot = gr.LinePlot(loss_frame([]), x="step", y="loss", color="curve", title="loss (nats per token)",
                               color_map={TRAINING: "#f97316", HELDOUT: "#2563eb"}, height=300, elem_id="ft-plot",
                               visible=False)
            status = gr.Markdown("Press **Fine-tune**: the curves draw as it trains.", elem_id="ft-status",
                                 min_height=40)
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
    inputs = [model_box, text, upload, steps, lr, batch, ctx, mask, seed, start_from]
    # the status line says how far it got; the queue's and the timer's small marks sit on it, never over the
    # curves they would hide
    def finetune_ui(model_name, text, upload, steps, lr, batch, ctx, mask, seed, start_from,
                    request: gr.Request = None):
        for curves, line in app.finetune_ui(model_name, text, upload, steps, lr, batch, ctx, mask, seed, request,
                                            start_from):
            yield gr.LinePlot(curves, visible=True), line

    go.click(gpu(finetune_ui, duration=300), inputs, [plot, status], api_visibility="private",
             concurrency_limit=1, concurrency_id="train", show_progress="minimal", show_progress_on=[status])
    # Stop asks the training loop to end after its current step (should_stop), keeping what it learned
    stop.click(app.stop_ui, None, None, api_visibility="private", queue=False)
    t_go.click(gpu(app.generate_tuned_ui), t_prompt, t_out, api_visibility="private",
               concurrency_limit=concurrency, concurrency_id="gen")
    dl.click(app.download_ui, None, dl_file, api_visibility="private")
    push.click(app.push_ui, [repo, token, private], [push_status, token], api_visibility="private")
    return ctx
