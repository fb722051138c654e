"""transformers' names, as a transformers user writes them: the same tokens as axw's own calls, transformers'
meaning where do_sample is given (checked against transformers' own warpers and generate), and errors that name
the closest settings."""

import json

import pytest
import torch

from axw import AutoregressiveWrapper, GenerationConfig
from axw.processors import build_pipeline
from test_convert import gpt2, save
from test_instrument import ids_of

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    return AutoregressiveWrapper.from_pretrained("assets/models/shakespeare")


@pytest.mark.parametrize("theirs, ours", [
    (dict(max_new_tokens=12, do_sample=False), dict(temperature=0.0)),
    (dict(max_new_tokens=12, num_beams=3, do_sample=False), dict(beams=3)),
    (dict(max_new_tokens=12, do_sample=True, top_p=0.9, seed=5),
     dict(filter_logits_fn=["top_k", "top_p"], filter_kwargs=[dict(k=50), dict(thres=0.9)],
          sampler_order="temperature_first", seed=5)),
    (dict(max_new_tokens=12, do_sample=True, top_k=0, min_p=0.1, temperature=1.5, seed=2),
     dict(filter_logits_fn=["min_p"], filter_kwargs=[dict(min_p=0.1)], sampler_order="temperature_first",
          temperature=1.5, seed=2)),
    (dict(max_new_tokens=12, top_p=0.8, seed=1), dict(filter_logits_fn=["top_p"], filter_kwargs=[dict(thres=0.8)],
                                                      seed=1)),
    (dict(max_new_tokens=12, eos_token_id=[0, 5], do_sample=False), dict(eos_token=[0, 5], temperature=0.0)),
])
def test_transformers_calls_give_the_axw_calls_tokens(model, theirs, ours):
    ids = torch.tensor(ids_of(model))
    assert torch.equal(model.generate(ids, **theirs), model.generate(ids, 12, **ours))


def test_do_sample_means_what_it_means_in_transformers():
    """The distribution sampled from equals transformers' warpers' (temperature, then top-k 50 and top-p) on the
    same logits."""
    torch.manual_seed(0)
    logits = torch.randn(3, 200) * 3
    config = GenerationConfig(do_sample=True, top_p=0.8, temperature=0.7)
    ours = build_pipeline(config)(logits.clone(), torch.zeros((3, 1), dtype=torch.long)).softmax(-1)
    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.7),
                                                transformers.TopKLogitsWarper(50),
                                                transformers.TopPLogitsWarper(0.8)])
    theirs = warpers(None, logits.clone()).softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    greedy = GenerationConfig(do_sample=False)
    assert greedy.greedy and GenerationConfig(do_sample=False, num_beams=4).beams == 4


def test_a_transformers_generation_config_is_taken(model):
    ids = torch.tensor(ids_of(model))
    hf = transformers.GenerationConfig(do_sample=False, max_new_tokens=9)
    assert torch.equal(model.generate(ids, generation_config=hf), model.generate(ids, 9, temperature=0.0))
    config = GenerationConfig.from_transformers(
        transformers.GenerationConfig(do_sample=True, top_k=20, max_new_tokens=7, eos_token_id=[2, 3]))
    assert (config.max_new_tokens, config.eos_token, config.filter_logits_fn) == (7, [2, 3], ["top_k"])
    assert GenerationConfig.from_transformers(hf.to_dict()) == GenerationConfig.from_transformers(hf)


def test_from_pretrained_keeps_the_length_and_eos(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        dict(do_sample=True, temperature=0.6, max_new_tokens=33, eos_token_id=[7, 9])))
    config = GenerationConfig.from_pretrained(tmp_path)
    assert (config.max_new_tokens, config.eos_token, config.temperature) == (33, [7, 9], 0.6)


def test_beams_by_transformers_names_match_transformers_generate(tmp_path):
    hf = gpt2()
    ours = AutoregressiveWrapper.from_pretrained(save(hf, tmp_path))
    torch.manual_seed(2)
    x = torch.randint(0, 64, (2, 6))
    kwargs = dict(max_new_tokens=20, num_beams=3, do_sample=False)
    theirs = hf.generate(x, **kwargs, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(x, **kwargs), theirs)
    assert torch.equal(ours.generate(x, max_new_tokens=20, do_sample=False),
                       hf.generate(x, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0))


@pytest.mark.parametrize("kwargs, message", [
    (dict(tempreature=0.5), r"tempreature \(did you mean temperature\?\)"),
    (dict(top_kk=3), r"did you mean top_k"),
    (dict(diversity_penalty=0.5), "diversity_penalty is transformers' setting, which axw does not have"),
    (dict(beams=2, num_beams=3), "beams given twice"),
    (dict(do_sample="yes"), "do_sample must be True or False"),
])
def test_unknown_names_are_refused_with_the_closest(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor(ids_of(model)), 4, **kwargs)


def test_a_length_is_needed(model):
    with pytest.raises(ValueError, match="give seq_len .* or max_new_tokens"):
        model.generate(torch.tensor(ids_of(model)))
