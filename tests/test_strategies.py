"""Each strategy's own view and the samplers in the playground, checked against the library called directly and
full forward passes: every new /generate parameter equals generate with the library's settings; speculative
decoding at temperature 0 is greedy; a what-if branch through /generate's force_step; the beam tree's scores,
kept and pruned candidates and returned path; speculative rounds against both models; contrastive search's
choice as alpha moves; contrastive decoding's two models; Compare's departures and numbers; the lessons' claims
on the bundled model. Served on localhost (tests/conftest.py: random-weight models, the amateur drafts)."""

import math
import urllib.parse

import pytest
import torch

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

import playground as pg  # noqa: E402
from axw import AutoregressiveWrapper, NgramDatastore  # noqa: E402
from test_instrument import continuation, ids_of  # noqa: E402

PROMPT = "ROMEO:"


def library(model, n, prompt=PROMPT, prefix=None, **kwargs) -> list[int]:
    """generate's new tokens, up to EOS."""
    return continuation(model, ids_of(model, prompt) if prefix is None else prefix, n, **kwargs)


@torch.no_grad()
def log_probs(model, seq: list[int]) -> torch.Tensor:
    """The model's next-token log-probabilities at every position of `seq`, one forward pass."""
    return model.net(torch.tensor([seq]))[0].float().log_softmax(-1)


def run_of(app, settings, prompt=PROMPT):
    _, run, updates, _ = app.start(prompt, settings, "")
    for run in updates:
        pass
    return run


# --- /generate: every new parameter is the library's setting of the same name ---

T = dict(temperature=0.9, seed=5)
NEW_SAMPLERS = [
    (dict(typical_p=0.8), dict(filter_logits_fn=["typical_p"], filter_kwargs=[dict(mass=0.8)])),
    (dict(epsilon_cutoff=0.002), dict(filter_logits_fn=["epsilon_cutoff"], filter_kwargs=[dict(epsilon=0.002)])),
    (dict(eta_cutoff=0.002), dict(filter_logits_fn=["eta_cutoff"], filter_kwargs=[dict(epsilon=0.002)])),
    (dict(top_h=0.5), dict(filter_logits_fn=["top_h"], filter_kwargs=[dict(top_h=0.5)])),
    (dict(top_n_sigma=1.5), dict(filter_logits_fn=["top_n_sigma"], filter_kwargs=[dict(n=1.5)])),
    (dict(top_p=0.6, temperature=2.0, sampler_order="temperature_first"),
     dict(filter_logits_fn=["top_p"], filter_kwargs=[dict(thres=0.6)], temperature=2.0,
          sampler_order="temperature_first")),
    (dict(top_k=30, min_p=0.05, typical_p=0.9, top_n_sigma=2.0),  # the chain's order: the UI's
     dict(filter_logits_fn=["top_k", "min_p", "typical_p", "top_n_sigma"],
          filter_kwargs=[dict(k=30), dict(min_p=0.05), dict(mass=0.9), dict(n=2.0)])),
    (dict(xtc_probability=0.5, xtc_threshold=0.05), dict(xtc_probability=0.5, xtc_threshold=0.05)),
    (dict(mirostat_tau=2.5, mirostat_eta=0.2), dict(mirostat_tau=2.5, mirostat_eta=0.2)),
    (dict(dynatemp_range=0.6, dynatemp_exponent=1.5), dict(dynatemp_range=0.6, dynatemp_exponent=1.5)),
    (dict(dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=1),
     dict(dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=1)),
    (dict(strategy="beam search", beams=3, stochastic=True, temperature=1.1, top_k=40),
     dict(beams=3, stochastic=True, temperature=1.1, filter_logits_fn=["top_k"], filter_kwargs=[dict(k=40)])),
    (dict(strategy="beam search", beams=3, dry_multiplier=1.0), dict(beams=3, dry_multiplier=1.0)),
    (dict(strategy="speculative decoding", top_p=0.9, num_assistant_tokens=3),
     dict(filter_logits_fn=["top_p"], filter_kwargs=[dict(thres=0.9)], num_assistant_tokens=3, assistant=True)),
    (dict(strategy="speculative decoding", drafter="prompt lookup", num_assistant_tokens=4),
     dict(prompt_lookup_num_tokens=4, num_assistant_tokens=4)),
    (dict(strategy="speculative decoding", num_assistant_tokens_schedule="heuristic"),
     dict(num_assistant_tokens_schedule="heuristic", assistant=True)),
]


