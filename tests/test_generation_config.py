"""GenerationConfig: one object for every decoding setting, the same checks
as generate's keyword arguments, JSON round trips and model folders; and the
model's own configuration dataclasses."""

import inspect
import json
from dataclasses import fields

import pytest
import torch
from conftest import tiny_model, tiny_net

from axw import AutoregressiveWrapper, Decoder, DecoderConfig, GenerationConfig, TransformerWrapper, top_p
from axw.wrapper import DECODING_OBJECTS


def test_fields_are_generates_keyword_arguments():
    """GenerationConfig(**kwargs) takes what generate(**kwargs) takes: every
    setting generate knows is a field, and generate refuses any other name."""
    model = tiny_model()
    prompt = torch.randint(0, 97, (1, 3))
    names = {f.name for f in fields(GenerationConfig)}
    assert {"eos_token", "temperature", "filter_logits_fn", "filter_kwargs", "restrict_to_max_seq_len",
            "contrastive_decode_kwargs", "cache_kv", "beams", "penalty_alpha", "contrastive_k", "repetition_penalty",
            "no_repeat_ngram_size", "length_penalty", "stochastic", "seed", "trace", "trace_top", "sampler_order",
            "num_assistant_tokens", "prompt_lookup_num_tokens"} <= names
    assert not names & set(DECODING_OBJECTS)
    with pytest.raises(ValueError, match="unknown generation setting"):
        model.generate(prompt, 2, top_q=0.3)
    assert list(inspect.signature(model.generate).parameters)[:3] == ["prompts", "seq_len", "generation_config"]


def test_config_and_keywords_give_the_same_output():
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (2, 4))
    kwargs = dict(temperature=0.7, filter_logits_fn=["top_k", "top_p"], filter_kwargs=[dict(k=20), dict(thres=0.9)],
                  repetition_penalty=1.2, seed=3)
    config = GenerationConfig(**kwargs)
    assert torch.equal(model.generate(prompt, 10, config), model.generate(prompt, 10, **kwargs))
    # keyword arguments override the config
    greedy = model.generate(prompt, 10, temperature=0.0)
    assert torch.equal(model.generate(prompt, 10, config, temperature=0.0, repetition_penalty=1.0), greedy)
    beams = model.beam_search(prompt, 6, generation_config=GenerationConfig(beams=3))
    assert torch.equal(beams, model.beam_search(prompt, 6, beams=3))
    steps = list(model.stream(prompt, 10, config))
    assert torch.equal(steps[-1].sequences, model.generate(prompt, 10, **kwargs)[:, 4:])


def test_a_setting_passed_by_position_is_refused_clearly():
    model = tiny_model()
    with pytest.raises(ValueError, match="GenerationConfig"):
        model.generate(torch.tensor([[1, 2]]), 3, 5)  # eos_token given by position


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1), "temperature"), (dict(temperature="hot"), "temperature"), (dict(beams=0), "beams"),
    (dict(filter_logits_fn="top_z"), "unknown filter"), (dict(filter_kwargs=dict(k=0)), "k must be"),
    (dict(sampler_order="random"), "sampler_order"), (dict(penalty_alpha=2), "penalty_alpha"),
    (dict(seed=-1), "seed"), (dict(xtc_probability=1.5), "xtc_probability"), (dict(mirostat_tau=0), "mirostat_tau"),
    (dict(dry_base=0.5), "dry_base"), (dict(dry_sequence_breakers="\n"), "dry_sequence_breakers"),
    (dict(num_assistant_tokens=0), "num_assistant_tokens"), (dict(cache_kv="yes"), "cache_kv"),
    (dict(contrastive_decode_kwargs=dict(gamma=1)), "alpha and beta"), (dict(dynatemp_range=-1), "dynatemp_range"),
])
def test_bad_settings_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_json_round_trip_and_equality_by_value():
    config = GenerationConfig(temperature=0.6, filter_logits_fn=[top_p, "min_p"],
                              filter_kwargs=[dict(thres=0.9), dict(min_p=0.05)], sampler_order="temperature_first",
                              dry_multiplier=0.8, dry_sequence_breakers=["\n", 7], seed=11, beams=1, trace=True)
    assert config.filter_logits_fn == ["top_p", "min_p"]  # built-in callables by name
    back = GenerationConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back is not config
    assert back != config.update(seed=12)
    with pytest.raises(ValueError, match="custom filter"):
        GenerationConfig(filter_logits_fn=lambda logits: logits).to_dict()
    with pytest.raises(ValueError, match="unknown generation setting"):
        GenerationConfig.from_dict(dict(temprature=0.5))


