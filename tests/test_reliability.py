"""The playground under visitors who share it: isolation between sessions,
hostile input, safe loading, the Hub token, and recovery from faults. The app is
served on localhost (tests/conftest.py) and driven with gradio_client; expected
texts come from the library called directly."""

import gc
import html
import json
import logging
import math
import re
import time
import weakref
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")
from gradio_client.exceptions import AppError  # noqa: E402

import playground as pg  # noqa: E402
from axw import AutoregressiveWrapper  # noqa: E402

PROMPT = "ROMEO:"
SERVER_ERROR = "upstream Gradio app has raised an exception"  # what a client sees for an uncaught exception
TIMEOUT_S = 60  # every request here ends on its own well within this


@pytest.fixture(scope="module")
def url(served_app):
    return served_app[0]


@pytest.fixture(scope="module")
def expert(app):
    """The app's model loaded again: the reference side."""
    return AutoregressiveWrapper.from_pretrained(app.model_name)


def new_client(url):
    return gradio_client.Client(url, verbose=False)


def generate(client, **kwargs):
    return client.submit(api_name="/generate", **kwargs).result(timeout=TIMEOUT_S)


def reference(model, prompt, n, **kwargs) -> str:
    ids = torch.tensor(model.tokenizer.encode(prompt).ids)
    out = model.generate(ids, n, eos_token=model.eos_token_id, **kwargs)[ids.numel():].tolist()
    if model.eos_token_id in out:
        out = out[: out.index(model.eos_token_id)]
    return model.tokenizer.decode(out)


def clean_error(e: BaseException) -> bool:
    """A gr.Error reaches the client as an AppError carrying our message; anything
    uncaught reaches it as gradio's generic server error."""
    return isinstance(e, AppError) and bool(str(e).strip()) and SERVER_ERROR not in str(e)


SAMPLED = dict(temperature=0.9, top_p=0.9, seed=3, max_new_tokens=24)


# --- isolation ---


def test_fixed_seed_text_is_the_same_before_during_and_after_another_finetune(app, url, expert):
    reader, trainer = new_client(url), new_client(url)
    expected = reference(expert, PROMPT, 24, temperature=0.9, filter_logits_fn=["top_p"],
                         filter_kwargs=[dict(thres=0.9)], seed=3)
    before, *_ = generate(reader, prompt=PROMPT, **SAMPLED)
    job = trainer.submit(text="To be, or not to be, that is the question. " * 60, steps=pg.MAX_FINETUNE_STEPS,
                         learning_rate=1e-2, batch_size=32, context_length=128, api_name="/finetune")
    deadline = time.monotonic() + TIMEOUT_S
    while (run := app.sessions.get(trainer.session_hash)) is None or not run.history:
        assert time.monotonic() < deadline and not job.done(), "the fine-tune did not start"
        time.sleep(0.05)
    during, step_before = [], len(run.history)
    for _ in range(3):
        assert run.thread.is_alive()
        during.append(generate(reader, prompt=PROMPT, **SAMPLED)[0])
        assert run.thread.is_alive()  # so the fine-tune was training while this text was generated
    run.stop.set()
    assert len(run.history) > step_before  # and it was advancing, not stuck
    report = job.result(timeout=TIMEOUT_S)
    assert report["stopped"] and report["steps"] > 0
    after, *_ = generate(reader, prompt=PROMPT, **SAMPLED)
    assert before == expected and during == [expected] * 3 and after == expected
    # and the trainer's own copy did change: its greedy text differs from the shared model's
    tuned, *_ = generate(trainer, prompt=PROMPT, temperature=0.0, max_new_tokens=24, use_finetuned=True)
    assert tuned == reference(run.model, PROMPT, 24, temperature=0.0)
    assert tuned != reference(expert, PROMPT, 24, temperature=0.0)


def test_a_closed_session_frees_its_finetuned_copy(app, url):
    """Closing the browser tab ends gradio's heartbeat stream; the unload handler drops the copy and nothing
    else holds it."""
    client = new_client(url)
    client.submit(text="abc def ghi " * 200, steps=2, batch_size=2, context_length=16,
                  api_name="/finetune").result(timeout=TIMEOUT_S)
    copy_ref = weakref.ref(app.sessions.get(client.session_hash).model)
    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{client.session_hash}", timeout=10) as beat:
        next(beat.iter_lines())  # the tab is open
    deadline = time.monotonic() + 20
    while app.sessions.get(client.session_hash) is not None:
        assert time.monotonic() < deadline, "closing the session did not drop its fine-tuned copy"
        time.sleep(0.1)
    gc.collect()
    assert copy_ref() is None