@pytest.mark.parametrize("api_kwargs, library_kwargs", NEW_SAMPLERS)
def test_each_new_setting_equals_the_library(client, models, api_kwargs, library_kwargs):
    n = 14
    api = dict(T, **api_kwargs)
    text, tokens, trace = client.predict(prompt=PROMPT, max_new_tokens=n, api_name="/generate", **api)
    kw = dict(dict(T, filter_logits_fn=[]), **library_kwargs)
    if kw.pop("assistant", False):
        kw["assistant_model"] = models[1]
    assert text == models[0].tokenizer.decode(library(models[0], n, **kw))
    assert "".join(t for t, _ in tokens) == text


def test_speculative_decoding_at_temperature_0_is_exactly_greedy(client, models):
    """Through /generate, with each drafter: the same text as greedy decoding, token for token, and the trace says
    how each token came (its round)."""
    n = 40
    greedy = client.predict(prompt=PROMPT, temperature=0.0, max_new_tokens=n, api_name="/generate")[0]
    assert greedy == models[0].tokenizer.decode(library(models[0], n, temperature=0.0))
    for drafter in pg.DRAFTERS:
        text, _, trace = client.predict(prompt=PROMPT, strategy="speculative decoding", temperature=0.0,
                                        drafter=drafter, num_assistant_tokens=4, max_new_tokens=n,
                                        api_name="/generate")
        assert text == greedy, drafter
        assert all("speculative" in row for row in trace)


def test_samplers_at_temperature_0_are_greedy(client, models):
    """Greedy decoding skips the sampling stages; mirostat at temperature 0 once crashed the library's update of a
    target it never set (hypothesis found it), so the app leaves mirostat out of greedy decoding."""
    greedy = models[0].tokenizer.decode(library(models[0], 12, temperature=0.0))
    for kwargs in (dict(mirostat_tau=3.0), dict(xtc_probability=1.0), dict(dynatemp_range=1.0, top_n_sigma=0.5)):
        assert client.predict(prompt=PROMPT, temperature=0.0, max_new_tokens=12, api_name="/generate",
                              **kwargs)[0] == greedy, kwargs


def test_the_new_settings_off_are_the_old_settings(models):
    """Each new setting at its default (or sent at its neutral value) leaves the library's settings as they were,
    so calls made before these settings existed give the same text."""
    model = models[0]
    neutral = dict(sampler_order="filters_first", typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, top_h=0.0,
                   top_n_sigma=0.0, xtc_probability=0.0, dynatemp_range=0.0, mirostat_tau=0.0, dry_multiplier=0.0,
                   stochastic=False, force_step=0)
    base = dict(eos_token=model.eos_token_id, seed=3, trace=True, trace_top=pg.TRACE_TOP)
    cases = [(dict(temperature=0.7, top_k=20, top_p=0.9),
              dict(temperature=0.7, filter_logits_fn=["top_k", "top_p"], filter_kwargs=[dict(k=20), dict(thres=0.9)])),
             (dict(strategy="beam search", beams=3, length_penalty=0.5), dict(beams=3, length_penalty=0.5,
                                                                           filter_logits_fn=[])),
             (dict(strategy="contrastive search"), dict(penalty_alpha=0.6, contrastive_k=4, filter_logits_fn=[])),
             (dict(strategy="contrastive decoding", temperature=0.0),
              dict(temperature=0.0, contrastive_decode_kwargs=dict(alpha=0.1, beta=0.5), filter_logits_fn=[]))]
    for settings, expected in cases:
        want = pg.settings.GenerationConfig(**base, **expected)
        assert pg.Settings(seed=3, **settings).config(model) == want
        assert pg.Settings(seed=3, **settings, **neutral).config(model) == want


