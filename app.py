"""The axw playground: learn decoding strategies on a real model, compare them,
fine-tune the model on your own text. Built on the library in axw/; the
non-UI logic lives in playground.py.

    python app.py                       # the bundled model, http://127.0.0.1:7860
    python app.py --model runs/m --amateur runs/m-tiny --port 7861
    AXW_MODEL=runs/m python app.py      # the same through the environment

The same file runs on Hugging Face Spaces (README.md front matter).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # ZeroGPU on Spaces: borrow a GPU per call (imported before torch, as it asks); elsewhere a no-op
    import spaces
except ImportError:
    spaces = None


def gpu(fn, duration: int = 60):
    """Run `fn` on a ZeroGPU GPU for up to `duration` seconds per call, when on ZeroGPU."""
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

import playground as pg  # noqa: E402

CONCURRENCY = int(os.environ.get("AXW_CONCURRENCY", "2"))
STREAM_INTERVAL_S = 0.03

CSS = """
.axw-out { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; font-size: 15px;
           padding: 10px; border: 1px solid var(--border-color-primary); border-radius: 8px; min-height: 120px; }
.axw-out .axw-prompt { font-weight: 600; }
.axw-out .axw-tok { border-radius: 3px; color: #111; }
.axw-table { border-collapse: collapse; font-size: 13px; width: 100%; }
.axw-table th, .axw-table td { border-bottom: 1px solid var(--border-color-primary); padding: 3px 6px;
                               text-align: left; }
.axw-table tr.axw-chosen { background: rgba(99, 102, 241, 0.15); font-weight: 600; }
.axw-table td.axw-cut { color: #b91c1c; font-style: italic; }
.axw-table td.axw-gone { opacity: 0.45; }
.axw-bar { position: relative; min-width: 90px; height: 18px; background: rgba(128,128,128,0.12); border-radius: 3px; }
.axw-bar div { position: absolute; left: 0; top: 0; bottom: 0; background: #818cf8; border-radius: 3px; }
.axw-bar span { position: relative; padding-left: 4px; font-size: 12px; }
.axw-beam { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.axw-legend span { padding: 1px 6px; border-radius: 3px; color: #111; }
"""

INTRO = """# axw decoding playground
A language model gives a probability to every possible next token; a **decoding strategy** decides which one to
take. Pick a strategy, generate, then step through what happened to the probabilities at each token.
"""

LEGEND = ('<div class="axw-legend">colour = probability the token was chosen with (beam search: the model\'s '
          'probability of it): '
          + " ".join(f'<span style="background:{pg.prob_colour(p)}">{p:.2f}</span>' for p in (0.05, 0.25, 0.5, 0.75, 1))
          + "</div>")

STRATEGY_INFO = {
    "sampling": "draw each token at random from the filtered, tempered distribution (temperature 0 = greedy: "
                "always the most likely token)",
    "beam search": "keep the most likely few sequences (beams) at every step and return the best: likely, often dull",
    "contrastive search": "take the likely token least similar to the text so far (Su et al. 2022): fights loops",
    "contrastive decoding": "prefer tokens the big model likes much more than a small 'amateur' model "
                            "(Li et al. 2022): removes the amateur's generic mistakes",
}

COMPARE = [  # (label, strategy, settings) for the compare tab
    ("greedy", "sampling", dict(temperature=0.0)),
    ("sampling (T 0.8, top-p 0.9)", "sampling", dict(temperature=0.8, filters=dict(top_p=0.9))),
    ("beam search (4 beams)", "beam search", dict(beams=4)),
    ("contrastive search (alpha 0.6, k 4)", "contrastive search", dict(penalty_alpha=0.6, contrastive_k=4)),
    ("contrastive decoding (alpha 0.1, beta 0.5)", "contrastive decoding", dict(temperature=0.0)),
]


def throttle(items, interval: float = STREAM_INTERVAL_S):
    """The first item, then at most one every `interval` seconds, and always the
    last: a long text is not re-sent to the browser for every token."""
    shown, pending = 0.0, None
    for item in items:
        pending = item
        if time.perf_counter() - shown > interval:
            yield item
            shown, pending = time.perf_counter(), None
    if pending is not None:
        yield pending


def visitor(request: gr.Request | None, trusted_proxies: int) -> str:
    """Who is asking, for the fair share: the address the request came from, or behind `trusted_proxies` proxies
    (1 on a Space) the address the outermost of them saw (pg.forwarded_client), never what the client wrote."""
    if request is None:
        return ""
    if trusted_proxies > 0:
        headers = request.headers
        # a proxy may append its own header line rather than extend the client's: the lines are one list, in order
        lines = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
        entries = [e.strip() for line in lines if line for e in line.split(",") if e.strip()]
        client = pg.forwarded_client(entries, trusted_proxies)
        if client:
            return client
    return getattr(getattr(request, "client", None), "host", None) or ""


@contextmanager
def user_errors():
    """Our checks raise ValueError; the visitor sees it as a gr.Error and the app lives on. Running out of GPU
    memory is one visitor's request being too big for the moment, not a fault of the app: free what the failed
    request held and say so."""
    try:
        yield
    except ValueError as e:
        raise gr.Error(str(e)) from None
    except pg.OutOfMemoryError:
        pg.free_memory()
        raise gr.Error(pg.OOM_MESSAGE) from None


def filter_row(name: str, on: bool, slider: tuple, label: str, info: str):
    """A filter's on/off checkbox beside its slider (minimum, maximum, default, step)."""
    low, high, value, step = slider
    with gr.Row():
        use = gr.Checkbox(on, label=name, scale=1, min_width=80)
        setting = gr.Slider(low, high, value, step=step, label=label, scale=4, info=info)
    return use, setting


class Playground:
    def __init__(self, model: str, amateur: str | None, visitor_budget_s: float | None = None,
                 trust_proxy: bool | None = None, trusted_proxies: int | None = None):
        self.model_name, self.amateur_name = model, amateur
        self.models = pg.ModelCache([model, amateur])
        self.sessions = pg.Sessions()
        if visitor_budget_s is None:
            visitor_budget_s = float(os.environ.get("AXW_VISITOR_BUDGET_S", pg.VISITOR_BUDGET_S))
        self.share = pg.FairShare(visitor_budget_s)
        # how many proxies append to X-Forwarded-For (AXW_TRUSTED_PROXIES; 1 on a Space); trust_proxy=True is 1
        self.trusted_proxies = pg.trusted_proxies(trusted_proxies, trust_proxy)
        self.models.get(model)  # loaded once at start, onto the GPU when there is one

    @contextmanager
    def metered(self, request: gr.Request | None):
        """Refuse a visitor who has used their share (as a gr.Error, before any compute), else count the time
        spent in the block against it."""
        key = visitor(request, self.trusted_proxies)
        with user_errors():
            self.share.check(key)
        with self.share.charge(key):
            yield

    def model(self, name: str, use_finetuned: bool = False, session: str | None = None):
        if use_finetuned:
            run = self.sessions.get(session or "")
            if run is None:
                raise ValueError("you have no fine-tuned model yet: train one in the Fine-tune tab")
            if not run.done.is_set():  # registered but not started yet, or training: the thread owns the copy
                raise ValueError("your fine-tune is still running: wait for it or press Stop")
            if run.error is not None:  # a half-trained copy is not what the visitor asked for
                raise ValueError("your last fine-tune failed: train again")
            return run.model
        return self.models.get(name or self.model_name)

    def kwargs(self, model, strategy, max_new_tokens, temperature, filters, repetition_penalty, no_repeat_ngram_size,
               seed, beams, length_penalty, penalty_alpha, contrastive_k, amateur, cd_alpha, cd_beta) -> dict:
        # the amateur comes from the same cache, so it sits on the expert's device
        amateur_model = self.models.get(amateur or self.amateur_name or "") if strategy == "contrastive decoding" \
            else None
        return pg.generation_kwargs(
            model, strategy, max_new_tokens, temperature, filters, repetition_penalty, no_repeat_ngram_size, seed,
            beams, length_penalty, penalty_alpha, contrastive_k, cd_alpha, cd_beta, amateur_model)

    # --- the API: /generate and /finetune ---

    def generate_api(
        self,
        prompt: str,
        strategy: str = "sampling",
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        top_a: float = 0.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        seed: int = 0,
        beams: int = 4,
        length_penalty: float = 0.0,
        penalty_alpha: float = 0.6,
        contrastive_k: int = 4,
        amateur: str = "",
        cd_alpha: float = 0.1,
        cd_beta: float = 0.5,
        model: str = "",
        use_finetuned: bool = False,
        request: gr.Request = None,
    ) -> tuple[str, list, list]:
        """Continue `prompt`. Returns (generated text, the new tokens as [token, probability], the per-step
        trace). Filters chain top_k -> top_p -> min_p -> top_a; top_k 0, top_p 1, min_p 0 and top_a 0 are off."""
        with self.metered(request), user_errors():
            pg.check_prompt(prompt)
            filters = {name: value for name, value, off in (("top_k", top_k, 0), ("top_p", top_p, 1.0),
                                                             ("min_p", min_p, 0.0), ("top_a", top_a, 0.0))
                       if value != off}
            m = self.model(model, use_finetuned, request.session_hash if request else None)
            kw = self.kwargs(m, strategy, max_new_tokens, temperature, filters, repetition_penalty,
                             no_repeat_ngram_size, seed, beams, length_penalty, penalty_alpha, contrastive_k, amateur,
                             cd_alpha, cd_beta)
            *_, (pieces, probs, rows, _) = pg.stream_text(m, prompt, max_new_tokens, kw)
        return "".join(pieces), [[p, q] for p, q in zip(pieces, probs)], rows

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
        """Fine-tune a private copy of the model on `text`; returns {steps, loss, losses}. Generate from it with
        /generate and use_finetuned=True (same client session)."""
        with self.metered(request), user_errors():
            base = self.model(model)
            ids, config = pg.finetune_setup(base, text, steps, learning_rate, batch_size, context_length, mask_prob,
                                            seed)
            run = pg.FineTune(base, ids, config)
            self.sessions.put(request.session_hash if request else "", run)
            for _ in run.run():
                pass
        return dict(steps=run.result.step, stopped=run.result.stopped, loss=run.result.loss,
                    losses=[r["loss"] for r in run.history])

    # --- UI handlers ---

    def generate_ui(self, model_name, prompt, strategy, max_new_tokens, temperature, use_k, k, use_p, p, use_min,
                    minp, use_a, a, rep, ngram, seed, beams, length_penalty, alpha, ck, amateur, cd_alpha, cd_beta,
                    use_ft, request: gr.Request):
        with self.metered(request), user_errors():
            pg.check_prompt(prompt)
            filters = {name: value for name, on, value in (("top_k", use_k, k), ("top_p", use_p, p),
                                                            ("min_p", use_min, minp), ("top_a", use_a, a)) if on}
            m = self.model(model_name, use_ft, request.session_hash if request else None)
            kw = self.kwargs(m, strategy, max_new_tokens, temperature, filters, rep, ngram, seed, beams,
                             length_penalty, alpha, ck, amateur, cd_alpha, cd_beta)
            steps = pg.stream_text(m, prompt, max_new_tokens, kw)
            for pieces, probs, rows, done in throttle(steps):
                if not done:
                    yield pg.tokens_html(prompt, pieces, probs), gr.skip(), gr.skip(), gr.skip()
        last = max(len(rows), 2)  # a slider needs minimum < maximum; step_ui clamps
        yield (pg.tokens_html(prompt, pieces, probs), rows,
               gr.Slider(minimum=1, maximum=last, value=1, step=1, interactive=len(rows) > 1),
               pg.step_html(rows[0] if rows else None, m.tokenizer))

    def step_ui(self, model_name, use_ft, rows, step, request: gr.Request):
        if not rows:
            return pg.step_html(None, None)
        with user_errors():
            m = self.model(model_name, use_ft, request.session_hash if request else None)
        i = min(max(int(step) - 1, 0), len(rows) - 1)
        return pg.step_html(rows[i], m.tokenizer)

    def compare_ui(self, model_name, prompt, seed, max_new_tokens, amateur, request: gr.Request = None):
        with self.metered(request):
            yield from self._compare_ui(model_name, prompt, seed, max_new_tokens, amateur)

    def _compare_ui(self, model_name, prompt, seed, max_new_tokens, amateur):
        with user_errors():
            pg.check_prompt(prompt)
            m = self.model(model_name)
            runs = []
            for label, strategy, settings in COMPARE:
                settings = dict(dict(temperature=0.8, filters={}, beams=4, penalty_alpha=0.6, contrastive_k=4),
                                **settings)
                try:
                    kw = self.kwargs(m, strategy, max_new_tokens, settings["temperature"], settings["filters"], 1.0,
                                     0, seed, settings["beams"], 0.0, settings["penalty_alpha"],
                                     settings["contrastive_k"], amateur, 0.1, 0.5)
                    runs.append(pg.stream_text(m, prompt, max_new_tokens, kw, trace=strategy != "beam search"))
                except ValueError as e:  # e.g. no amateur model: say so in that box, run the others
                    runs.append(str(e))
        texts = ["" if not isinstance(r, str) else f"({r})" for r in runs]
        with user_errors():
            for i, run in enumerate(runs):
                if isinstance(run, str):
                    continue
                for pieces, *_ in throttle(run):
                    texts[i] = prompt + "".join(pieces)
                    yield texts
        yield texts

    def finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                    request: gr.Request, progress=gr.Progress()):
        with self.metered(request):
            yield from self._finetune_ui(model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed,
                                         request, progress)

    def _finetune_ui(self, model_name, text, upload, steps, lr, batch_size, context, mask_prob, seed, request,
                     progress):
        with user_errors():
            if upload:
                text = pg.read_upload(upload)
            base = self.model(model_name)
            ids, config = pg.finetune_setup(base, text, steps, lr, batch_size, context, mask_prob, seed)
            run = pg.FineTune(base, ids, config)
            self.sessions.put(request.session_hash, run)
        progress(0, desc="starting")
        with user_errors():
            for history in run.run():
                if history:
                    r = history[-1]
                    progress((r["step"], r["steps"]), desc=f"loss {r['loss']:.3f}")
                yield loss_frame(history), gr.skip()
        r = run.result
        word = "stopped" if r.stopped else "done"
        yield loss_frame(run.history), (f"**{word}** after {r.step} steps in {r.seconds:.1f} s, last loss "
                                        f"{r.loss:.3f}. Generate from it below or in the Generate tab.")

    def generate_tuned_ui(self, prompt, request: gr.Request):
        """The fine-tune tab's own box: sampling at temperature 0.8 with top-p 0.9 from the visitor's copy."""
        with self.metered(request), user_errors():
            pg.check_prompt(prompt)
            m = self.model("", True, request.session_hash)
            kw = pg.generation_kwargs(m, "sampling", 100, 0.8, dict(top_p=0.9), seed=0)
            steps = pg.stream_text(m, prompt, 100, kw, trace=True)
            for pieces, probs, _, _ in throttle(steps):
                yield pg.tokens_html(prompt, pieces, probs)

    def unload(self, request: gr.Request):
        self.sessions.drop(request.session_hash)  # a closed tab frees its fine-tuned copy

    def stop_ui(self, request: gr.Request):
        run = self.sessions.get(request.session_hash)
        if run is not None:
            run.stop.set()

    def download_ui(self, request: gr.Request):
        with user_errors():
            m = self.model("", True, request.session_hash)
            path = pg.model_zip(m)
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

    def info(self, name):
        with user_errors():
            m = self.model(name)
        params = sum(p.numel() for p in m.parameters())
        return (f"{params / 1e6:.2f}M parameters, vocabulary {m.net.num_tokens}, context {m.max_seq_len} tokens, "
                f"on {m.device} ({next(m.parameters()).dtype})")


def loss_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"step": [r["step"] for r in history], "loss": [r["loss"] for r in history]})


def build(model: str, amateur: str | None = None, visitor_budget_s: float | None = None,
          trust_proxy: bool | None = None, trusted_proxies: int | None = None) -> gr.Blocks:
    app = Playground(model, amateur, visitor_budget_s=visitor_budget_s, trust_proxy=trust_proxy,
                     trusted_proxies=trusted_proxies)
    # bundled models by name, Hub ids as they are; the value passed on is the path or id
    choices = [(f"{Path(c).name} (bundled)", c) for c in [model, amateur] if c and (pg.ROOT / c).is_dir()]
    choices += [(c, c) for c in [model, amateur] + pg.HUB_EXAMPLES if c and c not in dict(choices).values()]
    # gradio's copies of downloads older than an hour are deleted every hour
    with gr.Blocks(title="axw decoding playground", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model_box = gr.Dropdown(choices, value=model, allow_custom_value=True, label="model", scale=2,
                                    info="a bundled model or a Hub repo id (axw, gpt2 or llama checkpoints)")
            model_info = gr.Markdown(app.info(model))

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox("ROMEO:", label="prompt", lines=3, max_length=pg.MAX_PROMPT_CHARS,
                                        elem_id="prompt")
                    strategy = gr.Radio(pg.STRATEGIES, value="sampling", label="strategy",
                                        info=STRATEGY_INFO["sampling"])
                    with gr.Group(visible=True) as sampling_box:
                        temperature = gr.Slider(0, 2, 0.8, step=0.05, label="temperature",
                                                info="divides the logits: < 1 sharpens, > 1 flattens, 0 = greedy")
                        gr.Markdown("Filters cut unlikely tokens before sampling, applied in this order:")
                        use_k, k = filter_row("top-k", False, (1, 200, 40, 1), "k",
                                              "keep only the k most likely tokens")
                        use_p, p = filter_row("top-p", True, (0.05, 1, 0.9, 0.01), "p",
                                              "keep the fewest top tokens whose probabilities add up to p")
                        use_min, minp = filter_row("min-p", False, (0, 1, 0.1, 0.01), "min-p",
                                                   "keep tokens at least min-p times as likely as the top one")
                        use_a, a = filter_row("top-a", False, (0, 1, 0.2, 0.01), "top-a ratio",
                                              "keep tokens with p >= ratio x p_max²: strict when the model is sure")
                    with gr.Group(visible=False) as beam_box:
                        beams = gr.Slider(2, pg.MAX_BEAMS, 4, step=1, label="beams",
                                          info="how many sequences are kept at each step")
                        length_penalty = gr.Slider(-1, 2, 0, step=0.1, label="length penalty",
                                                   info="score / length^penalty: > 0 favours longer beams")
                    with gr.Group(visible=False) as cs_box:
                        alpha = gr.Slider(0, 1, 0.6, step=0.05, label="penalty alpha",
                                          info="weight of the degeneration penalty (0 = greedy)")
                        ck = gr.Slider(1, pg.MAX_CONTRASTIVE_K, 4, step=1, label="k",
                                       info="how many likely tokens are considered")
                    with gr.Group(visible=False) as cd_box:
                        amateur_box = gr.Dropdown(choices, value=amateur, allow_custom_value=True,
                                                  label="amateur model",
                                                  info="a smaller model with the same tokenizer")
                        cd_alpha = gr.Slider(0.01, 1, 0.1, step=0.01, label="alpha (plausibility)",
                                             info="only tokens with p >= alpha x p_max of the expert are allowed")
                        cd_beta = gr.Slider(0, 2, 0.5, step=0.05, label="beta",
                                            info="score = (1 + beta) expert - beta amateur logits")
                    with gr.Accordion("length, seed and penalties", open=True):
                        max_new = gr.Slider(1, pg.MAX_NEW_TOKENS, 100, step=1, label="max new tokens",
                                            info=f"how many tokens to generate (at most {pg.MAX_NEW_TOKENS})")
                        seed = gr.Number(0, precision=0, label="seed",
                                         info="the same seed and settings give the same text")
                        rep = gr.Slider(0.5, 2, 1.0, step=0.05, label="repetition penalty",
                                        info="> 1 makes tokens already in the text less likely (1 = off)")
                        ngram = gr.Slider(0, 6, 0, step=1, label="no-repeat n-gram",
                                          info="forbid repeating any n-gram of this size (0 = off)")
                    use_ft = gr.Checkbox(False, label="use my fine-tuned model",
                                         info="the copy you trained in the Fine-tune tab")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop")
                with gr.Column(scale=3):
                    out = gr.HTML(pg.tokens_html("", [], []), label="output", elem_id="output")
                    gr.HTML(LEGEND)
                    step = gr.Slider(1, 2, 1, step=1, label="step", interactive=False,
                                     info="pick a step to see how the distribution was shaped")
                    chart = gr.HTML(pg.step_html(None, None), elem_id="step-chart")
            rows = gr.State([])

            def show(s):
                return (gr.Radio(info=STRATEGY_INFO[s]), gr.Group(visible=s in ("sampling", "contrastive decoding")),
                        gr.Group(visible=s == "beam search"), gr.Group(visible=s == "contrastive search"),
                        gr.Group(visible=s == "contrastive decoding"))

            strategy.change(show, strategy, [strategy, sampling_box, beam_box, cs_box, cd_box],
                            api_visibility="private", queue=False)
            inputs = [model_box, prompt, strategy, max_new, temperature, use_k, k, use_p, p, use_min, minp, use_a, a,
                      rep, ngram, seed, beams, length_penalty, alpha, ck, amateur_box, cd_alpha, cd_beta, use_ft]
            run = go.click(gpu(app.generate_ui), inputs, [out, rows, step, chart], api_name="generate_stream",
                           api_visibility="undocumented", concurrency_limit=CONCURRENCY, concurrency_id="gen")
            submitted = prompt.submit(gpu(app.generate_ui), inputs, [out, rows, step, chart],
                                      api_visibility="private", concurrency_limit=CONCURRENCY, concurrency_id="gen")
            stop.click(None, cancels=[run, submitted])
            step.change(app.step_ui, [model_box, use_ft, rows, step], chart, api_visibility="private",
                        show_progress="hidden")

        with gr.Tab("Compare"):
            gr.Markdown("One prompt and seed through five strategies, side by side.")
            with gr.Row():
                c_prompt = gr.Textbox("ROMEO:", label="prompt", lines=2, scale=3, max_length=pg.MAX_PROMPT_CHARS)
                c_seed = gr.Number(0, precision=0, label="seed", scale=1)
                c_new = gr.Slider(1, pg.MAX_NEW_TOKENS, 60, step=1, label="max new tokens", scale=2)
            c_go = gr.Button("Compare", variant="primary")
            boxes = []
            with gr.Row(equal_height=True):
                for label, *_ in COMPARE:
                    boxes.append(gr.Textbox(label=label, lines=10, max_lines=20, interactive=False, min_width=200))
            c_go.click(gpu(app.compare_ui), [model_box, c_prompt, c_seed, c_new, amateur_box], boxes,
                       api_visibility="private", concurrency_limit=CONCURRENCY, concurrency_id="gen")

        with gr.Tab("Fine-tune"):
            gr.Markdown(
                "Train **your own copy** of the model on your text (nobody else's model changes). "
                "`mask_prob` hides that fraction of the earlier tokens from attention at each training step "
                "(forgetful causal masking, Liu et al. 2022, arXiv:2210.13432), so the model learns to predict "
                "with gaps in what it sees.")
            with gr.Row():
                with gr.Column():
                    ft_text = gr.Textbox(label="training text", lines=8, max_length=pg.MAX_TRAIN_CHARS,
                                         placeholder="paste text here, or upload a .txt file")
                    ft_file = gr.File(label=f"or upload a .txt file (at most {pg.MAX_UPLOAD_BYTES // 1_000_000} MB)",
                                      file_types=[".txt"], type="filepath", height=120)
                    ft_steps = gr.Slider(1, pg.MAX_FINETUNE_STEPS, 50, step=1, label="steps",
                                         info="optimizer steps (each on one batch of random windows)")
                    ft_lr = gr.Slider(1e-5, 1e-2, 3e-4, step=1e-5, label="learning rate",
                                      info="AdamW step size, warmed up then cosine-decayed")
                    ft_batch = gr.Slider(1, pg.MAX_BATCH_SIZE, 8, step=1, label="batch size",
                                         info="windows per step")
                    ctx_max = app.model(model).max_seq_len
                    ft_ctx = gr.Slider(8, ctx_max, min(64, ctx_max), step=8, label="context length",
                                       info="tokens per training window (at most the model's context)")
                    ft_mask = gr.Slider(0, 0.9, 0.15, step=0.05, label="mask_prob",
                                        info="fraction of keys hidden while training (0 = plain next-token training)")
                    ft_seed = gr.Number(0, precision=0, label="seed")
                    with gr.Row():
                        ft_go = gr.Button("Fine-tune", variant="primary")
                        ft_stop = gr.Button("Stop")
                with gr.Column():
                    ft_plot = gr.LinePlot(loss_frame([]), x="step", y="loss", title="training loss", height=300)
                    ft_status = gr.Markdown()
                    t_prompt = gr.Textbox("ROMEO:", label="prompt for your model", lines=2)
                    t_go = gr.Button("Generate from my model")
                    t_out = gr.HTML(pg.tokens_html("", [], []))
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
            ft_inputs = [model_box, ft_text, ft_file, ft_steps, ft_lr, ft_batch, ft_ctx, ft_mask, ft_seed]
            ft_go.click(gpu(app.finetune_ui, duration=300), ft_inputs, [ft_plot, ft_status],
                        api_visibility="private", concurrency_limit=1, concurrency_id="train")
            # Stop asks the training loop to end after its current step (should_stop), keeping what it learned
            ft_stop.click(app.stop_ui, None, None, api_visibility="private", queue=False)
            t_go.click(gpu(app.generate_tuned_ui), t_prompt, t_out, api_visibility="private",
                       concurrency_limit=CONCURRENCY, concurrency_id="gen")
            dl.click(app.download_ui, None, dl_file, api_visibility="private")
            push.click(app.push_ui, [repo, token, private], [push_status, token], api_visibility="private")

        def picked(name):
            # the context slider follows the model: a window can be at most its max_seq_len
            text = app.info(name)  # a bad name stops here with its gr.Error
            size = app.model(name).max_seq_len
            return text, gr.Slider(maximum=size, value=min(64, size))

        model_box.change(picked, model_box, [model_info, ft_ctx], api_visibility="private")

        with gr.Tab("API"):
            gr.Markdown(API_DOC)

        gr.api(gpu(app.generate_api), api_name="generate", concurrency_limit=CONCURRENCY, concurrency_id="gen")
        demo.unload(app.unload)
        gr.api(gpu(app.finetune_api, duration=300), api_name="finetune", concurrency_limit=1, concurrency_id="train")
    demo.queue(max_size=64, default_concurrency_limit=CONCURRENCY)
    demo.playground = app
    return demo


API_DOC = f"""Everything the Generate and Fine-tune tabs do is also a named API endpoint; every parameter but the
first has a default.

```python
from gradio_client import Client

client = Client("http://127.0.0.1:7860")          # or "owner/space-name" on Hugging Face Spaces
text, tokens, trace = client.predict(prompt="ROMEO:", api_name="/generate")
text, *_ = client.predict(prompt="ROMEO:", strategy="beam search", beams=4, max_new_tokens=40,
                          api_name="/generate")
report = client.predict(text=open("my.txt").read(), steps=20, api_name="/finetune")
text, *_ = client.predict(prompt="ROMEO:", use_finetuned=True, api_name="/generate")   # same client
```

**/generate** returns the generated text, each new token as `[text, probability]`, and the per-step trace.
`strategy`: {", ".join(f"`{s}`" for s in pg.STRATEGIES)}. Sampling: `temperature` (0 = greedy), `top_k`,
`top_p`, `min_p`, `top_a` (off at 0, 1, 0, 0; chained in that order), `seed`. Beam search: `beams`,
`length_penalty`. Contrastive search: `penalty_alpha`, `contrastive_k`. Contrastive decoding: `amateur`,
`cd_alpha`, `cd_beta`. All: `max_new_tokens`, `repetition_penalty`, `no_repeat_ngram_size`, `model`
(a Hub repo id; empty = the default model), `use_finetuned`.

**/finetune** (`text`, `steps`, `learning_rate`, `batch_size`, `context_length`, `mask_prob`, `seed`) trains
your own copy of the model and returns `{{steps, stopped, loss, losses}}`.

**Caps**: prompt {pg.MAX_PROMPT_CHARS:,} characters; {pg.MAX_NEW_TOKENS} new tokens; {pg.MAX_BEAMS} beams;
uploads: UTF-8 `.txt`, {pg.MAX_UPLOAD_BYTES // 1_000_000} MB; fine-tunes: {pg.MAX_FINETUNE_STEPS} steps, batch
{pg.MAX_BATCH_SIZE}; Hub models: {pg.MAX_HUB_MODEL_BYTES // 1_000_000_000} GB of safetensors weights.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the axw decoding playground.")
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL),
                        help="model folder or Hub repo id (default $AXW_MODEL or the bundled model)")
    parser.add_argument("--amateur", default=pg.model_path("AXW_AMATEUR", pg.DEFAULT_AMATEUR),
                        help="amateur model for contrastive decoding (default $AXW_AMATEUR or the bundled tiny one)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("AXW_THREADS", "0")),
                        help="CPU threads for torch (default: torch's choice); 1 is steadiest on a busy machine")
    args = parser.parse_args(argv)
    if "MALLOC_ARENA_MAX" not in os.environ:  # glibc's own setting wins where one is given
        pg.limit_malloc_arenas(int(os.environ.get("AXW_MALLOC_ARENAS", "2")))
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        demo = build(args.model, args.amateur)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    launch(demo, server_name=args.host, server_port=args.port)


def launch(demo: gr.Blocks, **kwargs):
    """Launch with the playground's CSS and upload cap (tests and benchmarks launch through here too)."""
    return demo.launch(css=CSS, max_file_size=pg.MAX_UPLOAD_BYTES, footer_links=["api"], **kwargs)


if __name__ == "__main__":
    main()