def test_a_finetune_is_used_only_once_it_has_finished(app, url, monkeypatch, tmp_path):
    """/finetune registers the run before its thread starts, and the thread trains the copy in place: from
    registration until training ends, the copy is refused everywhere it could be used; once done, it is served."""
    import threading
    import zipfile

    import gradio as gr

    client = new_client(url)
    request = SimpleNamespace(session_hash=client.session_hash, headers={}, client=None)
    base = app.models.get(app.model_name)
    run = pg.FineTune(base, *pg.finetune_setup(base, "abc def ghi " * 200, 3, 1e-2, 2, 16, 0.0))

    tree = pg.Tree()  # a run from the fine-tuned copy, open in the step view
    tree.add(pg.Run(pg.Settings(use_finetuned=True), PROMPT, [1], rows=[{"step": 0}], session=client.session_hash))

    def refused():
        with pytest.raises(AppError, match="still running") as info:
            generate(client, prompt=PROMPT, use_finetuned=True, max_new_tokens=4)
        assert clean_error(info.value)
        for use in (lambda: app.download_ui(request), lambda: list(app.generate_tuned_ui(PROMPT, request)),
                    lambda: app.push_ui("someone/model", "hf_token", True, request),
                    lambda: app.step_ui(tree, 0, request)):
            with pytest.raises(gr.Error, match="still running"):
                use()

    app.sessions.put(client.session_hash, run)  # registered, its thread not yet started
    refused()
    started, release, real = threading.Event(), threading.Event(), pg.finetune.train

    def held(*args, **kwargs):  # training that waits until the test lets it go on
        started.set()
        release.wait(TIMEOUT_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(pg.finetune, "train", held)
    progress = run.run(poll=0.01)
    next(progress)
    assert started.wait(TIMEOUT_S)
    refused()  # training
    release.set()
    for _ in progress:
        pass
    assert run.result.step == 3 and run.error is None
    text, *_ = generate(client, prompt=PROMPT, use_finetuned=True, temperature=0.0, max_new_tokens=8)
    assert text == reference(run.model, PROMPT, 8, temperature=0.0)
    with zipfile.ZipFile(app.download_ui(request).value["path"]) as z:
        z.extractall(tmp_path)
    saved = AutoregressiveWrapper.from_pretrained(tmp_path / "axw-finetuned").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_fair_share_refuses_a_visitor_over_budget_until_it_ages_out():
    clock = FakeClock()
    share = pg.FairShare(budget_s=10, window_s=60, clock=clock)

    def use(key, seconds):
        share.check(key)
        with share.charge(key):
            clock.now += seconds

    use("a", 4)  # ends at 1004
    clock.now += 6
    use("a", 5)  # ends at 1015: 9 s used
    use("b", 30)  # another visitor's use is their own; ends at 1045
    use("a", 2)  # 9 s used before it, so allowed; now 11 s; ends at 1047
    assert share.spent("a") == pytest.approx(11)
    with pytest.raises(ValueError, match=r"used this machine for 11 s in the last 60 s.*try again in 17 s"):
        share.check("a")  # the 4 s span ending at 1004 leaves at 1064, bringing it to 7 s: 17 s from 1047
    with pytest.raises(ValueError, match="try again"):
        share.check("b")
    clock.now = 1064
    share.check("a")
    assert share.spent("a") == pytest.approx(7)
    clock.now = 1200  # everything aged out; the record of both visitors is forgotten
    share.check("a")
    share.check("b")
    assert share.spent("a") == share.spent("b") == 0 and share.spans == {}


def test_fair_share_counts_failed_requests_and_can_be_off():
    clock = FakeClock()
    share = pg.FairShare(budget_s=1, window_s=60, clock=clock)
    with pytest.raises(RuntimeError), share.charge("a"):
        clock.now += 2
        raise RuntimeError("the request failed after using the machine")
    with pytest.raises(ValueError):
        share.check("a")
    off = pg.FairShare(budget_s=0, clock=clock)
    for _ in range(100):
        off.check("a")
        with off.charge("a"):
            clock.now += 10
    assert off.spans == {}


def test_visitor_is_the_address_or_the_trusted_proxy_header():
    """Each proxy appends the address it saw to X-Forwarded-For; what is left of the trusted proxies' entries is
    the client's own writing."""
    import app as app_module

    request = SimpleNamespace(headers={"x-forwarded-for": "203.0.113.5, 10.0.0.1"}, client=SimpleNamespace(host="10.0.0.2"))
    assert app_module.visitor(request, trusted_proxies=2) == "203.0.113.5"  # the outer proxy saw the client
    assert app_module.visitor(request, trusted_proxies=1) == "10.0.0.1"  # one proxy: what it saw, not the entry before
    assert app_module.visitor(request, trusted_proxies=0) == "10.0.0.2"  # a header anyone can send is ignored
    bare = SimpleNamespace(headers={}, client=SimpleNamespace(host="198.51.100.7"))
    assert app_module.visitor(bare, trusted_proxies=1) == "198.51.100.7"
    assert app_module.visitor(None, trusted_proxies=1) == ""


@pytest.mark.parametrize("address, key", [
    ("203.0.113.5", "203.0.113.5"), ("203.0.113.5:51234", "203.0.113.5"), ("::ffff:203.0.113.5", "203.0.113.5"),
    ("2001:db8:7:9::1", "2001:db8:7:9::/64"), ("2001:DB8:7:9:abcd:ef01:2345:6789", "2001:db8:7:9::/64"),
    ("[2001:db8:7:9::2]:443", "2001:db8:7:9::/64"), ("[2001:db8:7:9::3]", "2001:db8:7:9::/64"),
    ("fe80::1%eth0", "fe80::/64"), ("2001:db8:7:a::1", "2001:db8:7:a::/64"), ("testclient", "testclient"),
    ("unknown", "unknown")])
def test_an_ipv6_visitor_counts_by_its_64(address, key):
    """Every address of one /64 is one visitor (a subscriber line gets a /64 and may use any address in it); an
    IPv4 address, mapped or with a port, is itself; what is not an address stays as it is."""
    import app as app_module

    assert pg.address_key(address) == key
    assert app_module.visitor(SimpleNamespace(headers={}, client=SimpleNamespace(host=address)), 0) == key
    assert app_module.visitor(SimpleNamespace(headers={"x-forwarded-for": f"1.2.3.4, {address}"},
                                              client=SimpleNamespace(host="10.0.0.9")), 1) == key


def test_a_forged_x_forwarded_for_cannot_make_a_new_visitor():
    import app as app_module

    def who(header, hops, host="10.0.0.9"):
        return app_module.visitor(SimpleNamespace(headers={"x-forwarded-for": header},
                                                  client=SimpleNamespace(host=host)), trusted_proxies=hops)

    # whatever the client writes before the trusted proxies' entries, it is the same visitor
    for forged in ("", "1.2.3.4", "1.2.3.4, 5.6.7.8", " , ,", "unknown", "x" * 100):
        prefix = f"{forged}, " if forged else ""
        assert who(prefix + "203.0.113.5", 1) == "203.0.113.5"
        assert who(prefix + "203.0.113.5, 10.0.0.1", 2) == "203.0.113.5"
    # fewer entries than trusted proxies (the request skipped one): entries on the left may be the client's, so
    # the visitor is the one the nearest proxy appended
    assert who("198.51.100.7", 2) == "198.51.100.7"
    assert who("1.2.3.4, 198.51.100.7", 3) == who("5.6.7.8, 198.51.100.7", 3) == "198.51.100.7"
    # a proxy may add its entry as a header line of its own: the lines are one list, in order
    from starlette.datastructures import Headers

    lines = Headers(raw=[(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"203.0.113.5")])
    assert app_module.visitor(SimpleNamespace(headers=lines, client=None), trusted_proxies=1) == "203.0.113.5"


@pytest.mark.parametrize("env, hops", [({"AXW_TRUST_PROXY": "1"}, 1), ({"AXW_TRUST_PROXY": "0", "SPACE_ID": "a/b"}, 0),
                                       ({"SPACE_ID": "a/b"}, 1), ({}, 0), ({"AXW_TRUSTED_PROXIES": "2"}, 2),
                                       ({"AXW_TRUSTED_PROXIES": "0", "SPACE_ID": "a/b"}, 0),
                                       ({"AXW_TRUSTED_PROXIES": "3", "AXW_TRUST_PROXY": "1"}, 3)])
def test_trusted_proxies_come_from_the_setting_the_old_switch_or_a_space(env, hops):
    assert pg.trusted_proxies(env=env) == hops
    assert pg.trusted_proxies(2, env=env) == 2  # an argument (Playground's, build's) wins
    assert pg.trusted_proxies(trust_proxy=True, env=env) == 1 and pg.trusted_proxies(trust_proxy=False, env=env) == 0


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_bad_trusted_proxies_setting_is_refused(value):
    with pytest.raises(ValueError, match="AXW_TRUSTED_PROXIES"):
        pg.trusted_proxies(env={"AXW_TRUSTED_PROXIES": value})
    with pytest.raises(ValueError, match="trusted proxies"):
        pg.trusted_proxies(-1, env={})


def test_a_visitor_over_their_share_is_refused_and_others_are_served(tmp_path_factory):
    import app as app_module
    from conftest import free_port, playground_models

    expert, amateur = playground_models(tmp_path_factory.mktemp("share-models"))
    demo = app_module.build(expert, amateur, visitor_budget_s=0.3, trust_proxy=True)
    port = free_port()
    app_module.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        heavy = gradio_client.Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.5"})
        refused = None
        for _ in range(200):
            try:
                generate(heavy, prompt=PROMPT, max_new_tokens=64, temperature=0.0)
            except AppError as e:
                refused = str(e)
                break
        assert refused is not None and "the share each visitor gets" in refused and "try again in" in refused
        forwards = []
        net = demo.playground.models.get(expert).net.attn_layers  # every forward pass runs through the layers
        real = net.forward
        net.forward = lambda *a, **k: forwards.append(1) or real(*a, **k)
        with pytest.raises(AppError, match="try again"):  # still over: refused before any compute
            generate(heavy, prompt=PROMPT, max_new_tokens=8)
        assert forwards == []
        other = gradio_client.Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.7"})
        text, _, _ = generate(other, prompt=PROMPT, max_new_tokens=8, temperature=0.0)
        model = AutoregressiveWrapper.from_pretrained(expert)
        assert text == reference(model, PROMPT, 8, temperature=0.0) and forwards
    finally:
        demo.close()


def same_client(i):
    return "203.0.113.5"


def rotating_ipv6(i):
    return f"2001:db8:7:9:{i:x}::{i + 1:x}"  # a new address of the same /64 each request


@pytest.mark.parametrize("setting, entries, client", [
    ({"AXW_TRUST_PROXY": "1"}, lambda forged, client: f"{forged}, {client}", same_client),
    ({"AXW_TRUSTED_PROXIES": "2"}, lambda forged, client: f"{forged}, {client}, 10.0.0.1", same_client),
    ({"AXW_TRUST_PROXY": "1"}, lambda forged, client: f"{forged}, {client}", rotating_ipv6)])
def test_a_visitor_forging_x_forwarded_for_is_still_refused(tmp_path_factory, monkeypatch, setting, entries, client):
    """A flooding client writes a new first X-Forwarded-For entry on every request; the trusted proxies append the
    same addresses after it each time (or, for a client on IPv6, a new address of its /64 each time). It is still
    one visitor, refused once over its share."""
    import app as app_module
    from conftest import free_port, playground_models

    for name in ("AXW_TRUST_PROXY", "AXW_TRUSTED_PROXIES", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    expert, amateur = playground_models(tmp_path_factory.mktemp("forged-models"))
    demo = app_module.build(expert, amateur, visitor_budget_s=0.3)
    port = free_port()
    app_module.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        refused, served = None, 0
        for i in range(60):
            heavy = gradio_client.Client(url, verbose=False,
                                         headers={"X-Forwarded-For": entries(f"198.18.{i // 250}.{i % 250}",
                                                                             client(i))})
            try:
                generate(heavy, prompt=PROMPT, max_new_tokens=64, temperature=0.0)
                served += 1
            except AppError as e:
                refused = str(e)
                break
        assert refused is not None and "the share each visitor gets" in refused, f"{served} requests served"
        other = gradio_client.Client(url, verbose=False,
                                     headers={"X-Forwarded-For": entries("203.0.113.5", "198.51.100.7")})
        text, _, _ = generate(other, prompt=PROMPT, max_new_tokens=8, temperature=0.0)
        assert text == reference(AutoregressiveWrapper.from_pretrained(expert), PROMPT, 8, temperature=0.0)
    finally:
        demo.close()


def test_malloc_arenas_are_capped_on_glibc():
    import platform

    assert pg.limit_malloc_arenas(0) is False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert pg.limit_malloc_arenas(4) is True


def test_sessions_are_bounded_in_count_and_idle_time(app):
    base = app.models.get(app.model_name)
    ids = torch.tensor(base.tokenizer.encode("abc def ghi " * 50).ids)
    config = pg.finetune_setup(base, "abc def ghi " * 50, 400, 1e-3, 2, 16, 0.0)[1]
    runs = [pg.FineTune(base, ids, config) for _ in range(3)]
    refs = [weakref.ref(r.model) for r in runs]
    running = runs[0].run(poll=0.01)
    next(running)  # training in its thread
    sessions = pg.Sessions(size=2, idle_s=3600)
    sessions.put("a", runs[0])
    sessions.put("b", runs[1])
    sessions.get("a")  # used: "b" is now the least recent
    sessions.put("c", runs[2])
    assert set(sessions.items) == {"a", "c"}
    sessions.drop("a")  # a running fine-tune is stopped, then freed
    runs[0].thread.join(timeout=TIMEOUT_S)
    assert not runs[0].thread.is_alive() and runs[0].result.stopped
    idle = pg.Sessions(size=8, idle_s=0.0)
    idle.put("x", runs[2])
    idle.put("y", runs[1])
    assert "x" not in idle.items
    del runs, running, sessions, idle
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


# --- hostile input ---

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)  # JSON cannot carry lone surrogates
any_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60)
prompts = st.one_of(
    any_text,
    st.sampled_from(["", " \n\t", "\x00", "\x1b[31mred\x1b[0m", "\u202e\u200b\ufeff", "x" * (pg.MAX_PROMPT_CHARS + 1),
                     "y" * 300_000, "ab" * (pg.MAX_PROMPT_CHARS // 2), "🦜" * 500]),
    st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=3))
wrong = st.one_of(st.none(), st.booleans(), unicode_text, st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def numbers(lo, hi):
    """Values in range, at the edges, just outside, far outside, and of the wrong type."""
    edges = [lo, hi, lo - 1, hi + 1, -1e30, 1e30, 2**63, 0.5]
    return st.one_of(st.integers(math.ceil(lo), math.floor(hi)), st.floats(lo, hi), st.sampled_from(edges), wrong)


hostile = st.fixed_dictionaries({}, optional=dict(
    strategy=st.one_of(st.sampled_from(pg.STRATEGIES), unicode_text, wrong),
    max_new_tokens=st.one_of(st.integers(-3, 12), st.sampled_from([pg.MAX_NEW_TOKENS + 1, 10**12, 2.5]), wrong),
    temperature=numbers(0.0, 5.0), top_k=numbers(0, 400), top_p=numbers(0.0, 1.0), min_p=numbers(0.0, 1.0),
    top_a=numbers(0.0, 1.0), repetition_penalty=numbers(0.5, 3.0), no_repeat_ngram_size=numbers(0, 10),
    seed=numbers(0, 2**31 - 1), beams=numbers(2, pg.MAX_BEAMS), length_penalty=numbers(-2.0, 2.0),
    penalty_alpha=numbers(0.0, 1.0), contrastive_k=numbers(1, pg.MAX_CONTRASTIVE_K),
    cd_alpha=numbers(0.0, 1.0), cd_beta=numbers(0.0, 5.0),
    amateur=st.one_of(st.sampled_from(["", "/etc", "../../etc/passwd", "~/.cache", "assets/models/shakespeare-tiny",
                                       "nobody/none", "a" * 300]), wrong),
    model=st.one_of(st.sampled_from(["", "/etc", ".", "..", "/proc/self", "tests", "nobody/none", "-x/y",
                                     "a/b/c", "file:///etc/passwd"]), wrong),
    use_finetuned=st.one_of(st.booleans(), wrong)))
# in-range settings too, so that strange prompts also reach the model
sane = st.fixed_dictionaries(dict(strategy=st.sampled_from(pg.STRATEGIES), max_new_tokens=st.integers(1, 12)),
                             optional=dict(temperature=st.floats(0.0, 5.0), top_k=st.integers(0, 300),
                                           top_p=st.floats(0.01, 1.0), min_p=st.floats(0.0, 1.0),
                                           top_a=st.floats(0.0, 1.0), repetition_penalty=st.floats(0.5, 3.0),
                                           no_repeat_ngram_size=st.integers(0, 10), seed=st.integers(0, 2**31 - 1),
                                           beams=st.integers(2, pg.MAX_BEAMS), length_penalty=st.floats(-2, 2),
                                           penalty_alpha=st.floats(0.0, 1.0),
                                           contrastive_k=st.integers(1, pg.MAX_CONTRASTIVE_K),
                                           cd_alpha=st.floats(0.001, 1.0), cd_beta=st.floats(0.0, 5.0)))
OUTCOMES = []  # "answered" / "refused", per example: both must have happened


@pytest.fixture(scope="module")
def visitor(url):
    return new_client(url)


@pytest.fixture
def forwards(app, monkeypatch):
    """A record of every forward pass of the served expert and amateur: refusals must come before any."""
    calls = []
    for name in (app.model_name, app.amateur_name):
        net = app.models.get(name).net.attn_layers  # every forward pass runs through the layers
        monkeypatch.setattr(net, "forward", lambda *a, _real=net.forward, **k: calls.append(1) or _real(*a, **k))
    return calls


def check_answer(kwargs, out):
    """A successful answer is well formed: text, [token, probability] pairs that spell it, a trace."""
    text, tokens, trace = out
    assert isinstance(text, str) and "".join(t for t, _ in tokens) == text, kwargs
    assert all(p is None or (math.isfinite(p) and 0.0 <= p <= 1.0) for _, p in tokens), kwargs
    for row in trace:
        for stage in row.get("stages", []):
            assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in row["probs"][stage]), kwargs


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.one_of(st.tuples(prompts, hostile), st.tuples(any_text, sane)))
@example(case=("0", dict(model=True)))  # once a crash: a model named by a boolean
@example(case=(PROMPT, dict(strategy="contrastive decoding", amateur=[1])))
def test_hostile_generate_requests_answer_or_refuse_cleanly(app, visitor, forwards, case):
    prompt, kwargs = case
    model = app.models.get(app.model_name)
    started, computed = time.monotonic(), len(forwards)
    try:
        out = visitor.submit(prompt=prompt, api_name="/generate", **kwargs).result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - which kind it is, is the point
        assert clean_error(e), (prompt, kwargs, repr(e))
        assert len(forwards) == computed, ("refused after compute", prompt, kwargs, str(e))
        OUTCOMES.append("refused")
    else:
        check_answer(kwargs, out)
        assert len(forwards) > computed
        OUTCOMES.append("answered")
    assert time.monotonic() - started < TIMEOUT_S
    assert model is app.models.get(app.model_name)


# the what-if branch (/branch and the page's /branch_stream), the controls (/generate_stream) and share links
BRANCHES = []  # "answered" / "refused" per /branch example


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompt=st.one_of(st.just(PROMPT), prompts), step=numbers(0, 11), token=numbers(0, 319),
       config=st.one_of(hostile, sane, st.none(), wrong, st.dictionaries(unicode_text, st.integers(), max_size=2)))
