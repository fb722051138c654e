"""DoLa (Chuang et al. 2023) and the logit lens, against a hand computation: each layer's logits from the network
cut after that layer (its final norm and head on the cut's output), the Jensen-Shannon divergence, the relative
top cut and transformers' repetition penalty written out here in float64."""

import copy

import pytest
import torch
from torch import nn

from axw import GenerationConfig
from axw.logit_lens import candidate_layers, logit_lens
from conftest import tiny_model

DEPTH = 6


@pytest.fixture(scope="module")
def deep():
    return tiny_model(seed=3, depth=DEPTH, rotary=True).eval()


def cut_after(net, layer: int):
    """The network cut after `layer` layers: its output is final_norm(that layer's hidden states) -> head."""
    cut = copy.deepcopy(net)
    cut.attn_layers.layers = nn.ModuleList(list(cut.attn_layers.layers)[:layer])
    return cut


@pytest.fixture(scope="module")
def cuts(deep):
    return {i: cut_after(deep.net, i) for i in range(DEPTH + 1)}


def by_hand(cuts, seq: torch.Tensor, layers: list[int], penalty: float = 1.0):
    """One DoLa step for a 1-D `seq`: (scores after the penalty, the premature layer, the divergences)."""
    with torch.no_grad():
        logits = {i: cuts[i](seq[None])[0, -1].double() for i in [*layers, DEPTH]}
    p = logits[DEPTH].softmax(-1)
    divergences = []
    for j in layers:
        q = logits[j].softmax(-1)
        m = (p + q) / 2
        divergences.append(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    premature = layers[max(range(len(layers)), key=lambda k: divergences[k])]
    q = logits[premature].softmax(-1)
    scores = torch.full_like(p, -torch.inf)
    keep = p >= 0.1 * p.max()
    scores[keep] = p[keep].log() - q[keep].log()
    seen = seq.unique()
    scores[seen] = torch.where(scores[seen] < 0, scores[seen] * penalty, scores[seen] / penalty)
    return scores, premature, torch.stack(divergences)


@pytest.mark.parametrize("dola_layers", ["low", "high", [1, 2, 4]])
def test_greedy_dola_is_the_hand_computation(deep, cuts, dola_layers):
    layers = candidate_layers(dola_layers, DEPTH, tied=False)
    prompt = torch.randint(0, 97, (6,), generator=torch.Generator().manual_seed(1))
    steps = list(deep.stream(prompt, 5, dola_layers=dola_layers, temperature=0.0, repetition_penalty=1.2,
                             trace=True))
    seq = prompt.clone()
    for step in steps:
        scores, premature, divergences = by_hand(cuts, seq, layers, 1.2)
        row = step.trace.row(0)
        assert row["dola"]["layers"] == layers and row["dola"]["premature"] == premature
        torch.testing.assert_close(torch.tensor(row["dola"]["divergence"], dtype=torch.float64), divergences,
                                   rtol=1e-3, atol=1e-7)
        assert int(step.tokens[0]) == int(scores.argmax())
        seq = torch.cat([seq, step.tokens])


def test_sampling_after_the_contrast_and_each_layers_top_tokens(deep, cuts):
    """Filters and temperature shape the contrast as they shape the logits (top_k, then temperature); the trace
    holds each candidate layer's most likely tokens, with their probabilities."""
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    out = deep.generate(prompt, 1, dola_layers="high", temperature=0.7, filter_logits_fn="top_k",
                        filter_kwargs=dict(k=3), return_dict_in_generate=True, output_scores=True, seed=0)
    steps = list(deep.stream(prompt, 1, dola_layers="high", trace=True, trace_top=5))
    layers = candidate_layers("high", DEPTH, tied=False)
    for i in range(2):
        scores, premature, _ = by_hand(cuts, prompt[i], layers)
        kept = scores.topk(3).indices
        expected = torch.zeros_like(scores)
        expected[kept] = (scores[kept] / 0.7).softmax(-1)
        torch.testing.assert_close(out.scores[0][i].double().softmax(-1), expected, rtol=1e-4, atol=1e-6)
        dola = steps[0].trace.row(i)["dola"]
        for layer, top, probs in zip(dola["layers"], dola["top"], dola["top_probs"]):
            with torch.no_grad():
                q = cuts[layer](prompt[i][None])[0, -1].double().softmax(-1)
            assert top == q.topk(5).indices.tolist()
            torch.testing.assert_close(torch.tensor(probs, dtype=torch.float64), q.topk(5).values, rtol=1e-4,
                                       atol=1e-6)


def test_one_forward_per_step_through_the_cache(deep):
    """Every candidate layer comes from the step's one forward, with or without cache_kv."""
    calls = []
    hook = deep.net.attn_layers.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[1]),
                                                          with_kwargs=True)
    try:
        deep.generate(torch.tensor([[5, 6, 7]]), 5, dola_layers=[0, 1, 2, 3], cache_kv=False, temperature=0.0)
    finally:
        hook.remove()
    assert calls == [3, 1, 1, 1, 1]