def test_a_plain_http_call_with_the_earlier_values_gets_the_defaults(served_app, client):
    """POST /gradio_api/call/generate with only the values /generate had before its later parameters: the same
    text as gradio_client's call with those values (which fills in the rest itself)."""
    url = served_app[0]
    values = [PROMPT, "sampling", 12, 0.9, 20, 1.0, 0.0, 0.0, 1.0, 0, 7, 4, 0.0, 0.6, 4, "", 0.1, 0.5, "", False]
    with httpx.Client(timeout=60) as http:
        event = http.post(f"{url}gradio_api/call/generate", json={"data": values}).json()["event_id"]
        body = http.get(f"{url}gradio_api/call/generate/{event}").text
    assert "event: complete" in body, body
    (text, _, _), = __import__("json").loads(body.split("event: complete\ndata:", 1)[1].strip())
    assert text == client.predict(*values, api_name="/generate")[0]


# --- a what-if branch through /generate ---


@pytest.mark.parametrize("api_kwargs, library_kwargs", [
    (dict(temperature=0.9, top_k=20, seed=4), dict(temperature=0.9, filter_logits_fn=["top_k"],
                                                   filter_kwargs=[dict(k=20)], seed=4)),
    (dict(strategy="contrastive search", penalty_alpha=0.5), dict(penalty_alpha=0.5)),
    (dict(strategy="speculative decoding", temperature=0.0), dict(temperature=0.0)),
])
def test_force_step_equals_generate_from_the_forced_prefix(client, models, api_kwargs, library_kwargs):
    model, n, step = models[0], 20, 6  # step is 1-based: the 6th new token is forced
    text, _, trace = client.predict(prompt=PROMPT, max_new_tokens=n, api_name="/generate", **api_kwargs)
    root = library(model, n, **library_kwargs)
    assert text == model.tokenizer.decode(root) and len(root) >= step
    forced = next(c for c in trace[step - 1]["candidates"][1:] if c != root[step - 1])
    b_text, b_tokens, b_trace = client.predict(prompt=PROMPT, max_new_tokens=n, force_step=step,
                                               force_token=forced, api_name="/generate", **api_kwargs)
    prefix = ids_of(model) + root[: step - 1] + [forced]
    expected = root[: step - 1] + [forced] + library(model, n - step, prefix=prefix, **library_kwargs)
    assert b_text == model.tokenizer.decode(expected)
    assert b_trace[step - 1]["forced"] and b_trace[step - 1]["chosen"] == forced
    assert b_trace[: step - 1] == trace[: step - 1]
    # and a share link carries the branch under the same names
    settings = pg.Settings(max_new_tokens=n, force_step=step, force_token=forced, **api_kwargs)
    query = dict(urllib.parse.parse_qsl(pg.to_query(PROMPT, settings)))
    assert query["force_step"] == str(step) and query["force_token"] == str(forced)
    assert pg.from_query(query) == (PROMPT, settings.check())


# --- the beam tree ---