@example(prompt=PROMPT, step=3, token=5, config=dict(max_new_tokens=4))
@example(prompt=PROMPT, step=2, token=5, config=dict(strategy="beam search", max_new_tokens=6))
@example(prompt=PROMPT, step=2, token=7, config=dict(strategy="beam search", max_new_tokens=6))  # not a candidate
def test_hostile_branch_requests_answer_or_refuse_cleanly(app, visitor, forwards, prompt, step, token, config):
    """/branch checks everything before any compute; only a step past where the text ended (EOS) is found by
    computing the text up to it."""
    computed = len(forwards)
    try:
        out = visitor.submit(prompt, step, token, config, api_name="/branch").result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        assert clean_error(e), (prompt, step, token, config, repr(e))
        assert len(forwards) == computed or "the text ended" in str(e), ("refused after compute", str(e))
        BRANCHES.append("refused")
    else:
        check_answer(config, out)
        text, tokens, trace = out
        assert trace[int(step)]["forced"] and trace[int(step)]["chosen"] == int(token)
        BRANCHES.append("answered")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(step=st.one_of(numbers(0, 8), st.integers(-5, 40)), token=numbers(0, 319), first=st.booleans())
def test_hostile_branch_stream_requests_answer_or_refuse_cleanly(url, expert, forwards, step, token, first):
    """The page's own branch event, called directly: refused before any compute without a text to branch, or
    for a step or token out of range."""
    client = new_client(url)
    if first:
        client.submit("", PROMPT, "sampling", 8, 0.0, False, 40, False, 0.9, False, 0.1, False, 0.2, 1.0, 0, 0, 4,
                      0.0, 0.6, 4, "", 0.1, 0.5, False, api_name="/generate_stream").result(timeout=TIMEOUT_S)
    computed = len(forwards)
    try:
        client.submit(step, token, api_name="/branch_stream").result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        assert clean_error(e), (step, token, repr(e))
        assert len(forwards) == computed, ("refused after compute", str(e))
    else:
        assert first and 0 <= step < 8 and 0 <= token < 320
        # the model runs, unless the forced token is the last (step 7 of 8) or ends the text (EOS)
        assert len(forwards) > computed or int(step) == 7 or int(token) == expert.eos_token_id


