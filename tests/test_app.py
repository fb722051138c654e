"""The playground served on localhost and driven with gradio_client, checked
against the library called directly (generate, a full forward pass)."""

import ast
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import playground as pg  # noqa: E402

PROMPT = "ROMEO:"


def reference_ids(model, prompt, n, **kwargs) -> tuple[list, list]:
    """(prompt ids, the ids `model.generate` continues it with, up to EOS)."""
    ids = torch.tensor(model.tokenizer.encode(prompt).ids)
    out = model.generate(ids, n, eos_token=model.eos_token_id, **kwargs)[ids.numel():].tolist()
    if model.eos_token_id in out:
        out = out[: out.index(model.eos_token_id)]
    return ids.tolist(), out


def reference(model, prompt, n, **kwargs) -> str:
    return model.tokenizer.decode(reference_ids(model, prompt, n, **kwargs)[1])


def test_named_endpoints_are_generate_sample_tree_and_finetune(client):
    # the streaming UI handlers must not take these names
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/generate", "/sample_tree", "/finetune"}


def test_the_queue_does_not_summarise_its_events_at_each_one(served_app, client, monkeypatch):
    """gradio's queue builds a pandas table of the events it served at the end of each, for a monitoring page the
    app does not open; the app turns that off (GRADIO_ANALYTICS_CACHE_FREQUENCY, set when app.py is imported)."""
    from gradio.queueing import Queue

    tables = []
    monkeypatch.setattr(Queue, "_get_df", staticmethod(lambda records: tables.append(len(records))))
    for _ in range(2):
        client.predict(prompt="JULIET:", max_new_tokens=4, api_name="/generate")
    assert served_app[1]._queue.event_analytics  # the events are still recorded
    assert tables == []


def test_a_sessions_config_is_the_same_with_the_constructors_signatures_given_once(served_app):
    """app.fixed_signatures gives gradio's component constructors their signature once: a new session's copy of
    every block's config equals the one computed with inspect reading each signature afresh, and so does a
    component built as an event's update."""
    import inspect

    import gradio as gr
    from gradio.state_holder import SessionState

    import app as app_module

    demo = served_app[1]
    assert app_module.fixed_signatures(demo) == []  # given at build: nothing left to give
    inits = {vars(cls)["__init__"] for block in demo.blocks.values() for cls in type(block).__mro__
             if cls.__module__.startswith("gradio.") and "__init__" in vars(cls)}
    assert inits and all(inspect.signature(fn) is fn.__signature__ for fn in inits)
    cached = SessionState(demo).config_values
    update = gr.Slider(maximum=9, value=3).get_config()
    saved = {fn: fn.__dict__.pop("__signature__") for fn in list(inits)}
    for fn in list(saved):
        inner = getattr(fn, "__wrapped__", None)
        if inner is not None and "__signature__" in inner.__dict__:
            saved[inner] = inner.__dict__.pop("__signature__")
    try:
        assert cached == SessionState(demo).config_values
        assert update == gr.Slider(maximum=9, value=3).get_config()
    finally:
        for fn, signature in saved.items():
            fn.__signature__ = signature


def test_generate_at_temperature_0_is_greedy_and_the_defaults_work(client, models):
    text, tokens, trace = client.predict(prompt=PROMPT, temperature=0.0, api_name="/generate")
    prompt_ids, new_ids = reference_ids(models[0], PROMPT, 64, temperature=0.0)
    assert text == models[0].tokenizer.decode(new_ids)
    assert "".join(t for t, _ in tokens) == text and len(tokens) == len(new_ids)
    # greedy colours each token by its probability under the model: recompute them with one forward pass
    ids = prompt_ids + new_ids
    with torch.no_grad():
        probs = models[0].net(torch.tensor([ids[:-1]]))[0].softmax(-1)
    expected = [probs[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids))]
    assert [p for _, p in tokens] == pytest.approx(expected, abs=1e-5)
    # and the defaults alone work (the documented call)
    default = client.predict(prompt=PROMPT, api_name="/generate")
    assert isinstance(default[0], str) and default[0] == reference(
        models[0], PROMPT, 64, temperature=0.8, filter_logits_fn=[], seed=0)


