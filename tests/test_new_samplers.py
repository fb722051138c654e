"""p-less sampling and adaptive-p, each added as its processor and its spec: checked against hand computations,
a recomputed run, and through the app's /generate."""

import math

import pytest
import torch

from axw import GenerationConfig
from axw.filters import AdaptiveP, p_less
from axw.generation import sample
from axw.processors import build_pipeline
from test_instrument import continuation, full_probs, ids_of

PROMPT = "ROMEO:"


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def test_p_less_keeps_the_tokens_at_least_as_likely_as_two_draws_agreeing():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05],  # sum of squares 0.365: only 0.5 passes
                          [0.4, 0.35, 0.25, 0.0],  # 0.345: 0.4 and 0.35 pass
                          [0.25, 0.25, 0.25, 0.25],  # 0.25: a flat row keeps everything
                          [0.97, 0.01, 0.01, 0.01]])  # 0.9412: a sure model keeps its token alone
    assert kept(p_less(probs.log())) == [[0], [0, 1], [0, 1, 2, 3], [0]]
    # as a pipeline stage, by name, its kept tokens keep their logits
    pipeline = build_pipeline(GenerationConfig(filter_logits_fn="p_less", temperature=1.0))
    out = pipeline(probs.log(), torch.zeros((4, 1), dtype=torch.long))
    assert kept(out) == [[0], [0, 1], [0, 1, 2, 3], [0]]
    assert torch.equal(out[1, :2], probs[1, :2].log())
    with pytest.raises(ValueError, match="p_less takes"):
        GenerationConfig(filter_logits_fn="p_less", filter_kwargs=dict(threshold=0.1))


def adaptive_scores(p: list[float], adapted: float) -> list[float]:
    """The adapted logits by hand: 5 - 10 d² / (1 + d), d = |p - a| / 0.3."""
    out = []
    for q in p:
        d = abs(q - adapted) / 0.3
        out.append(5 - 10 * d * d / (1 + d))
    return out


def test_adaptive_p_by_hand_over_two_steps():
    target, decay = 0.5, 0.9
    a = AdaptiveP(target, decay)
    p1 = [0.6, 0.3, 0.1]
    # the average starts as if every earlier choice had hit the target: m = 0.5, so a = 2 * 0.5 - 0.5 = 0.5
    out = a(torch.tensor([p1]).log())
    assert out[0].tolist() == pytest.approx(adaptive_scores(p1, 0.5), abs=1e-5)
    a.update(torch.tensor([0]), out)  # the likeliest token was chosen: p = 0.6
    # weighted = 0.6 + 0.9 * 5 = 5.1, total = 1 + 0.9 * 10 = 10, m = 0.51: a = 2 * 0.5 - 0.51 = 0.49
    p2 = [0.5, 0.45, 0.05]
    out = a(torch.tensor([p2]).log())
    assert out[0].tolist() == pytest.approx(adaptive_scores(p2, 0.49), abs=1e-5)
    a.update(torch.tensor([2]), out)  # then an unlikely one: p = 0.05
    m = (0.05 + 0.9 * 5.1) / (1 + 0.9 * 10)
    assert a.adapted().item() == pytest.approx(min(max(2 * target - m, 0), 1), abs=1e-6)
    # a removed token stays removed
    assert not torch.isfinite(a(torch.tensor([[0.0, -math.inf, 1.0]]))[0, 1])


def test_adaptive_p_runs_last_and_with_sampling_alone(models):
    config = GenerationConfig(filter_logits_fn=["adaptive_p", "top_k"], filter_kwargs=[dict(target=0.3), dict(k=5)],
                              mirostat_tau=3.0)
    assert build_pipeline(config).names[-1] == "adaptive_p"
    model = models[0]
    for kwargs in (dict(beams=2), dict(penalty_alpha=0.5), dict(prompt_lookup_num_tokens=3)):
        with pytest.raises(ValueError, match="adaptive_p keeps state"):
            model.generate(torch.tensor(ids_of(model)), 4, filter_logits_fn="adaptive_p", **kwargs)
    with pytest.raises(ValueError, match="adaptive_p's decay"):
        GenerationConfig(filter_logits_fn="adaptive_p", filter_kwargs=dict(decay=1.0))
    with pytest.raises(ValueError, match="adaptive_p's target"):
        GenerationConfig(filter_logits_fn="adaptive_p", filter_kwargs=dict(target=-0.5))


@torch.no_grad()
def test_adaptive_p_run_equals_a_recompute_from_full_forwards(models):
    """generate with adaptive-p gives the tokens of a loop written out here: full forwards, temperature, the
    adapted scores by hand with the moving average kept here, one draw per step from the same seed."""
    model = models[0]
    prefix, n, target, decay, temperature = ids_of(model), 24, 0.3, 0.8, 0.9
    got = continuation(model, prefix, n, temperature=temperature, filter_logits_fn="adaptive_p",
                       filter_kwargs=dict(target=target, decay=decay), seed=11)
    generator = torch.Generator().manual_seed(11)
    seq, weighted, total = list(prefix), target / (1 - decay), 1 / (1 - decay)
    for _ in range(len(got)):
        p = (full_probs(model, seq)[-1].log() / temperature).softmax(-1)
        adapted = min(max(2 * target - weighted / total, 0.0), 1.0)
        scores = torch.tensor(adaptive_scores(p.tolist(), adapted))
        token = int(sample(scores[None], generator)[0])
        weighted, total = float(p[token]) + decay * weighted, 1 + decay * total
        seq.append(token)
    assert seq[len(prefix):] == got


def test_the_app_takes_both_and_gives_the_librarys_text(client, models):
    model = models[0]
    text, tokens, trace = client.predict(prompt=PROMPT, temperature=1.0, p_less=True, max_new_tokens=12, seed=3,
                                         api_name="/generate")
    want = continuation(model, ids_of(model), 12, temperature=1.0, filter_logits_fn=["p_less"],
                        filter_kwargs=[{}], seed=3)
    assert text == model.tokenizer.decode(want)
    assert trace and "p_less" in trace[0]["stages"]
    text, _, trace = client.predict(prompt=PROMPT, temperature=1.0, adaptive_p=0.4, adaptive_p_decay=0.8,
                                    max_new_tokens=12, seed=3, api_name="/generate")
    want = continuation(model, ids_of(model), 12, temperature=1.0, filter_logits_fn=["adaptive_p"],
                        filter_kwargs=[dict(target=0.4, decay=0.8)], seed=3)
    assert text == model.tokenizer.decode(want)
    assert trace[0]["stages"][-1] == "adaptive_p"
    for kwargs, message in ((dict(adaptive_p=1.5), "adaptive-p target must be"),
                            (dict(adaptive_p=0.5, adaptive_p_decay=1.0), "adaptive-p decay must be"),
                            (dict(p_less="yes"), "p-less must be")):
        with pytest.raises(Exception, match=message):
            client.predict(prompt=PROMPT, **kwargs, api_name="/generate")


def test_the_app_leaves_adaptive_p_to_sampling():
    """Speculative decoding and stochastic beams read the filters but not the samplers that keep state."""
    from types import SimpleNamespace as N

    from playground.settings import Settings

    model = N(net=N(num_tokens=50), eos_token_id=None, stop_token_ids=[])
    for strategy in ("speculative decoding", "beam search"):
        config = Settings(strategy=strategy, stochastic=True, adaptive_p=0.4, p_less=True).config(model)
        assert config.filter_logits_fn == ["p_less"]
    assert Settings(adaptive_p=0.4).config(model).filter_kwargs == [dict(target=0.4, decay=0.9)]