ui_values = st.fixed_dictionaries(dict(
    model=st.one_of(st.just(""), wrong), prompt=prompts, strategy=st.one_of(st.sampled_from(pg.STRATEGIES), wrong),
    max_new_tokens=st.one_of(st.integers(-1, 10), wrong), temperature=numbers(0.0, 2.0), use_k=st.one_of(st.booleans(), wrong),
    k=numbers(1, 200), use_p=st.booleans(), p=numbers(0.05, 1.0), use_min=st.booleans(), minp=numbers(0.0, 1.0),
    use_a=st.booleans(), a=numbers(0.0, 1.0), rep=numbers(0.5, 2.0), ngram=numbers(0, 6), seed=numbers(0, 2**31 - 1),
    beams=numbers(2, pg.MAX_BEAMS), length_penalty=numbers(-1.0, 2.0), alpha=numbers(0.0, 1.0),
    ck=numbers(1, pg.MAX_CONTRASTIVE_K), amateur=st.one_of(st.just(""), wrong), cd_alpha=numbers(0.01, 1.0),
    cd_beta=numbers(0.0, 2.0), use_ft=st.one_of(st.just(False), wrong)))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=ui_values)
def test_hostile_control_values_answer_or_refuse_cleanly(visitor, forwards, values):
    """What the Generate button sends (the controls, as /generate_stream takes them), hostile."""
    computed = len(forwards)
    try:
        visitor.submit(*values.values(), api_name="/generate_stream").result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        assert clean_error(e), (values, repr(e))
        assert len(forwards) == computed, ("refused after compute", values, str(e))
    else:
        assert len(forwards) > computed


