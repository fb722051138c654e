"""The picker's list of today's small Hub models: labels with parameters and memory, the amateur that shares a
model's tokenizer, the precision Hub models are served in, and the refusals before any download (gated, pickle
only, over the cap)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")
import playground as pg  # noqa: E402


def test_labels_give_parameters_memory_and_the_cap():
    model = pg.HubModel("org/tiny-chat", 360e6, instruct=True, tokenizer="t")
    assert model.label(cap_bytes=10**9) == "org/tiny-chat · 360M parameters · 720 MB in bf16 · chat"
    big = pg.HubModel("org/big", 3.08e9, gated=True)
    assert big.label(cap_bytes=2 * 10**9) == ("org/big · 3.1B parameters · 6.2 GB in bf16 (over this server's cap) · "
                                              "gated: needs a token")
    listed = {m.repo_id for m in pg.HUB_MODELS}
    for repo in ("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen3-0.6B", "Qwen/Qwen2.5-0.5B-Instruct",
                 "google/gemma-3-270m-it", "meta-llama/Llama-3.2-1B-Instruct", "HuggingFaceTB/SmolLM3-3B",
                 "openai-community/gpt2"):
        assert repo in listed
    assert pg.HUB_EXAMPLES == [m.repo_id for m in pg.HUB_MODELS]


def test_the_amateur_is_the_smallest_listed_model_sharing_the_tokenizer():
    assert pg.smallest_sibling("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-135M"
    assert pg.smallest_sibling("meta-llama/Llama-3.2-1B-Instruct") is None  # its base is as large
    assert pg.smallest_sibling("HuggingFaceTB/SmolLM2-135M") is None
    assert pg.smallest_sibling("someone/unlisted") is None


def test_hub_models_are_served_in_bf16_on_a_cpu_that_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "bfloat16"}) == torch.bfloat16
    assert pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "float32"}) == torch.float32
    monkeypatch.setattr(pg.models, "cpu_has_bf16", lambda: True)
    assert pg.hub_dtype(cpu, torch.float32, env={}) == torch.bfloat16
    monkeypatch.setattr(pg.models, "cpu_has_bf16", lambda: False)
    assert pg.hub_dtype(cpu, torch.float32, env={}) == torch.float32
    assert pg.hub_dtype(torch.device("cuda"), torch.bfloat16, env={"AXW_HUB_DTYPE": "float32"}) == torch.bfloat16
    with pytest.raises(ValueError, match="AXW_HUB_DTYPE"):
        pg.hub_dtype(cpu, torch.float32, env={"AXW_HUB_DTYPE": "fp8"})


@pytest.fixture
def hub(monkeypatch):
    """The Hub's answers about a few repos (its model_info), with the network on as far as the checks know."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def model_info(self, repo_id, files_metadata=False):
        if repo_id == "meta-llama/Llama-3.2-1B":
            raise GatedRepoError("403 Client Error: Cannot access gated repo", response=SimpleNamespace(
                headers={}, status_code=403, request=None, json=lambda: {}))
        if repo_id == "old/pickles":
            return SimpleNamespace(siblings=[SimpleNamespace(rfilename="pytorch_model.bin", size=10**6),
                                             SimpleNamespace(rfilename="config.json", size=100)])
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename="model.safetensors", size=2_470_000_000)])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