@pytest.mark.parametrize("length_penalty", [0.0, 0.7])
def test_the_beam_tree_scores_kept_pruned_and_returned_equal_a_recompute(app, models, length_penalty):
    """Every node of the tree: its score is its parent beam's summed log-probability plus the model's
    log-probability of its token after that beam (a full forward pass); with the length penalty divided by
    length ** penalty; the kept ones are the best-ranked and each extends its parent beam into a live beam; the
    path drawn as returned spells the beam generate returns."""
    model, beams, n = models[0], 3, 10
    run = run_of(app, pg.Settings(strategy="beam search", beams=beams, length_penalty=length_penalty,
                                  max_new_tokens=n))
    tree = pg.beam_tree(run.rows)
    prompt = ids_of(model)
    assert len(tree) == len(run.rows)
    parents = {0: ([], 0.0)}  # beam index -> (its tokens, its summed log-probability)
    for t, nodes in enumerate(tree):
        row = run.rows[t]
        kept = [x for x in nodes if x["beam"] is not None]
        assert sorted(x["beam"] for x in kept) == list(range(beams))
        live = [x for x in nodes if x["status"] in ("kept", "finished", "pruned")]
        for x in live:
            beam, score = parents[x["parent_beam"]]
            logp = log_probs(model, prompt + beam)[-1, x["token"]].item()
            assert x["score"] == pytest.approx(score + logp, abs=1e-3)
            assert x["ranked"] == pytest.approx(x["score"] / (t + 1) ** length_penalty if length_penalty else
                                                x["score"], abs=1e-3)
        # the kept candidates outrank the pruned ones, and each becomes the live beam of its index
        pruned = [x["ranked"] for x in live if x["status"] == "pruned"]
        assert not pruned or min(x["ranked"] for x in kept) >= max(pruned) - 1e-6
        for x in kept:
            assert row["beams"][x["beam"]] == parents[x["parent_beam"]][0] + [x["token"]]
            assert x["parent"] is None if t == 0 else tree[t - 1][x["parent"]]["beam"] == x["parent_beam"]
        parents = {x["beam"]: (row["beams"][x["beam"]], x["score"]) for x in kept}
    path = [next(x for x in nodes if x["returned"]) for nodes in tree]
    assert [x["beam"] for x in path[-1:]] == [0]
    tokens = [x["token"] for x in path]
    eos = model.eos_token_id
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    assert tokens == library(model, n, beams=beams, length_penalty=length_penalty) == run.new_ids
    svg = pg.panels.beam_tree_svg(run.rows, model.tokenizer, PROMPT)
    assert svg.count("axw-node-returned") == len(tree) and svg.count("axw-node-pruned") == sum(
        x["status"] == "pruned" for nodes in tree for x in nodes)


def test_stochastic_beams_are_ranked_by_their_keys(app, models):
    run = run_of(app, pg.Settings(strategy="beam search", beams=3, stochastic=True, temperature=1.0, seed=2,
                                  max_new_tokens=8))
    assert run.new_ids == library(models[0], 8, beams=3, stochastic=True, temperature=1.0, seed=2,
                                  filter_logits_fn=[])
    for nodes in pg.beam_tree(run.rows):
        keys = [x["key"] for x in nodes]
        assert all(k is not None for k in keys)
        kept = sorted((x["key"] for x in nodes if x["beam"] is not None), reverse=True)
        assert kept == sorted(keys, reverse=True)[: len(kept)]  # the kept ones hold the largest keys
        by_beam = sorted((x for x in nodes if x["beam"] is not None), key=lambda x: x["beam"])
        assert [x["key"] for x in by_beam] == kept  # beam 0 first: the beams go best key first


# --- speculative rounds ---


def greedy_rounds(app, models, drafter: str, n: int = 60):
    """(expert, run) of greedy speculative decoding with `drafter` drafting 3 a round: greedy's own text."""
    expert, _ = models
    run = run_of(app, pg.Settings(strategy="speculative decoding", drafter=drafter, temperature=0.0,
                                  num_assistant_tokens=3, max_new_tokens=n))
    assert run.new_ids == library(expert, n, temperature=0.0)
    return expert, run


def test_speculative_rounds_mark_the_drafts_copied_by_prompt_lookup(app, models):
    """'draft model + prompt lookup': a draft is a copy exactly where the text's last two tokens occurred before
    (with a committed token after them), and it is the token that followed their latest occurrence; the rounds
    view marks each copy."""
    expert, run = greedy_rounds(app, models, "draft model + prompt lookup")
    copies = 0
    for r in pg.speculative_rounds(run.rows):
        text = ids_of(expert) + run.new_ids[:r["steps"][0]]  # what the model had committed when the round began
        seq = text + r["drafted"]
        for j, copied in enumerate(r["copied"]):
            end = len(text) + j
            hits = [s for s in range(len(text) - 2) if seq[s:s + 2] == seq[end - 2:end]]
            assert copied == bool(hits), (r["round"], j)
            if copied:
                assert r["drafted"][j] == seq[hits[-1] + 2]
                copies += 1
        assert len(r["drafted"]) - sum(r["copied"]) <= 3  # the draft model drafts at most 3 a round
    assert copies
    html = pg.panels.speculative_html(run.rows, expert.tokenizer)
    assert html.count("axw-chip-copy") == copies + 1  # each copy, and the legend