@settings(max_examples=300, deadline=None)
@given(query=st.dictionaries(st.one_of(st.sampled_from(pg.settings.PARAMS + ["prompt"]), unicode_text),
                             st.one_of(unicode_text, st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?([eE][0-9]{1,3})?",
                                                                   fullmatch=True),
                                       st.sampled_from(["nan", "inf", "-inf", "true", "false", "1e999"])),
                             max_size=6))
def test_any_share_link_is_read_or_refused_with_a_message(query):
    try:
        prompt, settings = pg.from_query(query)
    except ValueError as e:
        assert str(e)
    else:
        if settings is not None:  # what a link fills in, /generate accepts
            assert settings.check() == settings and (prompt is None or pg.check_prompt(prompt))


# the settings added with the strategy views: every sampler, sampler order, stochastic beams, speculative
# decoding, the what-if branch; hostile, and in range so that they also reach the model
NEW = []  # "answered" / "refused" per example
new_hostile = st.fixed_dictionaries(dict(strategy=st.one_of(st.sampled_from(pg.STRATEGIES), wrong),
                                         max_new_tokens=st.integers(1, 8)), optional=dict(
    temperature=numbers(0.0, 5.0), top_k=numbers(0, 400), top_p=numbers(0.0, 1.0),
    typical_p=numbers(0.0, 1.0), epsilon_cutoff=numbers(0.0, 0.5), eta_cutoff=numbers(0.0, 0.5),
    top_h=numbers(0.0, 1.0), top_n_sigma=numbers(0.0, 10.0),
    sampler_order=st.one_of(st.sampled_from(pg.SAMPLER_ORDERS), unicode_text, wrong),
    xtc_probability=numbers(0.0, 1.0), xtc_threshold=numbers(0.0, 1.0), dynatemp_range=numbers(0.0, 5.0),
    dynatemp_exponent=numbers(0.01, 10.0), mirostat_tau=numbers(0.0, 20.0), mirostat_eta=numbers(0.001, 1.0),
    dry_multiplier=numbers(0.0, 5.0), dry_base=numbers(1.0, 4.0), dry_allowed_length=numbers(1, 20),
    stochastic=st.one_of(st.booleans(), wrong), drafter=st.one_of(st.sampled_from(pg.DRAFTERS), unicode_text, wrong),
    num_assistant_tokens=numbers(1, pg.MAX_DRAFT_TOKENS),
    num_assistant_tokens_schedule=st.one_of(st.sampled_from(pg.ASSISTANT_SCHEDULES), wrong),
    force_step=st.one_of(st.integers(0, 9), numbers(0, 8)), force_token=numbers(0, 319),
    beams=st.integers(2, 4)))
