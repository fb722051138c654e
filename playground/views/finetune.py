"""The Fine-tune tab: train your own copy on your text, watch the loss, generate from it, download or push it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from ..caps import MAX_BATCH_SIZE, MAX_FINETUNE_STEPS, MAX_TRAIN_CHARS, MAX_UPLOAD_BYTES
from ..finetune import (CONTINUE, START_FROM, START_OVER, FineTune, finetune_setup, loss_curves, model_zip,
                        read_upload, split_heldout)
from ..render import tokens_html
from ..service import session_of, throttle, user_errors
from ..settings import Settings


TRAINING, HELDOUT = "training", "held-out"


def loss_frame(history: list[dict]) -> pd.DataFrame:
    """The plot's rows: step, loss and which curve (training or held-out), from the loop's progress records. A
    curve with no point yet has one row without a loss (drawn as nothing): the page fixes the plot's colours and
    legend from the curve names in its data when it first draws it, so both are there from the start."""
    train_curve, heldout = loss_curves(history)
    rows = [(step, loss, TRAINING) for step, loss in train_curve] + [(step, loss, HELDOUT) for step, loss in heldout]
    rows += [(0, math.nan, name) for name, curve in ((TRAINING, train_curve), (HELDOUT, heldout)) if not curve]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]).astype({"step": int, "loss": float, "curve": str})


def progress_text(history: list[dict], total: int) -> str:
    """The fine-tune's progress line: the step, its training loss and the latest held-out loss."""
    r = history[-1]
    text = f"step {r['step']} of {total}: training loss {r['loss']:.3f}"
    heldout = next((h for h in reversed(history) if h.get("heldout_loss") is not None), None)
    if heldout is not None:
        text += f", held-out {heldout['heldout_loss']:.3f} (step {heldout['step']})"
    return text


