import os
import sys
from pathlib import Path

import pytest
import torch

from axw import AutoregressiveWrapper, Decoder, TransformerWrapper

# tests never reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
# app.py and playground.py live at the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_net(num_tokens=97, max_seq_len=64, rotary=False, dim=32, depth=2, heads=4, **decoder_kwargs):
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        use_abs_pos_emb=not rotary,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads, dim_head=dim // heads, rotary_pos_emb=rotary,
                            **decoder_kwargs),
    )


def tiny_model(seed=0, wrapper_kwargs=None, **kwargs):
    torch.manual_seed(seed)
    return AutoregressiveWrapper(tiny_net(**kwargs), **(wrapper_kwargs or {}))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on a shared two-core machine the small models' steps are many times
    faster without a second thread to wait on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model():
    return tiny_model().eval()


@pytest.fixture
def rotary_model():
    return tiny_model(rotary=True).eval()


# --- the playground, served on localhost (tests/test_app.py, tests/test_browser.py) ---


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def playground_models(folder):
    """An expert and an amateur with random weights sharing a small byte-level
    BPE tokenizer, saved as Hub folders: the app loads them as it would the
    bundled models."""
    from pathlib import Path

    from axw.data import eos_id, train_tokenizer

    text = (Path(__file__).resolve().parents[1] / "assets/data/tinyshakespeare.txt").read_text()[:40000]
    tokenizer = train_tokenizer(text, 320)
    paths, models = [], []
    for name, seed, depth in (("expert", 0, 2), ("amateur", 1, 1)):
        model = tiny_model(seed=seed, num_tokens=tokenizer.get_vocab_size(), max_seq_len=128, rotary=True,
                           depth=depth).eval()
        model.tokenizer, model.eos_token_id = tokenizer, eos_id(tokenizer)
        paths.append(str(model.save_pretrained(Path(folder) / name)))
        models.append(model)
    # the amateur drafts for the test app, and beside it lies an n-gram datastore of the expert's own greedy
    # continuations of lines of the text, as the bundled draft's folder holds one
    from axw import NgramDatastore

    ids = torch.tensor(tokenizer.encode(text[:8000]).ids)
    prompts = ids[:len(ids) // 8 * 8].view(-1, 8)[::4][:32]
    continued = models[0].generate(prompts, 48, temperature=0.0)
    NgramDatastore.build(continued, tokenizer.get_vocab_size(), max_n=3, min_n=2,
                         starts=[8] * len(continued)).save_pretrained(paths[1])
    return paths


@pytest.fixture(scope="session")
def served_app(tmp_path_factory):
    """(url, demo) of the playground on a free localhost port, on models built here."""
    pytest.importorskip("gradio")
    import app

    expert, amateur = playground_models(tmp_path_factory.mktemp("models"))
    # every test request comes from this machine: the per-visitor share (tested on its own app) is off here
    demo = app.build(expert, amateur, visitor_budget_s=0)
    port = free_port()
    app.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


@pytest.fixture(scope="module")
def app(served_app):
    """The served app's `Playground`."""
    return served_app[1].playground


@pytest.fixture(scope="module")
def models(app):
    """The served app's expert and amateur (the test app's drafter), loaded again: the reference side."""
    from axw import AutoregressiveWrapper

    return (AutoregressiveWrapper.from_pretrained(app.model_name),
            AutoregressiveWrapper.from_pretrained(app.amateur_name))


@pytest.fixture(scope="module")
def client(served_app):
    """A gradio_client of the served app."""
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(served_app[0], verbose=False)