def test_refusals_before_any_download(hub, monkeypatch):
    with pytest.raises(ValueError, match="is gated on the Hub: accept its license"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B")
    with pytest.raises(ValueError, match=r"has no safetensors weights \(only pytorch_model\.bin.*never done here\)"):
        pg.check_hub_size("old/pickles")
    with pytest.raises(ValueError, match=r"2\.5 GB of weights; this playground loads at most 2\.0 GB"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")
    monkeypatch.setenv("AXW_HUB_MODEL_BYTES", "3000000000")  # a bigger machine raises the cap
    pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")
    monkeypatch.setenv("AXW_HUB_MODEL_BYTES", "lots")
    with pytest.raises(ValueError, match="AXW_HUB_MODEL_BYTES"):
        pg.check_hub_size("meta-llama/Llama-3.2-1B-Instruct")


# --- through the picker's own event, on a local 'Hub' ---

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """The part of the Hub's HTTP API huggingface_hub's `model_info`, `hf_hub_download` and `snapshot_download`
    use, serving repos from folders on localhost. Safetensors files are sent slowly, in pieces, as a big file over
    a real network would be; `gated` repos answer as the Hub does to a visitor without access; `listed_sizes`
    replace what the repo's listing says a file weighs."""

    def __init__(self, repos: dict, gated=(), listed_sizes=None, seconds: float = 2.0):
        import hashlib
        import json
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        files = {repo: {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
                 for repo, folder in repos.items()}
        self.requests = []
        hub = self

        def listing(repo):
            sizes = {name: len(data) for name, data in files[repo].items()} | (listed_sizes or {}).get(repo, {})
            return sizes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body: bytes, status=200, content_type="application/json", headers=None, slow=False):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                pieces = 20 if slow else 1
                step = max(1, -(-len(body) // pieces))
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    if slow:
                        time.sleep(seconds / pieces)

            def do_GET(self):
                hub.requests.append((self.command, self.path))
                path = self.path.split("?")[0]
                repo = next((r for r in files if path.startswith((f"/api/models/{r}/", f"/{r}/"))
                             or path == f"/api/models/{r}"), None)
                if repo is None:
                    return self.reply(b'{"error": "Repository not found"}', 404,
                                      headers={"X-Error-Code": "RepoNotFound"})
                if repo in gated:
                    return self.reply(b'{"error": "Access to this model is restricted"}', 403,
                                      headers={"X-Error-Code": "GatedRepo",
                                               "X-Error-Message": f"Access to model {repo} is restricted."})
                sizes = listing(repo)
                if path.startswith(f"/api/models/{repo}/tree/"):
                    tree = [dict(type="file", path=name, size=sizes[name], oid=hashlib.sha1(data).hexdigest())
                            for name, data in files[repo].items()]
                    return self.reply(json.dumps(tree).encode())
                if path.startswith(f"/api/models/{repo}"):
                    siblings = [dict(rfilename=name, size=size) for name, size in sizes.items()]
                    return self.reply(json.dumps(dict(id=repo, sha=COMMIT, siblings=siblings)).encode())
                name = path[len(f"/{repo}/resolve/"):].split("/", 1)[-1]
                if path.startswith(f"/{repo}/resolve/") and name in files[repo]:
                    data = files[repo][name]
                    etag = f'"{hashlib.sha1(data).hexdigest()}"'
                    return self.reply(data, content_type="application/octet-stream",
                                      headers={"X-Repo-Commit": COMMIT, "ETag": etag},
                                      slow=name.endswith(".safetensors"))
                return self.reply(b'{"error": "Entry not found"}', 404, headers={"X-Error-Code": "EntryNotFound"})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetched(self, repo: str, name: str) -> bool:
        return ("GET", f"/{repo}/resolve/{COMMIT}/{name}") in self.requests

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def point_huggingface_hub_at(hub: LocalHub, monkeypatch, cache):
    """huggingface_hub online, at `hub`, with an empty cache of its own and 4 KB download chunks (so a small file
    still moves its bars often)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)


def picker_events(url: str, demo, name: str) -> list[dict]:
    """What the page receives when a visitor picks `name` in the model box: the messages of the picker's event,
    sent through gradio's queue as the browser sends them."""
    import json

    import httpx

    fn_index = next(i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == "picked")
    session = f"picker-{name.replace('/', '-')}"
    with httpx.Client(base_url=url, timeout=60) as http:
        joined = http.post("gradio_api/queue/join", json=dict(
            data=[name], fn_index=fn_index, session_hash=session, event_data=None,
            trigger_id=demo.fns[fn_index].targets[0][0]))
        joined.raise_for_status()
        messages = []
        with http.stream("GET", "gradio_api/queue/data", params=dict(session_hash=session)) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:]))
                    if messages[-1].get("msg") == "process_completed":
                        break
    return messages


@pytest.fixture
def local_hub(served_app, monkeypatch, tmp_path):
    """A local 'Hub' serving a copy of the served app's model as `someone/tiny-hub`."""
    hub = LocalHub({"someone/tiny-hub": served_app[1].playground.model_name})
    point_huggingface_hub_at(hub, monkeypatch, tmp_path / "hub-cache")
    yield hub
    hub.close()
    served_app[1].playground.models.cache.pop("someone/tiny-hub", None)


def test_a_hub_download_shows_its_progress_on_the_page(served_app, local_hub):
    """Picking a Hub model downloads it with huggingface_hub's snapshot_download (from a local Hub over HTTP):
    the page gets progress events as the bytes arrive, and then the model's info."""
    from axw import AutoregressiveWrapper

    url, demo = served_app
    messages = picker_events(url, demo, "someone/tiny-hub")
    done = messages[-1]
    assert done["msg"] == "process_completed" and done["success"], done
    assert "parameters, vocabulary" in done["output"]["data"][0]
    # the weights went over HTTP, after the size check asked for the repo's files
    assert any(path.startswith("/api/models/someone/tiny-hub") for _, path in local_hub.requests)
    assert local_hub.fetched("someone/tiny-hub", "model.safetensors")
    progress = [unit for m in messages if m.get("msg") == "progress" for unit in m["progress_data"]]
    fractions = [unit["progress"] for unit in progress if unit["progress"] is not None]
    # several updates while the weights arrived, moving forward, with the bytes in the text
    assert len(set(fractions)) >= 3 and fractions == sorted(fractions), progress
    assert 0 < fractions[0] < 1 and any("MB" in (unit["desc"] or "") for unit in progress)
    served = served_app[1].playground.models.get("someone/tiny-hub")
    # in the dtype the app serves Hub models in on this CPU (bf16 where it computes bf16)
    local = AutoregressiveWrapper.from_pretrained(served_app[1].playground.model_name,
                                                  dtype=next(served.parameters()).dtype)
    assert all(torch.equal(a, b) for a, b in zip(served.state_dict().values(), local.state_dict().values()))


# --- models the playground cannot serve: a message each, never a server error ---


def transformers_repo(folder, tokenizer_from, **changes):
    """A Hub folder of a tiny Llama in transformers' layout (config.json, model.safetensors) with the served app's
    tokenizer, its config.json changed by `changes`."""
    import json
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=32, intermediate_size=40,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                  max_position_embeddings=64, rms_norm_eps=1e-6) | changes
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(64, 32)}, folder / "model.safetensors")
    shutil.copy(Path(tokenizer_from) / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture
def bad_hub(served_app, monkeypatch, tmp_path):
    import shutil

    served = served_app[1].playground.model_name
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    shutil.copy(Path(served) / "config.json", pickles / "config.json")
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    repos = {
        "someone/falcon": transformers_repo(tmp_path / "falcon", served, model_type="falcon"),
        "someone/dynamic-rope": transformers_repo(tmp_path / "rope", served, rope_parameters=dict(
            rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
        "someone/too-big": served,
        "someone/gated": served,
        "someone/pickles": pickles,
    }
    hub = LocalHub(repos, gated={"someone/gated"},
                   listed_sizes={"someone/too-big": {"model.safetensors": 3_000_000_000}})
    point_huggingface_hub_at(hub, monkeypatch, tmp_path / "hub-cache")
    yield hub
    hub.close()


BAD_MODELS = {
    "someone/falcon": r"cannot import model_type 'falcon': axw imports 'gpt2', 'llama', .*'gemma3_text'",
    "someone/dynamic-rope": r"llama checkpoint uses rope scaling of type 'dynamic', which axw does not implement; "
                            r"supported: 'default', 'linear', 'llama3', 'yarn'",
    "someone/too-big": r"has 3\.0 GB of weights; this playground loads at most 2\.0 GB",
    "someone/gated": r"is gated on the Hub: accept its license on its page, then give this server a token",
    "someone/pickles": r"has no safetensors weights \(only pytorch_model\.bin, which would have to be unpickled: "
                       r"never done here\)",
}


@pytest.mark.parametrize("name", BAD_MODELS)
def test_a_model_that_cannot_be_served_is_refused_with_a_message_before_its_weights(served_app, bad_hub, name):
    """Picked in the model box: the page gets the reason (for an unknown family, with the families axw imports),
    as a gr.Error, before any weights download; and the app goes on serving."""
    import re

    from axw.families import FAMILIES

    url, demo = served_app
    done = picker_events(url, demo, name)[-1]
    assert done["msg"] == "process_completed" and not done["success"]
    error = done["output"]["error"]
    assert error and re.search(BAD_MODELS[name], error), error  # a gr.Error's message, not gradio's generic one
    if name == "someone/falcon":
        assert all(repr(family) in error for family in FAMILIES)
    assert not any(bad_hub.fetched(name, f) for f in ("model.safetensors", "pytorch_model.bin"))
    assert name not in demo.playground.models.cache
    assert picker_events(url, demo, demo.playground.model_name)[-1]["success"]


def test_a_chat_template_that_raises_is_a_message(served_app, monkeypatch, tmp_path):
    """A template's own raise_exception (Mistral's [INST] wants a user turn first) reaches the visitor as its
    message, through the generate API of the served app, for a model downloaded from a local Hub."""
    gradio_client = pytest.importorskip("gradio_client")
    from gradio_client.exceptions import AppError
    from test_chat_template import bpe_tokenizer, write_family

    hub = LocalHub({"someone/inst-chat": write_family(tmp_path / "inst", "inst", bpe_tokenizer())})
    point_huggingface_hub_at(hub, monkeypatch, tmp_path / "hub-cache")
    url, demo = served_app
    client = gradio_client.Client(url, verbose=False)
    try:
        with pytest.raises(AppError, match=r"^Conversation roles must alternate user/assistant/user/assistant/\.\.\.$"):
            client.predict(prompt="Hello?", model="someone/inst-chat", chat=True, system="Be brief.",
                           max_new_tokens=4, api_name="/generate")
        text, *_ = client.predict(prompt="Hello?", model="someone/inst-chat", chat=True, max_new_tokens=4,
                                  api_name="/generate")  # without the system turn the template has no complaint
        assert isinstance(text, str)
    finally:
        hub.close()
        demo.playground.models.cache.pop("someone/inst-chat", None)
