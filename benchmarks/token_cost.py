"""Where a streamed token's time goes, on the bundled model: one visitor's generation taken apart.

    python benchmarks/token_cost.py [--new 96] [--repeats 5]

Inside the process, per token (median over the repeats, sampling at temperature 0.8, top-p 0.9):
  forward        the network alone: decode_one_token and the head, through the KV cache;
  library        model.stream without the trace (forward, processors, the draw);
  trace          model.stream with the trace, less the above;
  playground     the playground's run (detokenising each token, the run's bookkeeping), less the above;
  rendering      the coloured text the page is sent (tokens_html), once per streamed update.
Over HTTP (python app.py, the Generate button's event read as the browser reads it): the whole generation with
the page's streamed updates, and with none but the last (what the updates cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import playground as pg  # noqa: E402
from app_speed import Browser, free_port  # noqa: E402
from class_burst import PROMPT, settings, start_server, values  # noqa: E402


def per_token(fn, repeats: int) -> float:
    """Median seconds per token of fn() -> tokens."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        n = fn()
        times.append((time.perf_counter() - began) / max(n, 1))
    return statistics.median(times)


def forward_only(model, n_new: int) -> int:
    ids = torch.tensor([model.tokenizer.encode(PROMPT).ids])
    with torch.no_grad():
        net = model.net
        cache = net.new_cache(ids.shape[1] + n_new)
        hidden = net.decode(ids, cache)[:, -1]
        for token in range(n_new):
            net.logits(hidden)
            hidden = net.decode(torch.tensor([[token % net.num_tokens]]), cache)[:, -1]
    return n_new


def library(model, n_new: int, trace: bool) -> int:
    config = settings(n_new, 0).config(model, trace=trace)
    ids = torch.tensor(model.tokenizer.encode(PROMPT).ids)
    n = 0
    for _ in model.stream(ids, n_new, config):
        n += 1
    return n


def playground_run(model, n_new: int) -> int:
    s = settings(n_new, 0)
    _, updates = pg.runs.start(model, PROMPT, s, s.config(model))
    for run in updates:
        pass
    return len(run.new_ids)


def rendering(model, n_new: int) -> float:
    """Seconds to render the coloured text of a finished run (what one streamed update renders at its end)."""
    s = settings(n_new, 0)
    _, updates = pg.runs.start(model, PROMPT, s, s.config(model))
    for run in updates:
        pass
    began = time.perf_counter()
    for _ in range(20):
        pg.tokens_html(run.prompt, run.pieces, run.probs)
    return (time.perf_counter() - began) / 20


def over_http(model_path: str, n_new: int, repeats: int) -> tuple[float, float]:
    """Seconds for the whole generation over HTTP: streamed as the page streams it, and with one update."""
    servers, browsers = [], {}
    try:
        for streamed in (True, False):
            port = free_port()
            os.environ["AXW_STREAM_INTERVAL_S"] = "" if streamed else "3600"
            servers.append(start_server(model_path, port, True, 0))
            browsers[streamed] = Browser(f"http://127.0.0.1:{port}/")
        os.environ.pop("AXW_STREAM_INTERVAL_S")
        for b in browsers.values():
            b.run("generate_controls", values(n_new, 0))
        times = {k: [] for k in browsers}
        for _ in range(repeats):
            for k, b in browsers.items():
                times[k].append(b.run("generate_controls", values(n_new, 0))[1])
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait()
    return statistics.median(times[True]), statistics.median(times[False])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL))
    parser.add_argument("--new", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = pg.ModelCache([args.model]).get(args.model)
    n = playground_run(model, args.new)
    forward = per_token(lambda: forward_only(model, args.new), args.repeats)
    bare = per_token(lambda: library(model, args.new, False), args.repeats)
    traced = per_token(lambda: library(model, args.new, True), args.repeats)
    run = per_token(lambda: playground_run(model, args.new), args.repeats)
    render = rendering(model, args.new)
    streamed, once = over_http(args.model, args.new, args.repeats)
    ms = 1000
    print(f"model {args.model}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}; {n} tokens, medians of {args.repeats}")
    print(f"per token inside the process: forward {forward * ms:.2f} ms, processors and the draw "
          f"{(bare - forward) * ms:.2f} ms, trace {(traced - bare) * ms:.2f} ms, the playground's run "
          f"{(run - traced) * ms:.2f} ms: {run * ms:.2f} ms in all ({1 / run:.0f} tokens/s)")
    print(f"rendering the coloured text of {n} tokens (one streamed update): {render * ms:.2f} ms")
    print(f"over HTTP, the Generate button: {streamed:.2f} s streamed as the page streams it "
          f"({n / streamed:.0f} tokens/s), {once:.2f} s with only the last update ({n / once:.0f} tokens/s)")


if __name__ == "__main__":
    main()