new_sane = st.fixed_dictionaries(dict(strategy=st.sampled_from(pg.STRATEGIES), max_new_tokens=st.integers(1, 8)),
                                 optional=dict(
    temperature=st.floats(0.0, 5.0), top_k=st.integers(0, 300), typical_p=st.floats(0.01, 1.0),
    epsilon_cutoff=st.floats(0.0, 0.5), eta_cutoff=st.floats(0.0, 0.5), top_h=st.floats(0.0, 1.0),
    top_n_sigma=st.floats(0.0, 10.0), sampler_order=st.sampled_from(pg.SAMPLER_ORDERS),
    xtc_probability=st.floats(0.0, 1.0), xtc_threshold=st.floats(0.0, 1.0), dynatemp_range=st.floats(0.0, 5.0),
    dynatemp_exponent=st.floats(0.01, 10.0), mirostat_tau=st.floats(0.0, 20.0), mirostat_eta=st.floats(0.001, 1.0),
    dry_multiplier=st.floats(0.0, 5.0), dry_base=st.floats(1.0, 4.0), dry_allowed_length=st.integers(1, 20),
    stochastic=st.booleans(), drafter=st.sampled_from(pg.DRAFTERS),
    num_assistant_tokens=st.integers(1, pg.MAX_DRAFT_TOKENS),
    num_assistant_tokens_schedule=st.sampled_from(pg.ASSISTANT_SCHEDULES), force_step=st.integers(0, 8),
    force_token=st.integers(0, 319), beams=st.integers(2, 4)))


# 100 examples, so that the check below (each outcome at least 10 times) holds whatever the draws (70 gave 8 answers)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.one_of(st.tuples(st.just(PROMPT), new_hostile), st.tuples(any_text, new_sane)))
@example(case=(PROMPT, dict(strategy="speculative decoding", max_new_tokens=8, temperature=0.0, force_step=3)))
@example(case=(PROMPT, dict(strategy="beam search", max_new_tokens=4, stochastic=True, temperature=2.0,
                            top_n_sigma=0.5, sampler_order="temperature_first")))
def test_hostile_new_settings_answer_or_refuse_cleanly(app, visitor, forwards, case):
    """Every setting the strategy views added, through /generate: a well-formed answer, or a clean message before
    any forward pass (but a forced step past where the text ended, which only generating up to it finds)."""
    prompt, kwargs = case
    computed = len(forwards)
    try:
        out = visitor.submit(prompt=prompt, api_name="/generate", **kwargs).result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        assert clean_error(e), (prompt, kwargs, repr(e))
        assert len(forwards) == computed or "ended" in str(e), ("refused after compute", prompt, kwargs, str(e))
        NEW.append("refused")
    else:
        check_answer(kwargs, out)
        text, tokens, trace = out
        step = kwargs.get("force_step", 0)
        if step:
            token = int(kwargs.get("force_token", 0))
            assert trace[int(step) - 1]["forced"] and trace[int(step) - 1]["chosen"] == token
        NEW.append("answered")


def test_new_settings_were_both_answered_and_refused():
    if NEW:
        assert NEW.count("answered") >= 10 and NEW.count("refused") >= 10, NEW


page_controls = st.fixed_dictionaries(dict(
    prompt=st.one_of(st.just(PROMPT), prompts), strategy=st.one_of(st.sampled_from(pg.STRATEGIES), wrong),
    max_new_tokens=st.one_of(st.integers(-1, 6), wrong), sampler_order=st.one_of(st.sampled_from(pg.SAMPLER_ORDERS),
                                                                                 wrong),
    use_typical=st.one_of(st.booleans(), wrong), typical=numbers(0.05, 1.0), use_nsigma=st.booleans(),
    nsigma=numbers(0.1, 5.0), xtc_probability=numbers(0.0, 1.0), mirostat_tau=numbers(0.0, 10.0),
    dry_multiplier=numbers(0.0, 2.0), stochastic=st.one_of(st.booleans(), wrong),
    drafter=st.one_of(st.sampled_from(pg.DRAFTERS), wrong), num_assistant_tokens=numbers(1, pg.MAX_DRAFT_TOKENS),
    force_step=st.one_of(st.just(0), numbers(0, 6), st.none()), force_token=numbers(0, 319),
    chat=st.one_of(st.booleans(), wrong), system=st.one_of(unicode_text, wrong)))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=page_controls)