class Handlers:
    """The Fine-tune tab's handlers and the /finetune endpoint, mixed into the app with `service.Playground`
    (whose models, sessions and fair share they use)."""

    def finetune_api(
        self,
        text: str,
        steps: int = 20,
        learning_rate: float = 3e-4,
        batch_size: int = 8,
        context_length: int = 64,
        mask_prob: float = 0.0,
        seed: int = 0,
        model: str = "",
        request: gr.Request = None,
    ) -> dict:
        """Fine-tune a private copy of the model on `text`; returns {steps, stopped, loss, losses, val_losses}:
        the training loss of each step, and [step, loss] of the held-out last tenth of the text's tokens every
        tenth of the run and at its end (empty when that tenth is shorter than one window: context_length + 1
        tokens). Generate from it with /generate and use_finetuned=True (same client session)."""
        session = session_of(request)
        with self.metered(request), user_errors():
            run, _ = self._finetune_run(model, text, steps, learning_rate, batch_size, context_length, mask_prob,
                                        seed, session)
            self.sessions.put(session, run)
            for _ in run.run():
                pass
        train_curve, heldout = loss_curves(run.history)
        return dict(steps=run.result.step, stopped=run.result.stopped, loss=run.result.loss,
                    losses=[loss for _, loss in train_curve], val_losses=[[step, loss] for step, loss in heldout])

    def _finetune_run(self, model_name, text, steps, lr, batch_size, context, mask_prob, seed, session,
                      start_from=START_OVER) -> tuple[FineTune, str | None]:
        """A fine-tune checked and made, not started or registered: (run, why it has no held-out curve, or None).
        It trains a copy of the base model, or to continue (`start_from` CONTINUE) a copy of the session's
        finished fine-tuned copy. Everything is checked before any compute."""
        if start_from not in START_FROM:
            raise ValueError(f"start from must be one of: {', '.join(START_FROM)}")
        name = model_name or self.model_name
        earlier = None
        if start_from == CONTINUE:
            earlier = self.sessions.get(session)
            if earlier is None:
                why = self.sessions.why_dropped(session)
                raise ValueError("there is no fine-tuned copy to continue: "
                                 + (f"yours was dropped ({why})" if why else "you have not fine-tuned one yet")
                                 + f"; pick start from {START_OVER!r}")
            base = self.model("", True, session)  # refused while it trains, or when its fine-tune failed
            if earlier.base_name != name:
                raise ValueError(f"your fine-tuned copy is of {Path(earlier.base_name or '').name or earlier.base_name}"
                                 f", not {Path(name).name or name}: pick that model to continue it, or start over")
        else:
            base = self.model(model_name)
        ids, config = finetune_setup(base, text, steps, lr, batch_size, context, mask_prob, seed)
        train_ids, heldout_ids, no_heldout = split_heldout(ids, config.seq_len)
        run = FineTune(base, train_ids, config, heldout_ids, earlier=earlier.history if earlier is not None else None)
        run.base_name = name
        return run, no_heldout

    def finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                    request: gr.Request, start_from=START_OVER, progress=None):
        """The Fine-tune button: yields (the loss curves, the status line) while it trains; the status line says
        how far it got (`progress`, a gr.Progress, is accepted from older callers and not used: a progress bar
        would cover what it tracks). `start_from` (START_FROM) comes after the request, so calls written before
        it existed still start over."""
        with self.metered(request):
            yield from self._finetune_ui(model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                                         request, start_from)

    def _finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed, request,
                     start_from=START_OVER):
        session = session_of(request)
        with user_errors():
            if upload:
                text = read_upload(upload)
            run, no_heldout = self._finetune_run(model_name, text, steps, lr, batch_size, context, mask_prob, seed,
                                                 session, start_from)
            earlier = self.sessions.get(session)
            self.sessions.put(session, run)
        heldout_note = (f"held-out: the last tenth of your text ({run.heldout_ids.numel()} tokens), not trained on"
                        if run.heldout_ids is not None else no_heldout)
        heldout_note = heldout_note[0].upper() + heldout_note[1:] + "."
        try:
            with user_errors():
                for history in run.run():
                    line = "starting"
                    if history and history[-1]["step"] > run.start_step:
                        line = progress_text(history, run.start_step + run.config.steps)
                    yield loss_frame(history), f"**training**: {line}\n\n{heldout_note}"
        except gr.Error as e:
            if run.continued and earlier is not None:  # a failed continue leaves the copy it started from
                self.sessions.put(session, earlier)
                raise gr.Error(f"{e.message}; your fine-tuned copy is as it was before") from None
            raise
        r = run.result
        if run.continued:
            how = f"continued your fine-tuned copy: now {run.steps} steps in all ({r.step} more in {r.seconds:.1f} s)"
        else:
            how = "started over from the base model" if earlier is not None else "trained from the base model"
            how += f", {r.step} steps in {r.seconds:.1f} s"
        losses = f"last training loss {r.loss:.3f}" if r.loss is not None else "no step trained"
        if r.heldout_loss is not None:
            losses += f", held-out loss {r.heldout_loss:.3f}"
        word = "stopped" if r.stopped else "done"
        yield loss_frame(run.history), (f"**{word}**: {how}; {losses}. Generate from it below or in the Generate "
                                        f"tab.\n\n{heldout_note}")

    def generate_tuned_ui(self, prompt, request: gr.Request):
        """The fine-tune tab's own box: sampling at temperature 0.8 with top-p 0.9 from the visitor's copy."""
        settings = Settings(max_new_tokens=100, temperature=0.8, top_p=0.9, seed=0, use_finetuned=True)
        with self.metered(request), user_errors():
            _, _, updates, _ = self.start(prompt, settings, request.session_hash)
            for run in throttle(updates):
                yield tokens_html(run.prompt, run.pieces, run.probs)

    def stop_ui(self, request: gr.Request):
        run = self.sessions.get(request.session_hash)
        if run is not None:
            run.stop.set()

    def download_ui(self, request: gr.Request):
        with user_errors():
            m = self.model("", True, request.session_hash)
            path = model_zip(m)
            out = gr.File(path, visible=True)
            if out.value and out.value["path"] != path:  # gradio keeps its own copy: drop ours
                shutil.rmtree(Path(path).parent, ignore_errors=True)
            return out

    def push_ui(self, repo_id, token, private, request: gr.Request):
        with user_errors():
            m = self.model("", True, request.session_hash)
            if not (repo_id or "").strip():
                raise ValueError("give a Hub repo id such as your-name/my-model")
            if not (token or "").strip():
                raise ValueError("paste a Hugging Face write token (used for this upload only)")
            try:
                url = m.push_to_hub(repo_id.strip(), token=token.strip(), private=bool(private))
            except Exception as e:  # Hub errors: report them without ever repeating the token
                raise ValueError(f"push failed: {str(e).replace(token.strip(), '***')}") from None
        return f"pushed: {url}", ""  # the token box is cleared


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
