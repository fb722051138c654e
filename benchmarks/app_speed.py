"""How fast the playground starts and answers, on the bundled model.

    python benchmarks/app_speed.py [--model assets/models/shakespeare] [--repeats 10]

start to ready: `python app.py` in a fresh process until its page answers
(imports, loading the model, building the UI, binding the port).
First streamed token: from submitting a generation over HTTP until the first
update carrying text arrives, read as the browser reads it (join Gradio's queue,
read its server-sent events); the same through gradio_client, whose reader
looks at its message queue every 50 ms, so it adds 0 to 50 ms; and inside the
server (prompt -> first token of `model.stream`, no HTTP). A branch's first
token: in the same session, after a generation of --branch-new tokens, from
asking for the what-if branch at its middle step (the page's branch event)
until the branch's first update arrives, over HTTP and inside the server (fork
the kept KV cache, run the forced token). Medians over the repeats; the target
for both is 0.1 s over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
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
    # one client asking again and again: the per-visitor share would refuse it part way
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", AXW_VISITOR_BUDGET_S="0")
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
    """The Generate button's values (its event, /generate_controls, takes every control): sampling, temperature
    0.8, top-p 0.9, seed 0, the later controls at the panel's defaults."""
    from playground.settings import Settings
    from playground.views.settings import ui_values

    return ui_values(PROMPT, Settings(max_new_tokens=n_new, temperature=0.8, top_p=0.9, seed=0))


def first_update(job) -> float:
    """Seconds until the job's first streamed update (the caller started the clock)."""
    while not job.outputs():
        if job.done():
            break
        time.sleep(0.0005)
    return time.perf_counter()


class Browser:
    """A client that talks to the page's queue as the browser does: join it, then read the session's
    server-sent events as they arrive (no polling)."""

    def __init__(self, url: str):
        import httpx

        self.url, self.http = url, httpx.Client(timeout=120)
        config = self.http.get(f"{url}config").json()
        self.prefix = url + config.get("api_prefix", "/gradio_api").strip("/") + "/"
        self.fn = {d.get("api_name"): i for i, d in enumerate(config["dependencies"])}
        kinds = {c["id"]: c.get("type") for c in config["components"]}
        # which inputs of each event are the session's state (the page sends nothing for them)
        self.states = {d.get("api_name"): [kinds.get(i) == "state" for i in d["inputs"]]
                       for d in config["dependencies"]}
        # what the page runs when it opens (a share link's settings): the server makes the session then
        self.on_load = [d.get("api_name") for d in config["dependencies"]
                        if any(target[1] == "load" for target in d.get("targets", []))]
        self.session = uuid.uuid4().hex

    def open(self):
        """Open the page as the browser does: its load events run, and the server makes the session's state."""
        for api_name in self.on_load:
            self.run(api_name, [])
        return self

    def run(self, api_name: str, data: list) -> tuple[float, float]:
        """(seconds to the first update, seconds to the end) of one event."""
        values = iter(data)
        data = [None if state else next(values) for state in self.states[api_name]]
        began = time.perf_counter()
        joined = self.http.post(f"{self.prefix}queue/join", json=dict(
            data=data, fn_index=self.fn[api_name], session_hash=self.session, event_data=None, trigger_id=None))
        event = joined.json()["event_id"]
        first = None
        with self.http.stream("GET", f"{self.prefix}queue/data", params=dict(session_hash=self.session)) as stream:
            for line in stream.iter_lines():
                # after the first update only the end is read: the updates between are not parsed, so the
                # benchmark's own clients take less of the CPU the server runs on (students' browsers run elsewhere)
                if not line.startswith("data:") or (first is not None and '"process_completed"' not in line):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") != event:
                    continue
                if msg["msg"] in ("process_generating", "process_completed") and first is None:
                    first = time.perf_counter() - began
                if msg["msg"] == "process_completed":
                    if not msg.get("success", True):
                        raise SystemExit(f"{api_name} failed: {msg.get('output')}")
                    return first, time.perf_counter() - began
        raise SystemExit("the event stream ended early")


def first_token_sse(browser: Browser, n_new: int) -> float:
    return browser.run("generate_controls", controls(n_new))[0]


def branch_first_token_sse(browser: Browser, n_new: int, token: int) -> float:
    browser.run("generate_controls", controls(n_new))
    return browser.run("branch_stream", [n_new // 2, token])[0]


def first_token_http(client, n_new: int) -> float:
    began = time.perf_counter()
    job = client.submit(*controls(n_new), api_name="/generate_controls")
    first = first_update(job) - began
    job.result()
    return first


def branch_first_token_http(client, n_new: int, token: int) -> float:
    """A generation of n_new tokens in this client's session, then its branch at the middle step."""
    client.submit(*controls(n_new), api_name="/generate_controls").result()
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


def ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f})")


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
        url = f"http://127.0.0.1:{port}/"
        client, browser = Client(url, verbose=False), Browser(url)
        models = pg.ModelCache([args.model])
        model = models.get(args.model)
        token = model.tokenizer.encode(" the").ids[0]
        # warm-up: the first requests compile nothing but pay lazy imports
        first_token_sse(browser, args.new), first_token_http(client, args.new)
        branch_first_token_sse(browser, args.branch_new, token)
        sse, http, branch_sse, branch_http = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so a busy moment weighs on each alike
            sse.append(first_token_sse(browser, args.new))
            http.append(first_token_http(client, args.new))
            branch_sse.append(branch_first_token_sse(browser, args.branch_new, token))
            branch_http.append(branch_first_token_http(client, args.branch_new, token))
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
    print(f"first streamed token over HTTP (server-sent events, as the browser reads them), median of "
          f"{args.repeats}: {ms(sse)}; target {TARGET_FIRST_TOKEN_S * 1000:.0f} ms")
    print(f"first streamed token through gradio_client (+0-50 ms of its polling): {ms(http)}")
    print(f"first token inside the server (prompt -> first step of model.stream), median: "
          f"{statistics.median(local) * 1000:.1f} ms")
    print(f"a branch's first token over HTTP (at step {args.branch_new // 2} of {args.branch_new}; server-sent "
          f"events), median of {args.repeats}: {ms(branch_sse)}; target {TARGET_BRANCH_S * 1000:.0f} ms")
    print(f"a branch's first token through gradio_client: {ms(branch_http)}")
    print(f"a branch's first token inside the server (fork the kept cache, the forced token), median: "
          f"{statistics.median(branch_local) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
