"""DoLa and the layer view in the playground: /generate's DoLa is the library's, the layer view's numbers are the
network cut after each layer (final norm and head on its output), bad layers are refused before any compute."""

import pytest
import torch

pytest.importorskip("gradio")

import playground as pg  # noqa: E402
from playground.numbers.layers import formed_at, layer_view  # noqa: E402
from test_app import PROMPT, reference  # noqa: E402
from test_dola import cut_after  # noqa: E402


def test_dola_in_the_app_is_the_librarys(client, models):
    text, tokens, trace = client.predict(prompt=PROMPT, strategy="DoLa", dola_layers="0", temperature=0,
                                         repetition_penalty=1.2, max_new_tokens=12, api_name="/generate")
    assert text == reference(models[0], PROMPT, 12, dola_layers=[0], temperature=0.0, repetition_penalty=1.2)
    assert trace[0]["stages"][:2] == ["model", "dola"] and trace[0]["dola"]["layers"] == [0]


@pytest.mark.parametrize("layers, message", [("9", "outside this network"), ("middle", "DoLa layers must be"),
                                             ("1, 1", "distinct"), ("-1", "DoLa layers must be")])
def test_bad_layers_are_refused_before_any_compute(served_app, client, monkeypatch, layers, message):
    app = served_app[1].playground
    calls = []
    monkeypatch.setattr(app.models.get(app.model_name), "stream", lambda *a, **k: calls.append(1))
    with pytest.raises(Exception, match=message):
        client.predict(prompt=PROMPT, strategy="DoLa", dola_layers=layers, api_name="/generate")
    assert calls == []


def test_the_layer_view_is_each_cut_networks_guess(client, models, app):
    import gradio as gr

    expert = models[0]
    text, tokens, trace = client.predict(prompt=PROMPT, temperature=0.9, seed=4, max_new_tokens=5,
                                         api_name="/generate")
    prompt_ids = expert.tokenizer.encode(PROMPT).ids
    new = [row["chosen"] for row in trace]
    run = pg.Run(pg.Settings(), PROMPT, prompt_ids, new_ids=new, rows=trace)
    depth = expert.net.attn_layers.depth
    for step in (0, 3):
        lens = layer_view(expert, run, step)
        ranks = []
        for layer in range(depth + 1):
            with torch.no_grad():
                logits = cut_after(expert.net, layer)(torch.tensor([prompt_ids + new[:step]]))[0, -1].double()
            p = logits.softmax(-1)
            assert lens["top"][layer] == p.topk(5).indices.tolist()
            ranks.append(int((logits > logits[new[step]]).sum()))
            assert lens["chosen_prob"][layer] == pytest.approx(float(p[new[step]]), rel=1e-4)
        assert lens["chosen_rank"] == ranks and lens["contrasted"] == []
        assert lens["formed"] == next((i for i in range(depth + 1) if all(r == 0 for r in ranks[i:])), None)
    tree = pg.Tree()
    tree.add(run)
    assert 'data-layer="0"' in app.layers_ui(tree, 3)
    with pytest.raises(gr.Error, match="open a step first"):
        app.layers_ui(None, 0)
    with pytest.raises(gr.Error, match="step must be"):
        app.layers_ui(tree, 99)


def test_formed_at_is_where_the_top_guess_settles():
    assert formed_at([3, 0, 1, 0, 0]) == 3 and formed_at([0, 0]) == 0 and formed_at([0, 2]) is None


def test_a_models_own_dola_settings_start_the_controls():
    from axw import GenerationConfig
    from playground.settings import from_generation_config

    settings, unsupported = from_generation_config(GenerationConfig(dola_layers=[0, 2], temperature=0.0,
                                                                    repetition_penalty=1.2))
    assert (settings.strategy, settings.dola_layers, settings.temperature) == ("DoLa", "0, 2", 0.0)
    from conftest import tiny_model

    assert settings.config(tiny_model(depth=4), trace=False).dola_layers == [0, 2]
    with pytest.raises(ValueError, match="outside this network"):
        settings.config(tiny_model(depth=2))