@pytest.mark.parametrize("strategy, api_kwargs, generate_kwargs", [
    ("sampling", dict(temperature=0.9, top_k=50, top_p=0.8, min_p=0.02, seed=7),
     dict(temperature=0.9, filter_logits_fn=["top_k", "top_p", "min_p"],
          filter_kwargs=[dict(k=50), dict(thres=0.8), dict(min_p=0.02)], seed=7)),
    ("sampling", dict(temperature=1.2, top_a=0.5, repetition_penalty=1.3, no_repeat_ngram_size=2, seed=3),
     dict(temperature=1.2, filter_logits_fn=["top_a"], filter_kwargs=[dict(min_p_ratio=0.5)], seed=3,
          repetition_penalty=1.3, no_repeat_ngram_size=2)),
    ("beam search", dict(beams=3, length_penalty=0.5), dict(beams=3, length_penalty=0.5)),
    ("contrastive search", dict(penalty_alpha=0.6, contrastive_k=5), dict(penalty_alpha=0.6, contrastive_k=5)),
    ("contrastive decoding", dict(temperature=0.0, cd_alpha=0.2, cd_beta=0.7),
     dict(temperature=0.0, contrastive_decode_kwargs=dict(alpha=0.2, beta=0.7), filter_logits_fn=[])),
])
def test_each_strategy_equals_the_library(client, models, strategy, api_kwargs, generate_kwargs):
    text, tokens, trace = client.predict(prompt=PROMPT, strategy=strategy, max_new_tokens=24, api_name="/generate",
                                         **api_kwargs)
    if strategy == "contrastive decoding":
        generate_kwargs["amateur_model"] = models[1]
    assert text == reference(models[0], PROMPT, 24, **generate_kwargs)
    assert "".join(t for t, _ in tokens) == text and len(trace) >= 1
    if strategy == "beam search":
        assert {"beams", "beam_scores", "beam_finished"} <= set(trace[-1])
        assert models[0].tokenizer.decode(trace[-1]["beams"][0]).startswith(text)
    if strategy == "contrastive search":
        c = trace[0]["contrastive"]
        assert len(c["tokens"]) == 5
        # the chosen token has the best score (1 - alpha) confidence - alpha penalty
        scores = [0.4 * conf - 0.6 * pen for conf, pen in zip(c["confidence"], c["degeneration_penalty"])]
        assert c["score"] == pytest.approx(scores, abs=1e-5)
        assert trace[0]["chosen"] == c["tokens"][max(range(5), key=scores.__getitem__)]


def test_trace_shows_each_filter_and_matches_a_full_recompute(client, models):
    text, tokens, trace = client.predict(prompt=PROMPT, temperature=0.7, top_k=5, top_p=0.5, seed=1,
                                         max_new_tokens=6, api_name="/generate")
    model = models[0]
    ids = model.tokenizer.encode(PROMPT).ids
    for row in trace:
        assert row["stages"] == ["model", "top_k", "top_p", "temperature"]
        probs = model.net(torch.tensor([ids]))[0, -1].softmax(-1)
        assert row["candidates"] == probs.topk(10).indices.tolist()
        assert row["probs"]["model"] == pytest.approx(probs[row["candidates"]].tolist(), abs=1e-5)
        assert row["kept"]["top_k"] == 5 and all(p == 0 for p in row["probs"]["top_k"][5:])
        # the chart draws exactly the trace: each stage's probability and the cut ones
        table = pg.step_table(row, model.tokenizer)
        for rank, record in enumerate(table):
            assert record["id"] == row["candidates"][rank]
            for stage in row["stages"]:
                assert record["probs"][stage] == row["probs"][stage][rank]
                assert record["cut"][stage] == (row["probs"][stage][rank] == 0)
        assert sum(r["chosen"] for r in table) == (row["chosen"] in row["candidates"])
        chart = pg.step_html(row, model.tokenizer)
        assert chart.count("axw-cut") >= sum(r["cut"]["top_k"] for r in table)
        ids.append(row["chosen"])
    assert model.tokenizer.decode(ids[len(model.tokenizer.encode(PROMPT).ids):]).startswith(text)


