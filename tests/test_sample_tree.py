"""The sample tree: N texts of seeds seed..seed+N-1 sampled in batches, merged into a prefix tree. The reference is
N single runs of /generate with those seeds (their texts, their traces), and the numbers recomputed by hand."""

import math
from collections import Counter

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from playground.numbers.sample_tree import chains, prefix_entropy, prefix_tree, summary  # noqa: E402
from playground.settings import Settings  # noqa: E402


def generated(app, prompt: str, settings: dict) -> tuple[list[int], list[float], list[dict]]:
    """(token ids, the probability each was chosen with, trace) of /generate with these settings."""
    _, tokens, rows = app.generate_api(prompt, **settings)
    ids = [r["chosen"] for r in rows][:len(tokens)]
    return ids, [r["chosen_prob"] for r in rows][:len(tokens)], rows


def path_of(nodes, node) -> list[int]:
    out = []
    while node["parent"] is not None:
        out.append(node["token"])
        node = nodes[node["parent"]]
    return out[::-1]


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0, max_new_tokens=10, seed=7),
    dict(temperature=0.9, top_p=0.8, repetition_penalty=1.3, max_new_tokens=8, seed=2**31 - 9),
    dict(strategy="contrastive decoding", temperature=1.0, max_new_tokens=6, seed=0),
])
def test_the_tree_counts_the_texts_of_n_single_runs(app, client, settings):
    n, k, prompt = 9, 2, "ROMEO:"
    tree = client.predict(prompt, n, k, settings, api_name="/sample_tree")
    singles = [generated(app, prompt, {**settings, "seed": settings["seed"] + i}) for i in range(n)]
    texts = Counter(tuple(ids) for ids, _, _ in singles)
    nodes = tree["nodes"]
    assert tree["seeds"] == [settings["seed"], settings["seed"] + n - 1]
    assert nodes[0]["count"] == n and tree["distinct"] == len(texts)
    for node in nodes:
        path = path_of(nodes, node)
        through = [s for s in singles if s[0][:len(path)] == path]
        assert node["count"] == len(through)
        assert node["ends"] == sum(len(s[0]) == len(path) for s in through)
        if path:  # the edge's probability is the one each of those runs' traces chose it with
            for ids, probs, _ in through:
                assert node["prob"] == pytest.approx(probs[len(path) - 1], rel=1e-4, abs=1e-6)
    assert sorted(t["count"] for t in tree["texts"]) == sorted(texts.values())
    firsts = Counter(tuple(ids[:k]) for ids, _, _ in singles)
    assert tree["entropy"] == pytest.approx(-sum(c / n * math.log2(c / n) for c in firsts.values()))


def test_a_node_opens_the_step_its_run_shows(app):
    settings = Settings(temperature=1.0, max_new_tokens=8, seed=4)
    out = app.sample_trees_ui("JULIET:", settings, 5, 2, "temperature", "0.5")
    assert out["b"] and out["opened"]["b"].temperature == 0.5 and out["opened"]["a"].temperature == 1.0
    _, _, rows = generated(app, "JULIET:", dict(temperature=1.0, max_new_tokens=8, seed=6))
    shown = app.tree_step_ui(out["opened"], "a", 6, 3)
    assert f'data-step="{rows[3]["step"]}"' in shown and "seed 6, step 4" in shown
    with pytest.raises(gr.Error, match="seed"):
        app.tree_step_ui(out["opened"], "a", 99, 3)
    with pytest.raises(gr.Error, match="sample a tree first"):
        app.tree_step_ui(None, "a", 4, 3)


@pytest.mark.parametrize("n, k, settings, message", [
    (201, 2, {}, "in \\[1, 200\\], got 201"),
    (0, 2, {}, "n"),
    (10, 99, dict(max_new_tokens=8), "k"),
    (10, 2, dict(strategy="beam search"), "pick one of those"),
    (10, 2, dict(seed=2**31 - 5), "seed at most"),
    (10, 2, dict(temperature=-1), "temperature"),
])
def test_bad_input_is_refused_before_any_compute(app, monkeypatch, n, k, settings, message):
    import playground.views.sample_tree as view

    def never(*args, **kwargs):
        raise AssertionError("sampled before checking")

    monkeypatch.setattr(view, "sample_texts", never)
    with pytest.raises(gr.Error, match=message):
        app.sample_tree_api("ROMEO:", n, k, settings)
    with pytest.raises(gr.Error, match="setting to change"):
        app.sample_trees_ui("ROMEO:", Settings(), 5, 2, "seed", "3")
    with pytest.raises(gr.Error, match="give temperature a value"):
        app.sample_trees_ui("ROMEO:", Settings(), 5, 2, "temperature", " ")
    with pytest.raises(gr.Error, match="temperature"):
        app.sample_trees_ui("ROMEO:", Settings(), 5, 2, "temperature", "hot")


def test_the_numbers_by_hand():
    samples = [dict(seed=s, tokens=t, probs=[0.5] * len(t), ended="eos")
               for s, t in enumerate([[1, 2, 3], [1, 2, 3], [1, 2, 4], [5], [1, 2]])]
    nodes = prefix_tree(samples)
    # the prompt, 1, 1-2, 1-2-3, 1-2-4, 5
    assert [n["count"] for n in nodes] == [5, 4, 4, 2, 1, 1]
    assert [n["ends"] for n in nodes] == [0, 0, 1, 2, 1, 1]
    drawn = chains(nodes)
    # 1 and 2 go on together (no text ends at 1): one node [1, 2]
    assert [d["tokens"] for d in drawn] == [[], [1, 2], [3], [4], [5]]
    assert sum(len(d["tokens"]) for d in drawn) == len(nodes) - 1
    # first 2 tokens: (1, 2) four times, (5,) once
    assert prefix_entropy(samples, 2) == pytest.approx(-(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2)))
    assert prefix_entropy(samples[:2], 3) == 0.0
    assert summary(samples, 3)["distinct"] == 4
