"""The playground as an instrument: what-if branches, the per-step numbers, sampling a step, share links, and
probabilities past the context window. Served on localhost (tests/conftest.py: rotary test models with
max_seq_len 128) and checked against the library called directly or a full forward pass, which applies the
sliding window as a band mask past max_seq_len."""

import html
import math
import re
import urllib.parse
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import playground as pg  # noqa: E402
from axw import AutoregressiveWrapper  # noqa: E402

PROMPT = "ROMEO:"
LOG2 = math.log(2.0)


@pytest.fixture(scope="module")
def model(app):
    """The app's model loaded again: the reference side."""
    return AutoregressiveWrapper.from_pretrained(app.model_name)


def ids_of(model, prompt=PROMPT) -> list[int]:
    return model.tokenizer.encode(prompt).ids


def until_eos(model, ids: list[int]) -> list[int]:
    eos = model.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def continuation(model, prefix: list[int], n: int, **kwargs) -> list[int]:
    """`model.generate`'s new tokens after `prefix`, up to EOS: a fresh run, no cache handed in."""
    out = model.generate(torch.tensor(prefix), n, eos_token=model.eos_token_id, **kwargs)[len(prefix):].tolist()
    return until_eos(model, out)


@torch.no_grad()
def full_probs(model, seq: list[int]) -> torch.Tensor:
    """The model's next-token distribution at every position of `seq`, one forward pass over all of it (past
    max_seq_len the net applies its sliding window as a band mask)."""
    return model.net(torch.tensor([seq]))[0].float().softmax(-1)


@torch.no_grad()
def greedy_by_recompute(model, seq: list[int], n: int) -> list[int]:
    """Greedy decoding with a full forward pass per token: nothing cached, nothing reused."""
    seq = list(seq)
    out = []
    for _ in range(n):
        token = int(model.net(torch.tensor([seq]))[0, -1].argmax())
        if token == model.eos_token_id:
            break
        out.append(token)
        seq.append(token)
    return out


