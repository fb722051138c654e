"""The axw playground: learn decoding strategies on a real model, compare them,
fine-tune the model on your own text. Built on the library in axw/; the
app's logic lives in the playground/ package (views in playground/views/).

    python app.py                       # the bundled model, http://127.0.0.1:7860
    python app.py --model runs/m --amateur runs/m-tiny --draft runs/m-draft --port 7861
    AXW_MODEL=runs/m python app.py      # the same through the environment

The same file runs on Hugging Face Spaces (README.md front matter).
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# gradio's queue summarises the events it served (a pandas table of up to 10,000 of them, 10 to 20 ms of the
# interpreter lock) at the end of every event, for a monitoring page this app does not open: only on request
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))

try:  # ZeroGPU on Spaces: imported before torch, as it asks (playground.service wraps the handlers with it)
    import spaces  # noqa: F401
except ImportError:
    pass

import gradio as gr  # noqa: E402

import playground as pg  # noqa: E402
from playground.service import Playground, gpu, throttle, user_errors  # noqa: E402,F401
from playground.sessions import visitor  # noqa: E402,F401
from playground.views import api, check_handlers, compare, finetune, generate, lessons, settings  # noqa: E402
from playground.views import waking_queue  # noqa: E402
from playground.views.compare import COMPARE  # noqa: E402,F401

waking_queue.install()  # gradio's queues look for work every millisecond: the app's wait for it instead

CONCURRENCY = pg.sessions.concurrency()  # AXW_CONCURRENCY

INTRO = """# axw decoding playground
A language model gives a probability to every possible next token; a **decoding strategy** decides which one to
take. Pick a strategy and generate, and it shows how it decided (beam search its tree, speculative decoding its
rounds); click any token to see what happened to the probabilities at that step, click a candidate to see where
the text would have gone instead, and share a link to exactly what you found.
"""

CSS = ""  # gathered from the views at build


class App(generate.Handlers, compare.Handlers, finetune.Handlers, Playground):
    """What the page and the API serve: the core every tab shares (`playground.service.Playground`: the models,
    each visitor's share and copies, /generate and /branch) with each tab's handlers, which live beside its view."""


def build(model: str, amateur: str | None = None, visitor_budget_s: float | None = None,
          trust_proxy: bool | None = None, trusted_proxies: int | None = None, draft: str | None = None,
          address_budget_s: float | None = None, finetunes: int | None = None) -> gr.Blocks:
    global CSS
    app = App(model, amateur, visitor_budget_s=visitor_budget_s, trust_proxy=trust_proxy,
              trusted_proxies=trusted_proxies, draft=draft, address_budget_s=address_budget_s, finetunes=finetunes)
    # bundled models by name, Hub ids as they are; the value passed on is the path or id
    choices = [(f"{Path(c).name} (bundled)", c) for c in [model, amateur] if c and (pg.ROOT / c).is_dir()]
    choices += [(c, c) for c in [model, amateur] if c and c not in dict(choices).values()]
    choices += [(m.label(), m.repo_id) for m in pg.HUB_MODELS if m.repo_id not in dict(choices).values()]
    # gradio's copies of downloads older than an hour are deleted every hour
    with gr.Blocks(title="axw decoding playground", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model_box = gr.Dropdown(choices, value=model, allow_custom_value=True, label="model", scale=2,
                                    info="a bundled model, one of today's small Hub models, or any Hub repo id of a family axw "
                                         "imports",
                                    elem_id="model")
            model_info = gr.Markdown(app.info(model))

        with gr.Tabs() as tabs:  # ids: a paired lesson opens Compare
            with gr.Tab("Generate", id="generate"):
                controls, load_link, css = generate.build(app, gpu, model_box, choices, CONCURRENCY)
            with gr.Tab("Compare", id="compare"):
                compare_css, compare_panel = compare.build(app, gpu, model_box, controls["amateur"], CONCURRENCY,
                                                             controls["chat"], controls["system"])
            with gr.Tab("Fine-tune", id="finetune"):
                ft_ctx = finetune.build(app, gpu, model_box, CONCURRENCY)
            with gr.Tab("API", id="api"):
                api.build()
        lessons.build(tabs, controls.lessons, compare_panel)

        def picked(name, request: gr.Request = None, progress=gr.Progress()):
            # the context slider follows the model (a window is at most its max_seq_len); the settings follow
            # its generation_config.json when it has one; chat mode is on for a model with a chat template; the
            # amateur (and drafter) is the smallest listed model sharing its tokenizer. A Hub download shows its
            # progress, bytes and files, over the model's info
            model = app.load(name, progress)  # a bad name stops here with its gr.Error
            text = app.info(name)
            start, _ = app.starting_settings(name)
            fills = settings.fill(None, settings.starting(start)) if start is not None else \
                [gr.skip()] * len(settings.UI_INPUTS)
            fills[settings.UI_INPUTS.index("chat")] = model.chat_template is not None
            sibling = pg.smallest_sibling(name)
            if sibling:
                fills[settings.UI_INPUTS.index("amateur")] = gr.Dropdown(value=sibling)
            return [text, gr.Slider(maximum=model.max_seq_len, value=min(64, model.max_seq_len)), *fills[1:]]

        model_box.input(picked, model_box, [model_info, ft_ctx, *controls.inputs()[1:]], api_visibility="private",
                        show_progress_on=[model_info])
        demo.load(load_link, None, controls.inputs(), api_visibility="private")

        gr.api(gpu(app.generate_api), api_name="generate", concurrency_limit=CONCURRENCY, concurrency_id="gen")
        gr.api(gpu(app.branch_api), api_name="branch", api_visibility="undocumented", concurrency_limit=CONCURRENCY,
               concurrency_id="gen")
        gr.api(gpu(app.sample_tree_api), api_name="sample_tree", concurrency_limit=CONCURRENCY, concurrency_id="gen")
        demo.unload(app.unload)
        gr.api(gpu(app.finetune_api, duration=300), api_name="finetune", concurrency_limit=1, concurrency_id="train")
    check_handlers(demo)
    fixed_signatures(demo)
    keep_old_calls(demo, "generate", app.generate_api)
    demo.queue(max_size=64, default_concurrency_limit=CONCURRENCY)
    demo.playground, demo.controls = app, controls
    CSS = css + compare_css
    return demo


def fixed_signatures(demo: gr.Blocks) -> list:
    """Give the constructors of the page's component classes their signature once, as `__signature__`, which
    `inspect.signature` returns as it is. gradio reads a component's constructor signature for each of the page's
    341 blocks when a visitor's session starts (its copy of the page's config: 29 ms of the interpreter lock on
    the CPU we measured) and when an event updates a component, so a class of visitors arriving together queues
    behind it. The signatures are the ones inspect computes, so the configs are unchanged. Returns the functions
    given one (a wrapped constructor and the function it wraps)."""
    given = []
    classes = {cls for block in demo.blocks.values() for cls in type(block).__mro__
               if cls.__module__.startswith("gradio.") and "__init__" in vars(cls)}
    for cls in classes:
        fn = vars(cls)["__init__"]
        while fn is not None and not hasattr(fn, "__signature__"):
            fn.__signature__ = inspect.signature(fn)
            given.append(fn)
            fn = getattr(fn, "__wrapped__", None)
    return given


def keep_old_calls(demo: gr.Blocks, api_name: str, fn):
    """Let a call that sends only the first values of endpoint `api_name` (as a client written before its later
    parameters did) mean what it always meant: the values it leaves out take `fn`'s defaults. gradio_client fills
    them itself; a plain HTTP call (POST /gradio_api/call/generate with a list) would otherwise be refused by
    gradio for the missing ones."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "request"]
    required = sum(p.default is inspect.Parameter.empty for p in params)
    defaults = [p.default for p in params]
    validate = demo.validate_inputs

    def padded(block_fn, inputs):
        if block_fn.api_name == api_name and required <= len(inputs) < len(defaults):
            inputs.extend(defaults[len(inputs):])  # in place: gradio goes on with this list
        return validate(block_fn, inputs)

    demo.validate_inputs = padded


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the axw decoding playground.")
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL),
                        help="model folder or Hub repo id (default $AXW_MODEL or the bundled model)")
    parser.add_argument("--amateur", default=pg.model_path("AXW_AMATEUR", pg.DEFAULT_AMATEUR),
                        help="amateur model for contrastive decoding (default $AXW_AMATEUR or the bundled tiny one)")
    parser.add_argument("--draft", default=None,
                        help="draft model for speculative decoding (default $AXW_DRAFT, else the bundled draft with "
                             "the bundled model, else the amateur)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("AXW_THREADS", "0")),
                        help="CPU threads for torch (default: torch's choice, or 1 with worker processes); 1 is "
                             "steadiest on a busy machine")
    args = parser.parse_args(argv)
    if "MALLOC_ARENA_MAX" not in os.environ:  # glibc's own setting wins where one is given
        pg.limit_malloc_arenas(int(os.environ.get("AXW_MALLOC_ARENAS", "2")))
    if args.threads == 0 and pg.sessions.workers_wanted():
        args.threads = 1  # a process a core: the workers take this process's number (playground.workers)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        demo = build(args.model, args.amateur, draft=args.draft)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    pg.freeze_heap()
    launch(demo, server_name=args.host, server_port=args.port)


def launch(demo: gr.Blocks, **kwargs):
    """Launch with the playground's CSS and upload cap (tests and benchmarks launch through here too)."""
    return demo.launch(css=CSS, max_file_size=pg.MAX_UPLOAD_BYTES, footer_links=["api"], **kwargs)


if __name__ == "__main__":
    main()