def test_generate_streams_token_by_token(client, models):
    args = dict(model_name="", prompt=PROMPT, strategy="sampling", max_new_tokens=12, temperature=0.0,
                use_k=False, k=40, use_p=False, p=0.9, use_min=False, minp=0.1, use_a=False, a=0.2, rep=1.0, ngram=0,
                seed=0, beams=4, length_penalty=0.0, alpha=0.6, ck=4, amateur="", cd_alpha=0.1, cd_beta=0.5,
                use_ft=False)
    job = client.submit(*args.values(), api_name="/generate_stream")
    final = job.result()
    updates = job.outputs()
    _, new_ids = reference_ids(models[0], PROMPT, 12, temperature=0.0)
    text = models[0].tokenizer.decode(new_ids)
    strip = lambda h: "".join(part.split(">", 1)[-1] for part in h.split("<"))  # noqa: E731
    # the first token is shown before the rest arrive
    first, last = strip(updates[0][0]), strip(final[0])
    assert len(updates) >= 2 and last.startswith(first) and len(first) < len(last)
    html = pg.tokens_html(PROMPT, pg.token_pieces(models[0].tokenizer, models[0].tokenizer.encode(text).ids),
                          [None] * 99)
    assert strip(final[0]) == strip(html)


def test_compare_runs_every_strategy_like_generate(served_app, client):
    app = served_app[1].playground
    columns = __import__("app").COMPARE
    *_, cols = app._compare("", PROMPT, 5, 16, "", [label for label, *_ in columns], session=None)
    boxes = [PROMPT + "".join(c["run"].pieces) for c in cols]
    assert len(boxes) == 5
    for box, (label, strategy, values) in zip(boxes, columns):
        filters = values.get("filters", {})
        api = dict(temperature=values.get("temperature", 0.8), top_p=filters.get("top_p", 1.0),
                   beams=values.get("beams", 4), penalty_alpha=values.get("penalty_alpha", 0.6))
        text, *_ = client.predict(prompt=PROMPT, strategy=strategy, seed=5, max_new_tokens=16, api_name="/generate",
                                  **api)
        assert box == PROMPT + text, label


def test_finetune_trains_a_private_copy(served_app, client, models):
    app = served_app[1].playground
    base = app.models.get(app.model_name)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    text = "To be, or not to be, that is the question. " * 40
    report = client.predict(text=text, steps=8, learning_rate=3e-3, batch_size=4, context_length=32,
                            api_name="/finetune")
    assert report["steps"] == 8 and len(report["losses"]) == 8 and not report["stopped"]
    # the shared model is untouched; the visitor's copy learned the text
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    tuned = [run.model for run in app.sessions.items.values()][-1]
    ids = torch.tensor([base.tokenizer.encode(text).ids[:65]])
    with torch.no_grad():
        assert tuned(ids).item() < base(ids).item()
    text_ft, *_ = client.predict(prompt=PROMPT, temperature=0.0, use_finetuned=True, max_new_tokens=16,
                                 api_name="/generate")
    assert text_ft == reference(tuned, PROMPT, 16, temperature=0.0)
    # another visitor (a new client session) has no fine-tuned model
    other = gradio_client.Client(served_app[0], verbose=False)
    with pytest.raises(Exception, match="no fine-tuned model"):
        other.predict(prompt=PROMPT, use_finetuned=True, api_name="/generate")


def test_stop_ends_a_finetune_early(served_app, models):
    app = served_app[1].playground
    request = SimpleNamespace(session_hash="stopper")
    updates = app.finetune_ui("", "abc def ghi " * 200, None, 400, 1e-3, 2, 16, 0.15, 0, request,
                              progress=lambda *a, **k: None)
    next(updates)
    app.stop_ui(request)
    *_, (frame, status) = updates
    assert "stopped" in status and 0 < len(frame) < 400


BAD_GENERATE = [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="x" * (pg.MAX_PROMPT_CHARS + 1)), "at most"),
    (dict(prompt=PROMPT, max_new_tokens=pg.MAX_NEW_TOKENS + 1), "max new tokens"),
    (dict(prompt=PROMPT, temperature=-1.0), "temperature"),
    (dict(prompt=PROMPT, top_k=10**6), "top-k"),
    (dict(prompt=PROMPT, strategy="telepathy"), "strategy"),
    (dict(prompt=PROMPT, strategy="beam search", beams=pg.MAX_BEAMS + 1), "beams"),
    (dict(prompt=PROMPT, model="nobody/no-such-model"), "cannot load"),
    (dict(prompt=PROMPT, model="/etc"), "not a Hub repo id"),
    (dict(prompt=PROMPT, strategy="contrastive decoding", amateur="nobody/none"), "cannot load"),
]


