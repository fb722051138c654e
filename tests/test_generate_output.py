"""`generate(..., return_dict_in_generate=True)`: the same sequences as the plain call, beam scores that a
full forward recomputes, and speculative counts that the trace of the same run recomputes."""

import pytest
import torch

from axw import AutoregressiveWrapper, GenerateOutput, SpeculativeStats
from conftest import tiny_model


@pytest.fixture(scope="module")
def pair():
    return tiny_model().eval(), tiny_model(seed=1, depth=1).eval()


STRATEGIES = {
    "sampling": dict(temperature=0.9, filter_logits_fn="top_p", filter_kwargs=dict(thres=0.8), seed=3),
    "greedy": dict(temperature=0.0, repetition_penalty=1.3),
    "beam search": dict(beams=3, length_penalty=0.5),
    "stochastic beam search": dict(beams=3, stochastic=True, seed=5),
    "contrastive search": dict(penalty_alpha=0.6, contrastive_k=3),
    "contrastive decoding": dict(temperature=0.0, amateur=True),
    "speculative decoding": dict(temperature=0.7, seed=2, assistant=True, num_assistant_tokens=3),
    "prompt lookup": dict(temperature=0.0, prompt_lookup_num_tokens=2),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_output_objects_sequences_are_the_plain_calls_output(pair, name):
    model, small = pair
    kwargs = dict(STRATEGIES[name])
    if kwargs.pop("amateur", False):
        kwargs["amateur_model"] = small
    if kwargs.pop("assistant", False):
        kwargs["assistant_model"] = small
    prompts = [torch.tensor([5, 9, 2, 5, 9]), torch.tensor([7, 1, 3])]
    plain = model.generate(prompts, 10, **kwargs)
    assert torch.equal(model.generate(prompts, 10, return_dict_in_generate=False, **kwargs), plain)
    out = model.generate(prompts, 10, return_dict_in_generate=True, **kwargs)
    assert isinstance(out, GenerateOutput) and isinstance(plain, torch.Tensor)
    assert torch.equal(out.sequences, plain)
    beam = name.endswith("beam search")
    assert (out.sequences_scores is not None) == beam and (out.beams is not None) == beam
    assert (out.stats is not None) == (name in ("speculative decoding", "prompt lookup"))
    if beam:
        assert torch.equal(out.beams[0], plain) and torch.equal(out.sequences_scores, out.beam_scores[0])


def sequence_log_prob(net, seq: torch.Tensor, start: int, eos: int | None) -> tuple[float, int]:
    """Summed log-probability of seq[start:] under one full forward, up to and including the first EOS, and
    how many tokens that is."""
    with torch.no_grad():
        logp = net(seq[None, :-1])[0].log_softmax(-1)
    new = seq[start:].tolist()
    length = new.index(eos) + 1 if eos in new else len(new)
    return sum(float(logp[start - 1 + i, new[i]]) for i in range(length)), length


@pytest.mark.parametrize("eos, length_penalty", [(None, 0.0), (None, 0.7), ("first", 1.0)])
def test_beam_scores_are_the_full_forwards_log_probs_with_the_length_penalty(eos, length_penalty):
    model = tiny_model(num_tokens=11).eval()
    prompt = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]])
    if eos == "first":  # the best first token of row 0 ends a hypothesis at once
        eos = int(model.net(prompt[:1])[0, -1].argmax())
    kwargs = dict(beams=3, length_penalty=length_penalty, eos_token=eos)
    out = model.generate(prompt, 6, return_dict_in_generate=True, **kwargs)
    assert out.beams.shape == (3, 2, 10) and out.beam_scores.shape == (3, 2) and out.sequences_scores.shape == (2,)
    lengths = set()
    for k in range(3):
        for row in range(2):
            total, length = sequence_log_prob(model.net, out.beams[k, row], 4, eos)
            lengths.add(length)
            expected = total / length ** length_penalty if length_penalty else total
            assert float(out.beam_scores[k, row]) == pytest.approx(expected, abs=1e-4)
    if eos is not None:
        assert 1 in lengths and 6 in lengths  # finished and unfinished beams both checked
    assert torch.equal(out.sequences, model.generate(prompt, 6, **kwargs))
    # beam_search's own defaults, the same answer as return_beams_and_scores
    beams, scores = model.beam_search(prompt[0], 6, beams=3, return_beams_and_scores=True)
    out = model.beam_search(prompt[0], 6, beams=3, return_dict_in_generate=True)
    assert torch.equal(out.beams, beams) and torch.equal(out.beam_scores, scores)
    assert torch.equal(out.sequences, beams[0]) and out.sequences_scores == scores[0]


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0, num_assistant_tokens=3),
    dict(temperature=0.8, seed=4, num_assistant_tokens=2, assistant_lookup_ngram=2),
])
def test_speculative_counts_are_what_the_runs_trace_says(pair, kwargs):
    model, small = pair
    prompt = torch.tensor([[5, 9, 2, 5, 9, 2, 5, 9], [7, 1, 3, 7, 1, 3, 7, 1]])
    out = model.generate(prompt, 24, return_dict_in_generate=True, assistant_model=small, **kwargs)
    steps = list(model.stream(prompt, 24, assistant_model=small, trace=True, **kwargs))
    assert torch.equal(torch.cat([prompt, torch.stack([s.tokens for s in steps], 1)], 1), out.sequences)
    rounds = [s.trace.speculative for s in steps if s.trace.speculative["position"] == 0]
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    expected = SpeculativeStats(
        rounds=len(rounds), target_forwards=len(rounds), emitted=len(steps),
        drafted=sum(r["drafted"].numel() for r in rounds),
        accepted=sum(int(r["n_accepted"].sum()) for r in rounds),
        copied=sum(int(r["copied"].sum()) for r in rounds))
    assert out.stats == expected == steps[-1].stats
    assert expected.drafted > expected.accepted > 0
    if "assistant_lookup_ngram" in kwargs:
        assert 0 < expected.copied < expected.drafted


def test_return_dict_in_generate_is_true_or_false(model):
    with pytest.raises(ValueError, match="return_dict_in_generate must be True or False"):
        model.generate(torch.tensor([1, 2]), 3, return_dict_in_generate="yes")
    with pytest.raises(ValueError, match="return_dict_in_generate must be True or False"):
        model.beam_search(torch.tensor([1, 2]), 3, return_dict_in_generate=1)


def test_the_strategy_has_the_playgrounds_name():
    """One name per strategy: the library's output names its strategy as the playground's settings do, and the
    playground's settings for that name run it."""
    from types import SimpleNamespace

    from axw.specs import STRATEGIES
    from playground.settings import Settings

    model = AutoregressiveWrapper.from_pretrained("assets/models/shakespeare")
    amateur = AutoregressiveWrapper.from_pretrained("assets/models/shakespeare-tiny")
    ids = torch.tensor(model.tokenizer.encode("ROMEO:").ids)
    beside = {"contrastive decoding": dict(amateur_model=amateur), "speculative decoding": dict(assistant_model=amateur)}
    for name in STRATEGIES:
        config = Settings(strategy=name, temperature=0.0).config(SimpleNamespace(
            net=model.net, eos_token_id=None, stop_token_ids=[]), trace=False)
        out = model.generate(ids, 4, config, return_dict_in_generate=True, **beside.get(name, {}))
        assert out.strategy == name
