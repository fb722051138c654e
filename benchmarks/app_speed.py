"""How fast the playground starts and answers, on the bundled model.

    python benchmarks/app_speed.py [--model assets/models/shakespeare] [--repeats 10]

start to ready: `python app.py` in a fresh process until its page answers
(imports, loading the model, building the UI, binding the port).
First streamed token: from submitting a generation over HTTP (gradio_client,
the browser's own protocol) until the first update carrying text arrives;
and the same inside the server (prompt -> first token of `model.stream`, no
HTTP). A branch's first token: in the same session, after a generation of
--branch-new tokens, from asking for the what-if branch at its middle step
(the page's branch event) until the branch's first update arrives; and the
same inside the server (fork the kept KV cache, run the forced token).
Medians over the repeats; the target for both is 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import playground as pg  # noqa: E402

TARGET_FIRST_TOKEN_S = 0.1
TARGET_BRANCH_S = 0.1
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, amateur: str, port: int, threads: int) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    began = time.perf_counter()
    command = [sys.executable, str(ROOT / "app.py"), "--model", model, "--amateur", amateur, "--port", str(port),
               "--threads", str(threads)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return proc, time.perf_counter() - began
        except OSError:
            time.sleep(0.02)
        if time.perf_counter() - began > 120:
            proc.kill()
            raise SystemExit("app.py did not answer within 120 s")


def controls(n_new: int) -> list:
    """The Generate button's values: sampling, temperature 0.8, top-p 0.9, seed 0."""
    return ["", PROMPT, "sampling", n_new, 0.8, False, 40, True, 0.9, False, 0.1, False, 0.2, 1.0, 0, 0, 4, 0.0,
            0.6, 4, "", 0.1, 0.5, False]


def first_update(job) -> float:
    """Seconds until the job's first streamed update (the caller started the clock)."""
    while not job.outputs():
        if job.done():
            break
        time.sleep(0.0005)
    return time.perf_counter()


def first_token_http(client, n_new: int) -> float:
    began = time.perf_counter()
    job = client.submit(*controls(n_new), api_name="/generate_stream")
    first = first_update(job) - began
    job.result()
    return first


def branch_first_token_http(client, n_new: int, token: int) -> float:
    """A generation of n_new tokens in this client's session, then its branch at the middle step."""
    client.submit(*controls(n_new), api_name="/generate_stream").result()
    began = time.perf_counter()
    job = client.submit(n_new // 2, token, api_name="/branch_stream")
    first = first_update(job) - began
    job.result()
    return first


def first_token_in_process(model, n_new: int) -> float:
    settings = pg.Settings(max_new_tokens=n_new, temperature=0.8, top_p=0.9, seed=0)
    began = time.perf_counter()
    run, updates = pg.runs.start(model, PROMPT, settings, settings.config(model))
    next(updates)
    first = time.perf_counter() - began
    for _ in updates:
        pass
    return first


def branch_first_token_in_process(model, n_new: int, token: int) -> float:
    settings = pg.Settings(max_new_tokens=n_new, temperature=0.8, top_p=0.9, seed=0)
    config = settings.config(model)
    cache = model.net.new_cache()
    run, updates = pg.runs.start(model, PROMPT, settings, config, cache=cache)
    for run in updates:
        pass
    began = time.perf_counter()
    _, updates, _ = pg.branch(model, run, min(n_new // 2, len(run.rows) - 1), token, config, kept=cache)
    next(updates)
    first = time.perf_counter() - began
    for _ in updates:
        pass
    return first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL))
    parser.add_argument("--amateur", default=pg.model_path("AXW_AMATEUR", pg.DEFAULT_AMATEUR))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--new", type=int, default=32, help="tokens per generation")
    parser.add_argument("--branch-new", type=int, default=256,
                        help="tokens of the text a branch leaves (at its middle step)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, in the server and here (0: default)")
    args = parser.parse_args()

    import torch
    from gradio_client import Client

    if args.threads:
        torch.set_num_threads(args.threads)
    port = free_port()
    proc, ready = start_server(args.model, args.amateur, port, args.threads)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        first_token_http(client, args.new)  # warm-up: the first request compiles nothing but pays lazy imports
        http = [first_token_http(client, args.new) for _ in range(args.repeats)]
        models = pg.ModelCache([args.model])
        model = models.get(args.model)
        token = model.tokenizer.encode(" the").ids[0]
        branch_first_token_http(client, args.branch_new, token)
        branch_http = [branch_first_token_http(client, args.branch_new, token) for _ in range(args.repeats)]
    finally:
        proc.terminate()
        proc.wait()

    first_token_in_process(model, args.new)
    local = [first_token_in_process(model, args.new) for _ in range(args.repeats)]
    branch_first_token_in_process(model, args.branch_new, token)
    branch_local = [branch_first_token_in_process(model, args.branch_new, token) for _ in range(args.repeats)]
    params = sum(p.numel() for p in model.parameters())

    print(f"model {args.model}: {params / 1e6:.2f}M parameters on {model.device}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"start to ready (python app.py until the page answers): {ready:.2f} s")
    print(f"first streamed token over HTTP, median of {args.repeats}: {statistics.median(http) * 1000:.0f} ms "
          f"(min {min(http) * 1000:.0f}, max {max(http) * 1000:.0f}); target {TARGET_FIRST_TOKEN_S * 1000:.0f} ms")
    print(f"first token inside the server (prompt -> first step of model.stream), median: "
          f"{statistics.median(local) * 1000:.1f} ms")
    print(f"a branch's first token over HTTP (at step {args.branch_new // 2} of {args.branch_new}), median of "
          f"{args.repeats}: {statistics.median(branch_http) * 1000:.0f} ms (min {min(branch_http) * 1000:.0f}, max "
          f"{max(branch_http) * 1000:.0f}); target {TARGET_BRANCH_S * 1000:.0f} ms")
    print(f"a branch's first token inside the server (fork the kept cache, the forced token), median: "
          f"{statistics.median(branch_local) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