BAD_SETTINGS = [  # the decoding settings added after the first version, each with the prompt
    (dict(typical_p=0.0), "typical-p must be"), (dict(top_h=2.0), "top-H must be"),
    (dict(top_n_sigma=-1.0), "top-n-sigma must be"), (dict(epsilon_cutoff=0.9), "epsilon cutoff must be"),
    (dict(eta_cutoff=-0.1), "eta cutoff must be"), (dict(sampler_order="random"), "sampler order must be"),
    (dict(xtc_probability=1.5), "XTC probability must be"), (dict(xtc_threshold=-0.1), "XTC threshold must be"),
    (dict(mirostat_tau=100.0), "mirostat tau must be"), (dict(mirostat_eta=0.0), "mirostat eta must be"),
    (dict(dynatemp_range=9.0), "dynamic temperature range must be"),
    (dict(dynatemp_exponent=0.0), "dynamic temperature exponent must be"),
    (dict(dry_multiplier=-1.0), "DRY multiplier must be"), (dict(dry_base=0.5), "DRY base must be"),
    (dict(dry_allowed_length=0), "DRY allowed length must be"),
    (dict(strategy="beam search", stochastic="yes"), "stochastic must be"),
    (dict(strategy="speculative decoding", drafter="oracle"), "drafter must be"),
    (dict(strategy="speculative decoding", num_assistant_tokens=0), "draft tokens per round must be"),
    (dict(strategy="speculative decoding", num_assistant_tokens=pg.MAX_DRAFT_TOKENS + 1), "draft tokens"),
    (dict(strategy="speculative decoding", num_assistant_tokens_schedule="fast"), "draft schedule must be"),
    (dict(strategy="speculative decoding", drafter="amateur", amateur="nobody/none"), "cannot load"),
    (dict(force_step=-1), "force_step must be"), (dict(force_step=65), "force_step must be"),
    (dict(force_step=2, force_token=10**6), "force_token"), (dict(force_step=2, force_token=-3), "force_token"),
    (dict(force_step=1.5), "force_step must be"),
]
BAD_GENERATE += [(dict(prompt=PROMPT, **kwargs), message) for kwargs, message in BAD_SETTINGS]


@pytest.mark.parametrize("kwargs, message", BAD_GENERATE)
def test_bad_input_is_refused_before_any_compute(served_app, client, monkeypatch, kwargs, message):
    app = served_app[1].playground
    calls = []
    model = app.models.get(app.model_name)
    monkeypatch.setattr(model, "stream", lambda *a, **k: calls.append(1))
    with pytest.raises(Exception, match=message):
        client.predict(api_name="/generate", **kwargs)
    assert calls == []


def test_bad_finetune_input_and_uploads(client, tmp_path):
    for kwargs, message in [(dict(text=""), "no training text"), (dict(text="abc " * 500, steps=10**5), "steps"),
                            (dict(text="short"), "tokens long"), (dict(text="abc " * 500, batch_size=0), "batch")]:
        with pytest.raises(Exception, match=message):
            client.predict(api_name="/finetune", **kwargs)
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    big = tmp_path / "big.txt"
    big.write_text("a" * (pg.MAX_UPLOAD_BYTES + 1))
    exe = tmp_path / "model.bin"
    exe.write_bytes(b"abc")
    for path, message in [(binary, "binary"), (big, "at most"), (exe, ".txt")]:
        with pytest.raises(ValueError, match=message):
            pg.read_upload(path)
    good = tmp_path / "good.txt"
    good.write_text("héllo", encoding="utf-8")
    assert pg.read_upload(good) == "héllo"


def test_server_keeps_answering_after_errors(client, models):
    with pytest.raises(Exception):
        client.predict(prompt="", api_name="/generate")
    text, *_ = client.predict(prompt="JULIET:", temperature=0.0, max_new_tokens=8, api_name="/generate")
    assert text == reference(models[0], "JULIET:", 8, temperature=0.0)


def test_push_never_repeats_the_token(served_app):
    app = served_app[1].playground
    request = SimpleNamespace(session_hash="pusher")
    updates = app.finetune_ui("", "abc def ghi " * 200, None, 2, 1e-3, 2, 16, 0.0, 0, request,
                              progress=lambda *a, **k: None)
    *_, = updates
    token = "hf_secretTOKEN123456"
    with pytest.raises(Exception) as info:
        app.push_ui("someone/model", token, True, request)
    assert "push failed" in str(info.value) and token not in str(info.value)
    zipped = app.download_ui(request).value["path"]
    import zipfile

    names = zipfile.ZipFile(zipped).namelist()
    assert {"axw-finetuned/config.json", "axw-finetuned/model.safetensors", "axw-finetuned/tokenizer.json"} <= set(
        names)