def test_speculative_rounds_mark_the_drafts_copied_from_the_datastore(app, models):
    """'draft model + datastore': where the datastore beside the draft holds the text's last n-gram, its token is
    the draft and the draft model does not run; the rounds view marks each such copy."""
    store = NgramDatastore.from_pretrained(app.draft_name)  # the test app's drafter folder holds one
    expert, run = greedy_rounds(app, models, "draft model + datastore")
    copies = 0
    for r in pg.speculative_rounds(run.rows):
        seq = ids_of(expert) + run.new_ids[:r["steps"][0]] + r["drafted"]
        start = len(seq) - len(r["drafted"])
        for j, source in enumerate(r["sources"]):
            known = store.next_tokens([seq[:start + j]])[0]
            assert source == (2 if known >= 0 else 0), (r["round"], j)
            if source == 2:
                assert r["drafted"][j] == known
                copies += 1
        assert r["copied"] == [s == 2 for s in r["sources"]]
    assert copies
    html = pg.panels.speculative_html(run.rows, expert.tokenizer)
    assert html.count("axw-chip-store") == copies + 1  # each copy, and the legend
    assert "copied from the n-gram datastore" in html


def test_a_draft_without_a_datastore_is_refused_before_compute(app, client, monkeypatch):
    model = app.models.get(app.model_name)
    calls = []
    monkeypatch.setattr(model, "stream", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(app, "draft_name", app.model_name)  # a folder with a model and no datastore
    for drafter in ("draft model + datastore", "datastore"):
        with pytest.raises(Exception, match="has no n-gram datastore beside it"):
            client.predict(prompt=PROMPT, strategy="speculative decoding", drafter=drafter, api_name="/generate")
    assert calls == []


def test_speculative_rounds_equal_both_models(app, models):
    """Greedy, drafting with the amateur: each round's drafts are the amateur's greedy continuation, their
    probabilities each model's (full forward passes), the accepted ones those the model would have taken, the
    token after them the model's own; the rounds spell the text."""
    expert, draft = models
    n, gamma = 30, 4
    run = run_of(app, pg.Settings(strategy="speculative decoding", drafter="amateur", temperature=0.0,
                                  num_assistant_tokens=gamma, max_new_tokens=n))
    assert run.new_ids == library(expert, n, temperature=0.0)
    rounds = pg.speculative_rounds(run.rows)
    emitted, drafted, accepted = [], 0, 0
    for r in rounds:
        start = r["steps"][0]
        assert start == len(emitted)
        prefix = ids_of(expert) + run.new_ids[:start]
        size = min(gamma, n - start - 1)
        assert r["drafted"] == draft.generate(torch.tensor(prefix), size, temperature=0.0)[len(prefix):].tolist()
        seq = prefix + r["drafted"]
        p, q = log_probs(expert, seq).exp(), log_probs(draft, seq).exp()
        at = range(len(prefix) - 1, len(prefix) - 1 + size)
        assert r["model_probs"] == pytest.approx([p[i, t].item() for i, t in zip(at, r["drafted"])], abs=1e-4)
        assert r["draft_probs"] == pytest.approx([q[i, t].item() for i, t in zip(at, r["drafted"])], abs=1e-4)
        agree = [int(p[i].argmax()) == t for i, t in zip(at, r["drafted"])]
        assert r["accepted"] == agree
        k = r["n_accepted"]
        assert k == next((j for j, ok in enumerate(agree) if not ok), size)
        assert r["replacement"] == int(p[len(prefix) - 1 + k].argmax())
        emitted += (r["drafted"][:k] + [r["replacement"]])[: len(r["steps"])]
        drafted, accepted = drafted + size, accepted + k
        assert r["acceptance_rate"] == pytest.approx(accepted / max(drafted, 1))
    eos = expert.eos_token_id
    assert (emitted[: emitted.index(eos)] if eos in emitted else emitted) == run.new_ids
    assert len(rounds) < len(run.rows) and len(emitted) == len(run.rows)
    assert rounds[-1]["tokens_per_forward"] == pytest.approx(len(run.rows) / len(rounds))
    html = pg.panels.speculative_html(run.rows, expert.tokenizer)
    assert html.count("axw-chip-ok") - 1 == accepted  # the legend has one of each
    assert html.count("axw-chip-no") - 1 == sum(r["n_accepted"] < len(r["drafted"]) for r in rounds)


# --- contrastive search and contrastive decoding ---


def test_the_alpha_sweep_picks_what_contrastive_search_picks(app, models):
    """Recomputed from one step's trace without a forward: for each alpha, the token contrastive search with that
    alpha takes after the same text (the library, run afresh)."""
    model, step = models[0], 5
    run = run_of(app, pg.Settings(strategy="contrastive search", penalty_alpha=0.6, contrastive_k=5,
                                  max_new_tokens=step + 1))
    prefix = ids_of(model) + run.new_ids[:step]
    sweep = pg.alpha_sweep(run.rows[step])
    assert [s["alpha"] for s in sweep] == pg.runs.SWEEP_ALPHAS
    for s in sweep:
        out = model.generate(torch.tensor(prefix), 1, penalty_alpha=s["alpha"], contrastive_k=5)
        assert s["token"] == int(out[-1]), s["alpha"]
    assert sweep[6]["token"] == run.rows[step]["chosen"]  # alpha 0.6: the run's own choice
    panel = pg.panels.contrastive_panel(run.rows[step], model.tokenizer, pg.Settings(penalty_alpha=0.6))
    assert panel.count("<line") == 1 + sum(p > 0 for p in run.rows[step]["contrastive"]["confidence"]) + 1


def test_contrastive_decoding_shows_both_models_the_cut_and_the_score(app, models):
    expert, amateur = models
    alpha, beta, step = 0.2, 0.7, 3
    run = run_of(app, pg.Settings(strategy="contrastive decoding", temperature=0.0, cd_alpha=alpha, cd_beta=beta,
                                  max_new_tokens=step + 1))
    row = run.rows[step]
    d = row["contrastive_decoding"]["contrastive_decoding"]
    seq = ids_of(expert) + run.new_ids[:step]
    e, a = log_probs(expert, seq)[-1], log_probs(amateur, seq)[-1]
    cands = row["candidates"]
    assert d["expert"] == pytest.approx(e[cands].tolist(), abs=1e-4)
    assert d["amateur"] == pytest.approx(a[cands].tolist(), abs=1e-4)
    assert d["plausible"] == [bool(e[c] >= e.max() + math.log(alpha)) for c in cands]
    with torch.no_grad():
        el, al = (m.net(torch.tensor([seq]))[0, -1].float() for m in models)
    for c, plausible, score in zip(cands, d["plausible"], d["score"]):
        assert score == (pytest.approx(((1 + beta) * el[c] - beta * al[c]).item(), abs=1e-3) if plausible
                         else -math.inf)
    panel = pg.panels.contrastive_decoding_panel(row, expert.tokenizer, pg.Settings(cd_alpha=alpha))
    for c, ok in zip(cands, d["plausible"]):
        assert f"<td>{e[c].item():.2f}</td><td>{a[c].item():.2f}</td><td>{'yes' if ok else 'no'}</td>" in panel
    assert f"= {(e.max() + math.log(alpha)).item():.2f}" in panel


# --- the step view follows the sampler order ---


def test_the_stages_follow_the_sampler_order_and_temperature_moves_the_top_p_cut(client, models):
    model, p, t = models[0], 0.8, 2.0
    kept = {}
    for order in ("filters_first", "temperature_first"):
        _, _, trace = client.predict(prompt=PROMPT, temperature=t, top_p=p, sampler_order=order, seed=1,
                                     max_new_tokens=1, api_name="/generate")
        row = trace[0]
        assert row["stages"] == (["model", "top_p", "temperature"] if order == "filters_first" else
                                 ["model", "temperature", "top_p"])
        probs = log_probs(model, ids_of(model))[-1].double()
        if order == "temperature_first":
            probs = probs / t
        share = probs.softmax(0).sort(descending=True).values
        kept[order] = int((share.cumsum(0) - share < p).sum())  # the nucleus of what top-p reads
        assert row["kept"]["top_p"] == kept[order]
        html = pg.render.stages_html(row, pg.Settings(temperature=t, top_p=p, sampler_order=order))
        assert html.index("top_p 0.8") < html.index("temperature 2") if order == "filters_first" else \
            html.index("temperature 2") < html.index("top_p 0.8")
    assert kept["temperature_first"] > kept["filters_first"]  # a hot temperature first swells the nucleus


# --- Compare ---


def test_compare_marks_where_each_column_departs_from_greedy(app, models):
    from playground.views.compare import COLUMNS, LABELS, settings_of

    model, n, seed = models[0], 24, 3
    labels = ["sampling (T 0.8, top-p 0.9)", "min-p 0.1 (T 0.8)", "beam search (4 beams)",
              "speculative decoding (greedy, draft model)", "speculative decoding (greedy, draft model + prompt lookup)",
              "speculative decoding (greedy, draft model + datastore)", "DRY 0.8 (greedy)"]
    *_, (grid, frame) = app.compare_view_ui("", PROMPT, seed, n, "", labels)
    assert list(frame["column"]) == ["greedy"] + [x for x in LABELS if x in labels]  # greedy always, first
    greedy = library(model, n, temperature=0.0)
    texts = {}
    for label, strategy, values in COLUMNS:
        if label in labels:
            settings = pg.Settings(**dict(settings_of(strategy, values).to_dict(), seed=seed, max_new_tokens=n))
            texts[label] = run_of(app, settings).new_ids
    texts["greedy"] = greedy
    assert texts["min-p 0.1 (T 0.8)"] == library(model, n, temperature=0.8, filter_logits_fn=["min_p"],
                                                  filter_kwargs=[dict(min_p=0.1)], seed=seed)
    for _, row in frame.iterrows():
        ids = texts[row["column"]]
        at = next((i for i, (a, b) in enumerate(zip(ids, greedy)) if a != b),
                  None if len(ids) == len(greedy) else min(len(ids), len(greedy)))
        assert row["departs from greedy at"] == ("–" if at is None else str(at + 1)), row["column"]
        grams = list(zip(ids, ids[1:]))
        assert row["distinct-2"] == pytest.approx(len(set(grams)) / len(grams), abs=1e-3)
        assert row["tokens/s"] > 0
    for drafter in ("draft model", "draft model + prompt lookup", "draft model + datastore"):
        spec = frame.set_index("column").loc[f"speculative decoding (greedy, {drafter})"]
        assert spec["departs from greedy at"] == "–"
    # the mean log-probability under the model, token by token (a forward per prefix)
    prompt = ids_of(model)
    stepwise = [log_probs(model, prompt + greedy[:i])[-1, greedy[i]].item() for i in range(len(greedy))]
    assert frame.iloc[0]["mean log p (model)"] == pytest.approx(sum(stepwise) / len(stepwise), abs=1e-3)
    assert grid.count('class="axw-col"') == len(labels) + 1


def test_the_text_measures_by_hand():
    assert pg.runs.distinct_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(2 / 5)
    assert pg.runs.repeated_ngram_share([1, 2, 1, 2, 1, 2], 4) == pytest.approx(1 / 3)  # 1212, 2121, 1212
    assert pg.runs.repeated_ngram_share([1, 2, 3], 4) is None and pg.runs.distinct_n([5], 2) is None
    assert pg.runs.departure([1, 2, 3], [1, 2, 4]) == 2 and pg.runs.departure([1, 2], [1, 2]) is None
    assert pg.runs.departure([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("columns, message", [(["telepathy"], "columns must be"), ("greedy", "columns must be"),
                                              (None, "columns must be"), ("all", "at most")])
def test_bad_compare_requests_are_refused_before_any_compute(app, monkeypatch, columns, message):
    import gradio as gr

    from playground.views.compare import LABELS

    columns = LABELS if columns == "all" else columns
    calls = []
    model = app.models.get(app.model_name)
    monkeypatch.setattr(model, "stream", lambda *a, **k: calls.append(1))
    with pytest.raises(gr.Error, match=message):
        list(app.compare_view_ui("", PROMPT, 0, 8, "", columns))
    with pytest.raises(gr.Error, match="seed must be"):
        list(app.compare_view_ui("", PROMPT, -1, 8, "", ["greedy"]))
    assert calls == []


# --- the lessons say what the bundled model does ---


@pytest.fixture(scope="module")
def bundled():
    root = pg.ROOT
    if not (root / pg.DEFAULT_MODEL).is_dir():
        pytest.skip("no bundled model")
    model = AutoregressiveWrapper.from_pretrained(root / pg.DEFAULT_MODEL).eval()
    folder = root / pg.default_draft(pg.DEFAULT_MODEL, pg.DEFAULT_AMATEUR)
    draft = AutoregressiveWrapper.from_pretrained(folder)
    draft.datastore = NgramDatastore.from_pretrained(folder) if (folder / "ngrams.safetensors").is_file() else None
    return model, draft.eval()


def lesson_run(model, draft, prompt, settings):
    ids = model.tokenizer.encode(prompt).ids
    speculative = settings.strategy == "speculative decoding"
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), settings.max_new_tokens, settings.config(model, trace=False),
                             assistant_model=draft if speculative and settings.drafter != "datastore" else None,
                             assistant_datastore=draft.datastore if settings.drafter.endswith("datastore") else None)
    new = out[len(ids):].tolist()
    return ids, new[: new.index(model.eos_token_id)] if model.eos_token_id in new else new


def test_each_lesson_shows_what_it_says_on_the_bundled_model(bundled):
    import html

    model, draft = bundled
    # each text a lesson shows, by (lesson title, run): its own, or each of its Compare columns, greedy first
    lessons = {(lesson.title, name): lesson_run(model, draft, lesson.prompt, s) + (s,)
               for items in pg.lessons.LESSONS.values() for lesson in items for name, s in lesson.runs()}

    def shown(title, name=None):
        return next(v for (t, n), v in lessons.items() if t.startswith(title) and (name is None or n == name))

    loop, left = shown("beam search's repetition loop"), shown("contrastive search leaves the loop")
    assert pg.runs.repeated_ngram_share(loop[1]) > 0.5 > 0.1 > pg.runs.repeated_ngram_share(left[1])
    pair = "speculative decoding against greedy"
    same, greedy = shown(pair, "speculative decoding (greedy, draft model)"), shown(pair, "greedy")
    assert same[1] == greedy[1] and same[2].strategy == "speculative decoding"
    free = shown("drafts that cost nothing")
    assert free[1] == greedy[1] and free[2].drafter == "draft model + datastore"
    hot = "top-p against min-p at temperature 2"
    hot_p, hot_min = shown(hot, "top-p 0.9 (T 2, temperature first)"), shown(hot, "min-p 0.1 (T 2, temperature first)")
    assert pg.runs.mean_logprob(model, *hot_min[:2]) > pg.runs.mean_logprob(model, *hot_p[:2]) + 0.5
    for strategy, items in pg.lessons.LESSONS.items():  # each share link opens the page with the run's settings
        for lesson in items:
            for _, settings in lesson.runs():
                query = dict(urllib.parse.parse_qsl(pg.lessons.link(lesson.prompt, settings)[1:]))
                assert pg.from_query(query) == (lesson.prompt, settings.check())
                assert f'href="{html.escape(pg.lessons.link(lesson.prompt, settings))}"' in pg.lessons.explain(strategy)