def test_the_logit_lens_is_each_cut_networks_distribution(deep, cuts):
    ids = torch.tensor([3, 14, 15, 92, 65])
    lens = logit_lens(deep.net, ids, chosen=35, top=4)
    assert lens["layers"] == list(range(DEPTH + 1))
    for layer in lens["layers"]:
        with torch.no_grad():
            logits = cuts[layer](ids[None])[0, -1].double()
        p = logits.softmax(-1)
        assert lens["top"][layer] == p.topk(4).indices.tolist()
        assert lens["chosen_rank"][layer] == int((logits > logits[35]).sum())
        assert lens["chosen_prob"][layer] == pytest.approx(float(p[35]), rel=1e-4)
    assert lens["top"][DEPTH][0] == int(deep.net(ids[None])[0, -1].argmax())


def transformers_rule(name: str, depth: int, tied: bool) -> list[int]:
    """transformers' candidate layers (`_dola_decoding`), restated."""
    start = (2 if depth > 2 else 1 if depth == 2 else 0) if tied else 0
    if name == "low":
        if start == depth // 2:
            return [start]
        return list(range(start, depth // 2, 2)) if depth <= 40 else list(range(start, 20, 2))
    return list(range(depth // 2, depth, 2)) if depth <= 40 else list(range(depth - 20, depth, 2))


@pytest.mark.parametrize("tied", [False, True])
def test_low_and_high_are_transformers_layers(tied):
    for depth in range(1, 61):
        for name in ("low", "high"):
            ours, theirs = candidate_layers(name, depth, tied), transformers_rule(name, depth, tied)
            assert ours == (theirs or [min(ours[0], depth - 1)]), (name, depth)
            assert ours and all(0 <= i < depth for i in ours)


@pytest.mark.parametrize("bad, message", [
    ("middle", "dola_layers must be"), ([DEPTH], "outside this network"), ([], "dola_layers must be"),
    ([-1], "dola_layers must be"), ([2, 2], "distinct"), ([1.5], "dola_layers must be"), (True, "dola_layers must be"),
])
def test_bad_layers_are_refused_before_compute(deep, bad, message):
    calls = []
    hook = deep.net.attn_layers.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            deep.generate(torch.tensor([[1, 2]]), 3, dola_layers=bad)
    finally:
        hook.remove()
    assert calls == []


def test_dola_combines_with_sampling_alone(deep):
    with pytest.raises(ValueError, match="DoLa"):
        deep.generate(torch.tensor([[1, 2]]), 3, dola_layers="high", beams=2)
    with pytest.raises(ValueError, match="DoLa"):
        deep.generate(torch.tensor([[1, 2]]), 3, dola_layers="high", amateur_model=deep)
    assert GenerationConfig(dola_layers="2, 4").dola_layers == [2, 4]
    assert GenerationConfig.from_transformers(dict(dola_layers="low", repetition_penalty=1.2)).dola_layers == "low"
    assert deep.generate(torch.tensor([[1, 2]]), 2, dola_layers="low", return_dict_in_generate=True).strategy == "DoLa"