def test_token_pieces_keep_characters_whole(models):
    tokenizer = models[0].tokenizer
    text = "héllo wörld, ça va? 日本"
    ids = tokenizer.encode(text).ids
    pieces = pg.token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    html = pg.tokens_html("<b>", ["<i>", "\n"], [0.5, None])
    assert "<b>" not in html and "&lt;i&gt;" in html and "<br>" in html


def test_model_cache_is_bounded(monkeypatch):
    cache = pg.ModelCache([], size=2)
    loads = []
    monkeypatch.setattr(cache, "_load", lambda name: loads.append(name) or SimpleNamespace(name=name))
    for name in ["a/x", "b/x", "a/x", "c/x", "b/x"]:
        assert cache.get(name).name == name
    assert loads == ["a/x", "b/x", "c/x", "b/x"] and list(cache.cache) == ["c/x", "b/x"]


def test_library_imports_without_gradio():
    code = "import sys; sys.modules['gradio'] = None; import axw, axw.train; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(text=st.text(min_size=1, max_size=40))
def test_token_pieces_rebuild_any_text(models, text):
    tokenizer = models[0].tokenizer
    ids = tokenizer.encode(text).ids
    pieces = pg.token_pieces(tokenizer, ids)
    # every token gets a piece; together they are the decoded text, characters never split
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)


def test_picker_loads_a_transformers_gpt2_folder(models, tmp_path):
    """A transformers family checkpoint goes through the same loader as the Hub ids in the picker; greedy text
    equals transformers' own greedy generate."""
    pytest.importorskip("axw.convert")
    transformers = pytest.importorskip("transformers")
    tokenizer = models[0].tokenizer
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                     n_head=4, eos_token_id=0, bos_token_id=0)
    peer = transformers.GPT2LMHeadModel(config).eval()
    peer.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    cache = pg.ModelCache([str(tmp_path)])
    model = cache.get(str(tmp_path))
    config = pg.Settings(temperature=0.0, max_new_tokens=12).config(model)
    *_, (pieces, *_rest) = pg.stream_text(model, PROMPT, 12, config)
    ids = torch.tensor([tokenizer.encode(PROMPT).ids])
    out = peer.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)[0, ids.shape[1]:]
    out = out.tolist()
    assert "".join(pieces) == tokenizer.decode(out[: out.index(0)] if 0 in out else out)


def test_zerogpu_wraps_generation_and_finetuning(served_app):
    """With the `spaces` package present (ZeroGPU), the compute handlers run under spaces.GPU."""
    app = served_app[1].playground
    code = f"""
import sys, types
calls = []
spaces = types.ModuleType("spaces")
spaces.GPU = lambda duration=60: (lambda fn: calls.append((fn.__name__, duration)) or fn)
sys.modules["spaces"] = spaces
import app
app.build({app.model_name!r}, {app.amateur_name!r})
print(sorted(set(calls)))
"""
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    calls = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert ("generate_api", 60) in calls and ("generate_ui", 60) in calls and ("compare_ui", 60) in calls
    assert ("finetune_api", 300) in calls and ("finetune_ui", 300) in calls


def test_throttle_keeps_the_first_and_the_last():
    import app

    assert list(app.throttle(range(1000), interval=60)) == [0, 999]
    assert list(app.throttle(range(5), interval=-1)) == [0, 1, 2, 3, 4]
    assert list(app.throttle([], interval=60)) == []


def test_the_model_comes_from_the_environment_or_the_flag(tmp_path):
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    missing = str(tmp_path / "nowhere")
    env = dict(__import__("os").environ, AXW_MODEL=missing)
    for args, kwargs in (([], dict(env=env)), (["--model", missing], {})):
        out = subprocess.run([sys.executable, "app.py", *args], capture_output=True, text=True, cwd=root, timeout=120,
                             **kwargs)
        assert out.returncode != 0 and f"the model folder {missing} is missing" in out.stderr
    assert pg.DEFAULT_MODEL == "assets/models/shakespeare"