def test_hostile_page_controls_answer_or_refuse_cleanly(url, forwards, values):
    """The Generate button's own event with every control (/generate_controls), the later ones hostile: refused
    before any compute, or a text (and, with a forced step, its branch)."""
    from playground.views.settings import UI_INPUTS

    controls = dict(model="", prompt=PROMPT, strategy="sampling", max_new_tokens=4, temperature=0.8, use_k=False,
                    k=40, use_p=False, p=0.9, use_min=False, minp=0.1, use_a=False, a=0.2, repetition_penalty=1.0,
                    no_repeat_ngram_size=0, seed=0, beams=2, length_penalty=0.0, penalty_alpha=0.6, contrastive_k=4,
                    amateur="", cd_alpha=0.1, cd_beta=0.5, use_finetuned=False, sampler_order="filters_first",
                    use_typical=False, typical=0.9, use_eps=False, eps=0.0003, use_eta=False, eta=0.0003,
                    use_toph=False, toph=0.4, use_nsigma=False, nsigma=1.0, xtc_probability=0.0, xtc_threshold=0.1,
                    dynatemp_range=0.0, dynatemp_exponent=1.0, mirostat_tau=0.0, mirostat_eta=0.1,
                    dry_multiplier=0.0, dry_base=1.75, dry_allowed_length=2, stochastic=False, drafter="draft model",
                    num_assistant_tokens=3, num_assistant_tokens_schedule="constant", force_step=0, force_token=0,
                    chat=False, system="", use_pless=False, use_adaptive=False, adaptive=0.5, adaptive_p_decay=0.9,
                    dola_layers="high", choices="", regex="", json_schema="", grammar="")
    assert list(controls) == UI_INPUTS
    controls.update(values)
    client = new_client(url)
    computed = len(forwards)
    try:
        client.submit(*controls.values(), api_name="/generate_controls").result(timeout=TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        assert clean_error(e), (values, repr(e))
        # a forced step past the text's end, or a bad forced token, is found once the text is shown
        assert len(forwards) == computed or "step" in str(e) or "token" in str(e), ("after compute", values, str(e))
    else:
        assert len(forwards) > computed


def test_branches_were_both_answered_and_refused():
    if BRANCHES:
        assert BRANCHES.count("answered") >= 3 and BRANCHES.count("refused") >= 10, BRANCHES


def test_settings_that_ban_every_token_still_generate(app, visitor, expert):
    """alpha 1 keeps only the expert's likeliest token; no-repeat size 1 bans every token already in the text:
    the library then skips the ban for that step rather than leave nothing to choose (once a server error)."""
    ask = dict(prompt="ROMEO: ROMEO: ROMEO:", strategy="contrastive decoding", cd_alpha=1.0, no_repeat_ngram_size=1,
               temperature=0.8, max_new_tokens=64)
    text, *_ = generate(visitor, **ask)
    assert text == reference(expert, ask["prompt"], 64, temperature=0.8, no_repeat_ngram_size=1, seed=0,
                             amateur_model=AutoregressiveWrapper.from_pretrained(app.amateur_name),
                             contrastive_decode_kwargs=dict(alpha=1.0, beta=0.5), filter_logits_fn=[])


def test_an_uncaught_exception_is_not_a_clean_error(app, visitor, monkeypatch):
    """The check above can fail: a crash inside the model is seen as a server error, not a clean one."""
    model = app.models.get(app.model_name)
    monkeypatch.setattr(model, "stream", lambda *a, **k: 1 / 0)
    with pytest.raises(Exception) as info:
        visitor.predict(prompt=PROMPT, api_name="/generate")
    assert not clean_error(info.value)


def call_raw(url, data: list):
    """POST the arguments as JSON (which here may hold NaN and Infinity, as a hand-written client can send) and
    read the event stream; returns (event, data)."""
    with httpx.Client(timeout=TIMEOUT_S) as http:
        body = json.dumps({"data": data})  # allow_nan: NaN and Infinity literals go out as they are
        r = http.post(f"{url}gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        event = None
        with http.stream("GET", f"{url}gradio_api/call/generate/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    return event, line.split(":", 1)[1].strip()
    raise AssertionError("the event stream ended without an answer")


DEFAULTS = [PROMPT, "sampling", 8, 0.8, 0, 1.0, 0.0, 0.0, 1.0, 0, 0, 4, 0.0, 0.6, 4, "", 0.1, 0.5, "", False]


@pytest.mark.parametrize("index, name", [(3, "temperature"), (2, "max new tokens"), (5, "top-p"), (10, "seed"),
                                         (8, "repetition penalty")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(url, app, index, name, value):
    data = list(DEFAULTS)
    data[index] = value
    event, message = call_raw(url, data)
    assert event == "error" and f"{name} must be" in message and str(value) in message
    assert call_raw(url, DEFAULTS)[0] == "complete"  # and a good request still works


def test_finetune_caps_are_enforced_before_training(app, url, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(pg.finetune, "train", lambda *a, **k: calls.append(1))
    client = new_client(url)
    text = "abc def " * 300
    for kwargs in (dict(steps=pg.MAX_FINETUNE_STEPS + 1), dict(batch_size=pg.MAX_BATCH_SIZE + 1),
                   dict(context_length=10**6), dict(learning_rate=float("1e9")), dict(mask_prob=1.0),
                   dict(steps="5"), dict(steps=None), dict(text="x" * (pg.MAX_TRAIN_CHARS + 1)), dict(text=None),
                   dict(model="/etc")):
        with pytest.raises(Exception) as info:
            client.submit(**{"text": text, **kwargs}, api_name="/finetune").result(timeout=TIMEOUT_S)
        assert clean_error(info.value), (kwargs, info.value)
    request = SimpleNamespace(session_hash="uploader")
    for name, data in (("big.txt", b"a" * (pg.MAX_UPLOAD_BYTES + 1)), ("w.safetensors", b"abc " * 100),
                       ("bin.txt", b"\x00" * 100), ("latin1.txt", "é".encode("latin-1") * 100)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(Exception, match="upload|bytes|binary|UTF-8"):
            list(app.finetune_ui("", "", str(path), 5, 1e-3, 2, 16, 0.0, 0, request, progress=lambda *a, **k: None))
    assert calls == []
    # gradio itself refuses an upload over the cap before it reaches the handler
    with httpx.Client(timeout=TIMEOUT_S) as http:
        big = http.post(f"{url}gradio_api/upload", files={"files": ("big.txt", b"a" * (pg.MAX_UPLOAD_BYTES + 1))})
        small = http.post(f"{url}gradio_api/upload", files={"files": ("small.txt", b"abc")})
    assert big.status_code == 413 and small.status_code == 200


def test_the_server_keeps_answering_after_hostile_input(visitor, expert):
    if OUTCOMES:  # the property test ran first and saw both kinds of answer
        assert OUTCOMES.count("answered") >= 10 and OUTCOMES.count("refused") >= 10, OUTCOMES
    text, *_ = generate(visitor, prompt="JULIET:", temperature=0.0, max_new_tokens=8)
    assert text == reference(expert, "JULIET:", 8, temperature=0.0)


# --- safe loading and the Hub token ---


@pytest.mark.parametrize("name", ["/etc", "/proc/self", ".", "..", "../wt-main", "~", "C:\\models",
                                  "file:///etc/passwd"])
def test_a_visitor_cannot_load_server_paths(app, visitor, name):
    loads = []
    real = AutoregressiveWrapper.from_pretrained
    try:
        AutoregressiveWrapper.from_pretrained = classmethod(lambda cls, *a, **k: loads.append(a) or real(*a, **k))
        with pytest.raises(Exception, match="Hub repo id|local path") as info:
            generate(visitor, prompt=PROMPT, model=name)
    finally:
        AutoregressiveWrapper.from_pretrained = real
    assert clean_error(info.value) and loads == []


def test_the_hub_token_is_never_stored_logged_or_echoed(app, monkeypatch, caplog, capfd, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    token = "hf_SeCrEt0123456789abcdefXYZ"
    request = SimpleNamespace(session_hash="token-visitor")
    *_, = app.finetune_ui("", "abc def ghi " * 200, None, 2, 1e-3, 2, 16, 0.0, 0, request,
                          progress=lambda *a, **k: None)
    caplog.set_level(logging.DEBUG)
    seen = []
    # 1. the Hub is unreachable (HF_HUB_OFFLINE): the push fails
    with pytest.raises(Exception) as offline:
        app.push_ui("someone/model", f"  {token} ", True, request)
    seen.append(str(offline.value))
    # 2. a Hub error that quotes the request, token and all
    model = app.model("", True, request.session_hash)

    def echo(repo_id, token=None, **kwargs):
        raise RuntimeError(f"401 Unauthorized for {repo_id}: 'Authorization: Bearer {token}'")

    monkeypatch.setattr(model, "push_to_hub", echo)
    with pytest.raises(Exception) as echoed:
        app.push_ui("someone/model", token, False, request)
    seen.append(str(echoed.value))
    # 3. success: the token box is cleared and the answer does not repeat it
    used = []
    monkeypatch.setattr(model, "push_to_hub", lambda repo_id, token=None, **kw: used.append(token) or
                        f"https://huggingface.co/{repo_id}")
    seen.extend(app.push_ui("someone/model", token, True, request))
    assert used == [token]  # it was used, for that request
    out, err = capfd.readouterr()
    seen += [out, err, caplog.text]
    assert "push failed" in seen[0] and "push failed" in seen[1] and "401 Unauthorized" in seen[1]
    assert seen[3] == "" and all(token not in s for s in seen)
    import huggingface_hub

    assert huggingface_hub.get_token() is None and not (tmp_path / "hf" / "token").exists()
    assert token not in repr(vars(app)) and token not in repr(vars(app.sessions.get(request.session_hash)))


# --- faults ---


def test_an_unreachable_hub_or_missing_repo_leaves_the_model_serving(app, visitor, expert, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    serving = app.models.get(app.model_name)
    for name in ("nobody/no-such-model", "openai-community/definitely-not-here"):
        with pytest.raises(Exception, match="cannot load") as info:
            generate(visitor, prompt=PROMPT, model=name)
        assert clean_error(info.value) and ("unreachable" in str(info.value) or "not found" in str(info.value))
    text, *_ = generate(visitor, prompt=PROMPT, temperature=0.0, max_new_tokens=12)
    assert text == reference(expert, PROMPT, 12, temperature=0.0)
    assert app.models.get(app.model_name) is serving


def test_a_hub_model_over_the_size_cap_is_refused_before_download(monkeypatch):
    import huggingface_hub

    downloads, asked = [], []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def download(cls, *args, **kwargs):
        downloads.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(AutoregressiveWrapper, "from_pretrained", classmethod(download))
    files = [SimpleNamespace(rfilename=f"model-0000{i}.safetensors", size=900_000_000) for i in range(3)]
    files.append(SimpleNamespace(rfilename="pytorch_model.bin", size=10**10))  # never read: not counted

    class RepositoryNotFoundError(Exception):  # the Hub's own needs an HTTP response to build
        pass

    def model_info(self, repo_id, files_metadata=False):
        asked.append((repo_id, files_metadata))
        if repo_id == "nobody/none":
            raise RepositoryNotFoundError("404 Client Error: Repository Not Found\nmore detail")
        return SimpleNamespace(siblings=files if repo_id == "big/model" else files[:2])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    cache = pg.ModelCache([])
    with pytest.raises(ValueError, match=r"2\.7 GB of weights; this playground loads at most 2\.0 GB"):
        cache.get("big/model")
    with pytest.raises(ValueError, match="^cannot load 'nobody/none': RepositoryNotFoundError: 404 Client Error: "
                                         "Repository Not Found$"):
        cache.get("nobody/none")
    assert downloads == []
    with pytest.raises(ValueError, match="no network"):  # 1.8 GB passes the cap and goes on to the download
        cache.get("small/model")
    assert downloads == [("small/model",)] and asked[-1] == ("small/model", True)


def failing_once(real, calls: list, after_steps: int = 0):
    """`real` that raises CUDA's out-of-memory error once, after `after_steps` steps of its stream."""

    def stream(*args, **kwargs):
        steps = real(*args, **kwargs)
        if not calls:
            calls.append("oom")

            def broken():
                for i, step in enumerate(steps):
                    if i == after_steps:
                        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                    yield step

            return broken()
        calls.append("ok")
        return steps

    return stream


@pytest.mark.parametrize("endpoint", ["/generate", "/generate_stream"])
def test_out_of_memory_while_generating_is_reported_and_the_next_request_succeeds(app, url, expert, monkeypatch,
                                                                                   endpoint):
    model = app.models.get(app.model_name)
    calls, freed = [], []
    monkeypatch.setattr(model, "stream", failing_once(model.stream, calls, after_steps=3))
    monkeypatch.setattr(pg.models, "free_memory", lambda: freed.append(1))
    client = new_client(url)
    if endpoint == "/generate":
        run = lambda: generate(client, prompt=PROMPT, temperature=0.0, max_new_tokens=12)[0]  # noqa: E731
    else:
        args = ["", PROMPT, "sampling", 12, 0.0, False, 40, False, 0.9, False, 0.1, False, 0.2, 1.0, 0, 0, 4, 0.0,
                0.6, 4, "", 0.1, 0.5, False]
        run = lambda: client.submit(*args, api_name="/generate_stream").result(timeout=TIMEOUT_S)[0]  # noqa: E731
    with pytest.raises(Exception, match="out of GPU memory") as info:
        run()
    assert clean_error(info.value) and freed == [1]
    expected = reference(expert, PROMPT, 12, temperature=0.0)
    out = run()
    if endpoint == "/generate_stream":  # the page's HTML: compare its text
        out = html.unescape(re.sub(r"<br>", "\n", out))
        out = re.sub(r"<[^>]+>", "", out)[len(PROMPT):]
    assert calls == ["oom", "ok"] and out == expected


def test_out_of_memory_while_finetuning_is_reported_and_the_next_finetune_succeeds(app, url, monkeypatch):
    real, calls, freed = pg.finetune.train, [], []

    def train_failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(pg.finetune, "train", train_failing_once)
    monkeypatch.setattr(pg.models, "free_memory", lambda: freed.append(1))
    client = new_client(url)
    ask = dict(text="abc def ghi " * 200, steps=3, batch_size=2, context_length=16, api_name="/finetune")
    with pytest.raises(Exception, match="out of GPU memory") as info:
        client.submit(**ask).result(timeout=TIMEOUT_S)
    assert clean_error(info.value) and freed == [1]
    with pytest.raises(Exception, match="last fine-tune failed"):  # the half-trained copy is not served
        generate(client, prompt=PROMPT, use_finetuned=True)
    report = client.submit(**ask).result(timeout=TIMEOUT_S)
    assert report["steps"] == 3 and len(report["losses"]) == 3
    text, *_ = generate(client, prompt=PROMPT, use_finetuned=True, max_new_tokens=4)
    assert isinstance(text, str)