def text_of(html_text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", html_text.replace("<br>", "\n")))


SAMPLED = dict(temperature=0.9, top_k=20, seed=4)
SAMPLED_LIB = dict(temperature=0.9, filter_logits_fn=["top_k"], filter_kwargs=[dict(k=20)], seed=4)


# --- probabilities past the context window (beam search colours, /generate's tokens) ---


@pytest.mark.parametrize("api_kwargs", [dict(strategy="beam search", beams=3), dict(temperature=0.0)])
def test_token_probabilities_past_the_context_window_equal_a_full_recompute(client, model, api_kwargs):
    """Each token's probability is the model's probability of it given what it saw when it was chosen: with more
    new tokens than max_seq_len (128), a full forward with the same sliding window. (Beam search's colours were
    once recomputed from the last max_seq_len tokens only, which shifted them onto the wrong tokens.)"""
    n = 150
    assert n > model.max_seq_len
    text, tokens, _ = client.predict(prompt=PROMPT, max_new_tokens=n, api_name="/generate", **api_kwargs)
    prompt_ids = ids_of(model)
    if api_kwargs.get("strategy") == "beam search":
        new = until_eos(model, model.generate(torch.tensor(prompt_ids), n, beams=3,
                                              eos_token=model.eos_token_id)[len(prompt_ids):].tolist())
    else:
        new = continuation(model, prompt_ids, n, temperature=0.0)
    assert text == model.tokenizer.decode(new) and len(tokens) == len(new) > model.max_seq_len
    seq = prompt_ids + new
    probs = full_probs(model, seq[:-1])
    expected = [probs[i - 1, seq[i]].item() for i in range(len(prompt_ids), len(seq))]
    assert [p for _, p in tokens] == pytest.approx(expected, abs=1e-4)


# --- what-if branches ---


def test_branch_api_equals_generate_from_the_forced_prefix(client, model):
    n, step = 24, 5
    text, tokens, trace = client.predict(prompt=PROMPT, max_new_tokens=n, api_name="/generate", **SAMPLED)
    rank = next(r for r in (3, 4, 5) if trace[step]["candidates"][r] != trace[step]["chosen"])
    forced = trace[step]["candidates"][rank]
    # /branch is called positionally (an undocumented endpoint): the prompt, the step, the token, the settings
    b_text, b_tokens, b_trace = client.predict(PROMPT, step, forced, dict(max_new_tokens=n, **SAMPLED),
                                               api_name="/branch")
    prompt_ids = ids_of(model)
    root = continuation(model, prompt_ids, n, **SAMPLED_LIB)
    assert text == model.tokenizer.decode(root) and len(root) > step
    prefix = prompt_ids + root[:step]
    expected = root[:step] + [forced] + continuation(model, prefix + [forced], n - step - 1, **SAMPLED_LIB)
    assert b_text == model.tokenizer.decode(expected)
    assert "".join(t for t, _ in b_tokens) == b_text
    # the shared prefix keeps its trace; the forced step is marked, with the forced token's own probability
    assert b_trace[:step] == trace[:step]
    assert b_trace[step]["forced"] and b_trace[step]["chosen"] == forced
    assert b_trace[step]["chosen_prob"] == pytest.approx(trace[step]["probs"]["temperature"][rank])
    assert b_tokens[step][1] == pytest.approx(trace[step]["probs"]["temperature"][rank])
    assert [r["step"] for r in b_trace] == list(range(len(b_trace)))


def test_a_branch_past_the_context_window_continues_as_the_full_recompute(app, model):
    """Greedy, forced at step 140 of 170 (the prefix is past max_seq_len 128): the branch, from the parent's
    cache or from its prefix read again, equals greedy decoding by full recompute, token and probability."""
    n, step = 170, 140
    settings = pg.Settings(temperature=0.0, max_new_tokens=n)
    _, root, updates, cache = app.start(PROMPT, settings, "", keep_cache=True)
    for root in updates:
        pass
    assert len(root.new_ids) > step, "the text ended early"
    forced = root.rows[step]["candidates"][2]
    prefix = root.prompt_ids + root.new_ids[:step]
    expected = [forced] + greedy_by_recompute(model, prefix + [forced], n - step - 1)
    for kept in (cache, None):
        _, run, updates, _ = app.branch(root, step, forced, "", kept=kept)
        for run in updates:
            pass
        assert run.new_ids[:step] == root.new_ids[:step] and run.new_ids[step:] == expected
        seq = root.prompt_ids + run.new_ids
        probs = full_probs(model, seq[:-1])
        want = [probs[i - 1, seq[i]].item() for i in range(len(root.prompt_ids), len(seq))]
        assert run.probs == pytest.approx(want, abs=1e-4)


def test_a_branch_reuses_the_parents_kv_cache(app, model, monkeypatch):
    """Only the forced token and what follows run: the prefix is read from the parent's cache, not again."""
    settings = pg.Settings(max_new_tokens=30, **SAMPLED)
    session = "kv-reuse"
    request = SimpleNamespace(session_hash=session, headers={}, client=None)
    values = ["", PROMPT, "sampling", 30, 0.9, True, 20, False, 0.9, False, 0.1, False, 0.2, 1.0, 0, 4, 4, 0.0, 0.6,
              4, "", 0.1, 0.5, False]
    *_, shown = app.generate_ui(*values, None, request=request)
    tree, root = shown["tree"], shown["run"]
    assert root.settings == settings.check() and app.caches.get(session, root.id) is not None
    net = app.models.get(app.model_name).net
    read = []
    real = net.decode
    monkeypatch.setattr(net, "decode", lambda x, cache, *a, **k: read.append(x.shape[1]) or real(x, cache, *a, **k))
    step, forced = 12, root.rows[12]["candidates"][1]
    *_, shown = app.branch_ui(tree, step, forced, request=request)
    branch = shown["run"]
    assert read[0] == 1 and set(read) == {1}, read  # the forced token, then one token a step
    prefix = root.prompt_ids + root.new_ids[:step]
    assert branch.new_ids == root.new_ids[:step] + [forced] + continuation(model, prefix + [forced], 30 - step - 1,
                                                                        **SAMPLED_LIB)
    # the branch is now the open run, listed with where it left its parent; its step view is the forced step
    assert tree.current == branch.id and branch.parent == root.id and branch.step == step
    assert branch.taken == root.new_ids[step] and shown["selected"] == step
    assert f'data-step="{step}"' in shown["step"] and "you forced this token" in shown["step"]
    assert "axw-forced" in shown["output"] and "<td>" in shown["forks"]
    # a branch of the branch: reopened, forked again further on
    monkeypatch.setattr(net, "decode", real)
    step2 = 20
    forced2 = branch.rows[step2]["candidates"][2]
    *_, shown = app.branch_ui(tree, step2, forced2, request=request)
    nested = shown["run"]
    prefix2 = root.prompt_ids + branch.new_ids[:step2]
    assert nested.parent == branch.id and nested.new_ids == branch.new_ids[:step2] + [forced2] + continuation(
        model, prefix2 + [forced2], 30 - step2 - 1, **SAMPLED_LIB)
    assert app.open_ui(tree, root.id)["run"] is root and tree.current == root.id


def test_beam_search_branches_from_the_leading_beam(app, model):
    n, step = 20, 6
    settings = pg.Settings(strategy="beam search", beams=3, max_new_tokens=n)
    _, root, updates, _ = app.start(PROMPT, settings, "")
    for root in updates:
        pass
    leader = root.rows[step - 1]["beams"][0]  # the best beam going into the step: the candidates continue it
    forced = root.rows[step]["candidates"][1]

    def branch_and_beams(parent, step, leader, forced):
        """The branch the app runs, and what beam search gives from the leading beam with `forced` appended."""
        _, run, updates, _ = app.branch(parent, step, forced, "")
        for run in updates:
            pass
        prefix = root.prompt_ids + leader + [forced]
        rest = until_eos(model, model.generate(torch.tensor(prefix), n - step - 1, beams=3,
                                               eos_token=model.eos_token_id)[len(prefix):].tolist())
        return run, leader + [forced] + rest

    run, expected = branch_and_beams(root, step, leader, forced)
    assert run.new_ids == expected
    probs = full_probs(model, (root.prompt_ids + run.new_ids)[:-1])
    seq = root.prompt_ids + run.new_ids
    assert run.probs == pytest.approx([probs[i - 1, seq[i]].item() for i in range(len(root.prompt_ids), len(seq))],
                                      abs=1e-4)
    # a branch of the branch, past its forced step: it continues the branch's own leading beam
    step2 = step + 3
    leader2 = run.rows[step2 - 1]["beams"][0]
    assert leader2[: step + 1] == leader + [forced]
    forced2 = run.rows[step2]["candidates"][2]
    nested, expected = branch_and_beams(run, step2, leader2, forced2)
    assert nested.new_ids == expected


def test_branch_stream_endpoint_continues_the_sessions_own_text(served_app, model):
    """The page's branch event (as the benchmark calls it): in the same session as the Generate button."""
    visitor = gradio_client.Client(served_app[0], verbose=False)
    with pytest.raises(Exception, match="generate some text first"):
        visitor.predict(3, 5, api_name="/branch_stream")
    values = ["", PROMPT, "sampling", 16, 0.0, False, 40, False, 0.9, False, 0.1, False, 0.2, 1.0, 0, 0, 4, 0.0, 0.6,
              4, "", 0.1, 0.5, False]
    visitor.predict(*values, api_name="/generate_stream")
    root = continuation(model, ids_of(model), 16, temperature=0.0)
    out = visitor.predict(3, 7, api_name="/branch_stream")[0]
    expected = root[:3] + [7] + continuation(model, ids_of(model) + root[:3] + [7], 12, temperature=0.0)
    assert text_of(out) == PROMPT + model.tokenizer.decode(expected)


def test_forks_are_capped_and_kv_caches_bounded(model):
    tree = pg.Tree(size=3)
    root = tree.add(pg.Run(pg.Settings(), PROMPT, [1, 2], new_ids=[3, 4, 5], rows=[{}] * 3))
    for i in range(5):
        tree.add(pg.Run(pg.Settings(), PROMPT, [1, 2], parent=root.id, step=1, forced=i))
    assert [r.forced for r in tree.branches()] == [2, 3, 4] and tree.root is root
    assert tree.add(pg.Run(pg.Settings(), PROMPT, [9])).id == 0 and list(tree.runs) == [0]  # a new text, a new tree
    cache = model.net.new_cache()
    with torch.no_grad():
        model.net.decode(torch.tensor([[1, 2, 3, 4]]), cache)
    size = cache.memory_bytes()
    store = pg.KVStore(max_bytes=3 * size, per_session=2)
    for i in range(3):
        store.put("a", i, cache.fork())
    assert store.get("a", 0) is None and store.get("a", 2) is not None  # two per visitor, the oldest dropped
    store.put("b", 0, cache.fork())
    store.put("c", 0, cache.fork())
    assert store.total() <= 3 * size and store.get("a", 1) is None  # and the bytes of all, the least recent first
    store.drop("b")
    assert store.get("b", 0) is None


# --- the numbers per step: the timeline and the step view ---


def test_stage_numbers_and_the_timeline_equal_a_recompute(client, model):
    """After each stage, the tokens kept, the share of the model's probability they hold and the entropy, as
    the step view and the timeline show them, equal the same computed here from a full forward pass."""
    k, p, t = 12, 0.8, 0.7
    text, tokens, trace = client.predict(prompt=PROMPT, max_new_tokens=8, temperature=t, top_k=k, top_p=p, seed=2,
                                         api_name="/generate")
    seq = ids_of(model) + [r["chosen"] for r in trace]
    assert model.tokenizer.decode(seq[len(ids_of(model)):]).startswith(text)
    run = pg.Run(pg.Settings(temperature=t, top_k=k, top_p=p), PROMPT, ids_of(model),
                 new_ids=[r["chosen"] for r in trace], probs=[q for _, q in tokens], rows=trace)
    timeline = pg.timeline(run)
    for i, row in enumerate(trace):
        probs = full_probs(model, seq[: len(ids_of(model)) + i])[-1].double()
        entropy = lambda q: float(-(q[q > 0] * q[q > 0].log()).sum() / LOG2)  # noqa: E731
        top = probs.sort(descending=True).values[:k]
        share = top / top.sum()  # top-p reads what top-k left, renormalised
        nucleus = int((share.cumsum(0) - share < p).sum())  # the fewest whose sum reaches p
        kept = top[:nucleus]
        tempered = (kept.log() / t).softmax(0)
        numbers = {n["stage"]: n for n in pg.stage_numbers(row)}
        assert numbers["model"]["kept"] == model.net.num_tokens and numbers["model"]["mass"] == pytest.approx(1)
        assert numbers["model"]["entropy"] == pytest.approx(entropy(probs), abs=1e-4)
        assert numbers["top_k"]["kept"] == k and numbers["top_k"]["mass"] == pytest.approx(float(top.sum()), abs=1e-5)
        assert numbers["top_p"]["kept"] == nucleus
        assert numbers["top_p"]["mass"] == pytest.approx(float(kept.sum()), abs=1e-5)
        assert numbers["temperature"]["entropy"] == pytest.approx(entropy(tempered), abs=1e-4)
        html_text = pg.render.stages_html(row, run.settings)
        assert f"<b>{nucleus:,}</b> tokens holding <b>{100 * float(kept.sum()):.1f}%</b>" in html_text
        assert "top_p 0.8" in html_text
        # the timeline's point for this step
        point = timeline[i]
        assert point["step"] == i + 1 and point["kept"] == nucleus
        assert point["model_entropy"] == pytest.approx(entropy(probs), abs=1e-4)
        assert point["final_entropy"] == pytest.approx(entropy(tempered), abs=1e-4)
        chosen = seq[len(ids_of(model)) + i]
        assert point["chosen_rank"] == int((probs > probs[chosen]).sum()) + 1
        assert point["chosen_prob"] == pytest.approx(float(tempered[int((probs > probs[chosen]).sum())]), abs=1e-5)


def test_the_timeline_plot_draws_the_timeline(model):
    from playground.views.timeline import MEASURES, frame

    records = [dict(step=1, model_entropy=3.5, final_entropy=1.25, chosen_prob=0.5, chosen_rank=2, kept=7, token=5),
               dict(step=2, model_entropy=2.0, final_entropy=0.0, chosen_prob=1.0, chosen_rank=None, kept=1,
                    token=None)]
    df = frame(records, "uncertainty (entropy, bits)", model.tokenizer)
    assert df[df.series == "the model"].value.tolist() == [3.5, 2.0]
    assert df[df.series == "after processing"].value.tolist() == [1.25, 0.0]
    assert df.token.tolist()[0] == model.tokenizer.decode([5]) and df.p.tolist()[:2] == [0.5, 0.5]
    assert frame(records, "chosen token's rank").value.tolist() == [2.0]  # no rank, no point
    assert frame(records, "tokens kept").value.tolist() == [7.0, 1.0]
    assert frame(records, "probability the constraint removed").empty  # no constraint, no point
    records[0]["constraint_removed"] = 0.25
    assert frame(records, "probability the constraint removed").value.tolist() == [0.25]
    assert set(MEASURES) == {"uncertainty (entropy, bits)", "chosen token's probability", "chosen token's rank",
                             "tokens kept", "probability the constraint removed"}


# --- sample this step N times ---


def test_draws_follow_the_steps_final_distribution(app, client):
    _, _, trace = client.predict(prompt=PROMPT, max_new_tokens=3, temperature=1.5, top_k=6, seed=1,
                                 api_name="/generate")
    row = trace[1]
    n = 40_000
    exact, counts = pg.draw(row, n, seed=1)
    assert exact[:-1] == row["probs"]["temperature"] and exact[-1] == pytest.approx(1 - sum(exact[:-1]), abs=1e-9)
    assert sum(counts) == n and len(counts) == len(row["candidates"]) + 1
    for p, c in zip(exact, counts):
        assert abs(c / n - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9  # within 5 standard errors
    assert counts[6:] == [0] * (len(counts) - 6)  # top-k 6: nothing else can be drawn
    assert pg.draw(row, n, seed=1) == (exact, counts) and pg.draw(row, n, seed=2)[1] != counts
    tree = pg.Tree()
    tree.add(pg.Run(pg.Settings(), PROMPT, [1], rows=trace, session=""))
    got_row, labels, got_exact, got_counts = app.sample_ui(tree, 1, 500)
    assert got_row is row and len(labels) == len(got_exact) == len(got_counts) and sum(got_counts) == 500
    assert labels[-1].endswith("all others") and labels == sorted(labels)  # the plots order bars by label


@pytest.mark.parametrize("n", [0, -1, 10**9, 2.5, "100", None, float("nan"), True])
def test_bad_draw_counts_are_refused(app, n):
    import gradio as gr

    tree = pg.Tree()
    tree.add(pg.Run(pg.Settings(), PROMPT, [1], rows=[dict(step=0, stages=["model"], probs=dict(model=[1.0]))]))
    with pytest.raises(gr.Error, match="draws must be"):
        app.sample_ui(tree, 0, n)
    with pytest.raises(gr.Error, match="open a step first"):
        app.sample_ui(None, 0, 10)


# --- share links ---


def test_a_share_link_holds_every_setting_under_the_api_names():
    s = pg.Settings(strategy="beam search", beams=3, seed=5, length_penalty=0.5, temperature=0.3, top_p=0.9,
                    model="someone/model")
    query = pg.to_query("ROMEO:\nBut soft", s, default_model="assets/models/shakespeare")
    params = dict(urllib.parse.parse_qsl(query))
    assert params == dict(prompt="ROMEO:\nBut soft", strategy="beam search", beams="3", seed="5",
                          length_penalty="0.5", temperature="0.3", top_p="0.9", model="someone/model")
    assert pg.from_query(params) == ("ROMEO:\nBut soft", s)
    assert pg.from_query({"prompt": "x", "utm_source": "mail"}) == ("x", pg.Settings())  # others' names ignored
    assert pg.from_query({}) == (None, None)
    # the app's own model and amateur are left out, so a link works wherever the app is served
    assert "model" not in dict(urllib.parse.parse_qsl(pg.to_query("x", pg.Settings(model="m/a"), "m/a")))


@pytest.mark.parametrize("query, message", [
    (dict(temperature="hot"), "temperature in the link must be a number"),
    (dict(beams="3.5"), "beams in the link must be a whole number"),
    (dict(beams="100"), "beams must be"),
    (dict(strategy="telepathy"), "strategy must be one of"),
    (dict(prompt=""), "prompt is empty"),
    (dict(top_p="nan"), "top-p must be"),
    (dict(seed="-1"), "seed must be"),
    (dict(max_new_tokens="1e9"), "max new tokens must be"),
    (dict(use_finetuned="true", temperature="9"), "temperature must be"),
])
def test_bad_share_links_are_refused_with_a_message(query, message):
    with pytest.raises(ValueError, match=message):
        pg.from_query(query)


def test_a_models_own_settings_start_the_controls(tmp_path, model):
    from axw import GenerationConfig

    config = GenerationConfig(temperature=0.6, filter_logits_fn=["top_k", "min_p"],
                              filter_kwargs=[dict(k=7), dict(min_p=0.05)], repetition_penalty=1.2, seed=3)
    settings, unsupported = pg.from_generation_config(config)
    assert settings == pg.Settings(temperature=0.6, top_k=7, min_p=0.05, repetition_penalty=1.2, seed=3)
    assert unsupported == []
    # and the same settings generate what the model's own file does
    lib = model.generate(torch.tensor(ids_of(model)), 10, config.update(eos_token=model.eos_token_id))
    with torch.no_grad():
        ours = model.generate(torch.tensor(ids_of(model)), 10, settings.config(model, trace=False))
    assert torch.equal(lib, ours)
    beams, _ = pg.from_generation_config(GenerationConfig(beams=5, length_penalty=1.0))
    assert (beams.strategy, beams.beams, beams.length_penalty) == ("beam search", 5, 1.0)
    settings, unsupported = pg.from_generation_config(GenerationConfig(
        filter_logits_fn="typical_p", filter_kwargs=dict(mass=0.9), xtc_probability=0.5,
        sampler_order="temperature_first", mirostat_tau=3.0, prompt_lookup_num_tokens=4))
    assert (settings.typical_p, settings.xtc_probability, settings.sampler_order, settings.mirostat_tau) == (
        0.9, 0.5, "temperature_first", 3.0)
    assert unsupported == ["prompt_lookup_num_tokens"]
    assert pg.from_generation_config(None) == (pg.Settings(), [])


def test_the_app_starts_from_the_models_generation_config(tmp_path_factory):
    import app as app_module
    from conftest import playground_models

    from axw import GenerationConfig

    expert, amateur = playground_models(tmp_path_factory.mktemp("configured"))
    GenerationConfig(temperature=0.55, filter_logits_fn=["top_k"], filter_kwargs=[dict(k=9)], seed=11).save_pretrained(
        expert)
    demo = app_module.build(expert, amateur, visitor_budget_s=0)
    values = {name: demo.controls[name].value for name in ("temperature", "seed", "k", "use_k", "use_p", "strategy")}
    assert values == dict(temperature=0.55, seed=11, k=9, use_k=True, use_p=False, strategy="sampling")
    assert "generation_config.json gives the starting settings" in demo.playground.info(expert)


# --- text, token by token ---

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings as h_settings, strategies as st  # noqa: E402


@h_settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5), cut=st.integers(0, 8))
def test_the_detokenizer_follows_a_changing_best_beam(model, texts, cut):
    """Beam search's best beam may change anywhere: the pieces always add up to the current beam's text."""
    tokenizer = model.tokenizer
    detok = pg.Detokenizer(tokenizer)
    base = []
    for text in texts:
        ids = base[: max(0, len(base) - cut)] + tokenizer.encode(text).ids
        detok.follow(ids)
        assert detok.ids == ids and len(detok.pieces) == len(ids)
        assert tokenizer.decode(ids).startswith("".join(detok.pieces))
        assert "".join(detok.finish()) == tokenizer.decode(ids)
        base = ids