def test_a_model_folder_carries_its_generation_config(tmp_path):
    model = tiny_model(rotary=True)
    prompt = torch.randint(0, 97, (1, 4))
    model.generation_config = GenerationConfig(temperature=0.0, repetition_penalty=1.3)
    model.save_pretrained(tmp_path / "m")
    assert GenerationConfig.from_pretrained(tmp_path / "m") == model.generation_config
    loaded = AutoregressiveWrapper.from_pretrained(tmp_path / "m")
    assert loaded.generation_config == model.generation_config
    # its settings are generate's defaults, and keyword arguments still win
    expected = model.generate(prompt, 8, temperature=0.0, repetition_penalty=1.3)
    assert torch.equal(loaded.generate(prompt, 8), expected)
    assert torch.equal(loaded.generate(prompt, 8, repetition_penalty=1.0), model.generate(prompt, 8, temperature=0.0))
    (tmp_path / "m" / "generation_config.json").write_text('{"format": "axw", "temperature": -2}')
    with pytest.raises(ValueError, match="temperature"):
        AutoregressiveWrapper.from_pretrained(tmp_path / "m")


def test_a_transformers_generation_config_is_read_in_its_order(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1).save_pretrained(
        tmp_path)
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.sampler_order == "temperature_first" and config.temperature == 0.7
    assert config.filter_logits_fn == ["top_k", "top_p"]  # transformers samples with top_k 50 unless told
    assert config.filter_kwargs == [dict(k=50), dict(thres=0.9)] and config.repetition_penalty == 1.1
    transformers.GenerationConfig(num_beams=3, length_penalty=0.5).save_pretrained(tmp_path)
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.beams == 3 and config.length_penalty == 0.5 and config.temperature == 0.0


# --- the model's configuration ---


def test_model_config_is_one_dataclass_each_and_round_trips(tmp_path):
    model = tiny_model(rotary=True, attn_kv_heads=2, ff_glu=True, ff_swish=True, use_rmsnorm=True)
    assert isinstance(model.net.attn_layers.config, DecoderConfig)
    assert model.net.attn_layers.config["ff_activation"] == "silu"  # read by key, as the dicts once were
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert set(saved["attn_layers"]) == {f.name for f in fields(DecoderConfig)}
    loaded = AutoregressiveWrapper.from_pretrained(tmp_path / "m")
    assert loaded.net.attn_layers.config == model.net.attn_layers.config
    assert loaded.net.config == model.net.config and loaded.config == model.config
    x = torch.randint(0, 97, (1, 9))
    assert torch.equal(loaded.net(x), model.net.eval()(x))


def test_x_transformers_options_accepted_or_refused_by_name():
    a = Decoder(dim=32, depth=1, heads=4, attn_dim_head=8, attn_flash=True)
    assert a.dim_head == 8 and a.config.dim_head == 8
    with pytest.raises(ValueError, match="cross_attend"):
        Decoder(dim=32, depth=1, cross_attend=True)
    with pytest.raises(ValueError, match="num_memory_tokens"):
        TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1), num_memory_tokens=4)
    with pytest.raises(ValueError, match="dim_head twice"):
        Decoder(dim=32, depth=1, dim_head=8, attn_dim_head=16)
    with pytest.raises(ValueError, match="needs dim"):
        Decoder(depth=1)
    assert Decoder(32, 2).depth == 2  # by position, as before
    x_transformers = pytest.importorskip("x_transformers")
    theirs = x_transformers.TransformerWrapper(num_tokens=50, max_seq_len=16, attn_layers=x_transformers.Decoder(
        dim=32, depth=2, heads=4, attn_dim_head=8, attn_flash=True))
    ours = TransformerWrapper(num_tokens=50, max_seq_len=16, attn_layers=Decoder(dim=32, depth=2, heads=4,
                                                                                 attn_dim_head=8, attn_flash=True))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_wrapper_options_refused_by_name():
    with pytest.raises(ValueError, match="does not implement"):
        AutoregressiveWrapper(tiny_net(), mask_prob=0.1, ignore_index_typo=3)
