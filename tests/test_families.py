"""Import of today's small Hub families (Llama with rope scaling, Mistral,
Qwen2 / Qwen3, Gemma / Gemma 2 / Gemma 3, SmolLM3, OLMo 2, Phi-3): tiny
random-weight models built with transformers' own classes, saved as Hub
folders, loaded with `AutoregressiveWrapper.from_pretrained` and compared with
transformers on sequences longer than their sliding windows: logits, the
KV-cache decode, greedy and 4-beam generate, and axw's save_pretrained round
trip; the Decoder options they use, from scratch; and the refusals."""

import json

import pytest
import torch

from axw import AutoregressiveWrapper, Decoder, TransformerWrapper
from axw.families import FAMILIES

transformers = pytest.importorskip("transformers")
from test_convert import assert_same_logits as same_logits, one_thread  # noqa: E402,F401 (one thread here too)

VOCAB = 96
WINDOW = 8  # sliding window of the tiny models: every test sequence is longer
NEW = 30  # tokens generated after a 6-token prompt
TOKENS = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=3, pad_token_id=0)
# initializer_range=0.3: weights large enough that greedy and beam continuations vary
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
             max_position_embeddings=64, initializer_range=0.3, **TOKENS)


# model_type's classes in transformers, and the config of each case: every
# option a family adds to Llama's is on, sliding windows shorter than the sequences
CASES = {
    "llama-llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama-linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0), tie_word_embeddings=True)),
    "llama-yarn": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16))),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW, head_dim=16)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=WINDOW,
                                                      max_window_layers=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, attention_bias=True, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=12, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, num_hidden_layers=3)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=12, num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", rope_theta=100000.0, factor=2.0),
                         "sliding_attention": dict(rope_type="default", rope_theta=100.0)})),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(
        no_rope_layers=[1, 0], use_sliding_window=True, sliding_window=WINDOW, mlp_bias=True)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(attention_bias=True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        sliding_window=WINDOW, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                     partial_rotary_factor=0.5))),
}


def randomised(model, norms=True):
    """transformers initialises biases to 0 and norm weights to 1 (Gemma's to
    0); random ones make the tests see where each lands."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or (norms and "norm" in name):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build(case, norms=True):
    config_class, model_class, changes = CASES[case]
    config = getattr(transformers, config_class)(**{**SIZES, **changes})
    torch.manual_seed(0)
    return randomised(getattr(transformers, model_class)(config), norms)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    hf = build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, AutoregressiveWrapper.from_pretrained(folder)


def sequences(length=24, batch=2):
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (batch, length))


def assert_same_logits(hf, model, length=24):
    """test_convert's check on this file's sequences (their vocabulary): returns the cache."""
    return same_logits(hf, model, x=sequences(length))


def test_logits_and_cached_decode_match_transformers(pair):
    hf, model = pair
    cache = assert_same_logits(hf, model)
    layers = model.net.attn_layers
    if layers.all_sliding:
        # every layer slides: the cache holds no more than the window's keys
        assert cache.cache.live() <= WINDOW and cache.cache.capacity <= 2 * WINDOW


def test_greedy_matches_transformers(pair):
    hf, model = pair
    x = sequences(6)
    ours = model.generate(x, NEW, temperature=0.0)
    # an explicit mask: transformers would take a prompt's token 0 (its pad id) for padding
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert ours.shape == (2, 6 + NEW) and torch.equal(ours, theirs)


def test_beam_search_matches_transformers(pair):
    """As tests/test_convert.py: EOS off, so no hypothesis finishes early and
    transformers' beams are the top 4 by summed log-prob, as axw's are."""
    hf, model = pair
    x = sequences(6)
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, do_sample=False, num_beams=4,
                         length_penalty=0.0,
                         early_stopping=True, eos_token_id=None, pad_token_id=0)
    ours = model.beam_search(x, NEW, beams=4)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, model.generate(x, NEW, temperature=0.0))  # not greedy in disguise


def test_save_pretrained_round_trip(pair, tmp_path):
    hf, model = pair
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format"] == "axw"
    again = AutoregressiveWrapper.from_pretrained(tmp_path)
    assert again.net.attn_layers.config == model.net.attn_layers.config
    assert again.eos_token_id == 3
    assert_same_logits(hf, again)


@pytest.mark.parametrize("case", ["gemma2", "mistral"])
def test_greedy_left_padded_matches_transformers(tmp_path, case):
    """Prompts of different lengths under a sliding window: axw left-pads a
    list, transformers gets the same left-padded batch with an attention mask."""
    hf = build(case)
    hf.save_pretrained(tmp_path)
    model = AutoregressiveWrapper.from_pretrained(tmp_path)
    rows = [sequences(6)[0, :3], sequences(6)[1]]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 6 - len(row):], mask[i, 6 - len(row):] = row, 1
    ours = model.generate(rows, 30, temperature=0.0)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    assert torch.equal(ours[:, 6:], theirs[:, 6:])


def test_options_mapped(pair):
    """Each family lands on the Decoder options its docs name."""
    hf, model = pair
    c, net = model.net.attn_layers.config, model.net.config
    kind = hf.config.model_type
    expected = {
        "mistral": dict(sliding_window=WINDOW, layer_types=None),
        "qwen2": dict(attn_qkv_bias=True, attn_bias=False, layer_types=["full_attention", "sliding_attention"]),
        "qwen3": dict(attn_qk_norm="head", dim_head=16),
        "gemma": dict(norm_unit_offset=True, ff_activation="gelu_tanh"),
        "gemma2": dict(post_branch_norm=True, attn_softcap=2.0, attn_scale=12 ** -0.5, sliding_window=WINDOW),
        "gemma3_text": dict(attn_qk_norm="head", rotary_emb_base_local=100.0, rotary_emb_base=100000.0),
        "smollm3": dict(nope_layers=[1], layer_types=["full_attention", "sliding_attention"]),
        "olmo2": dict(pre_norm=False, post_branch_norm=True, attn_qk_norm="full"),
        "phi3": dict(rotary_emb_dim=4, sliding_window=WINDOW),
    }.get(kind, {})
    for name, value in expected.items():
        assert getattr(c, name) == value, name
    assert net.scale_emb == kind.startswith("gemma")
    assert net.logit_softcap == (3.0 if kind == "gemma2" else None)
    if kind == "llama":
        assert c.rotary_scaling["rope_type"] == hf.config.rope_parameters["rope_type"]


def rewrite_config(folder, drop=(), **changes):
    path = folder / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("case, drop, changes", [
    # Gemma 3's configs before transformers 5: rope settings at the top level, the layer pattern as a number
    ("gemma3_text", ("rope_parameters", "layer_types"),
     dict(rope_theta=100000.0, rope_local_base_freq=100.0, rope_scaling=dict(rope_type="linear", factor=2.0),
          sliding_window_pattern=2)),
    # Gemma 2's: no layer_types, every other layer local
    ("gemma2", ("layer_types",), dict(hidden_act="gelu_pytorch_tanh", cache_implementation="hybrid")),
    # SmolLM3's: no layer_types, derived from no_rope_layers
    ("smollm3", ("layer_types",), {}),
    # Llama 3's: rope_scaling and rope_theta at the top level
    ("llama-llama3", ("rope_parameters",),
     dict(rope_theta=10000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=16))),
])
def test_configs_of_older_transformers(tmp_path, case, drop, changes):
    hf = build(case)
    hf.save_pretrained(tmp_path)
    rewrite_config(tmp_path, drop, **changes)
    assert_same_logits(hf, AutoregressiveWrapper.from_pretrained(tmp_path))


def test_sliding_window_off_unless_used(tmp_path):
    """Qwen2 repos write a sliding_window beside use_sliding_window=false:
    transformers attends everything then, and so does axw."""
    hf = build("qwen3")
    hf.save_pretrained(tmp_path)
    rewrite_config(tmp_path, ("layer_types",), use_sliding_window=False, sliding_window=WINDOW, max_window_layers=0)
    model = AutoregressiveWrapper.from_pretrained(tmp_path)
    assert model.net.attn_layers.sliding_window is None
    assert_same_logits(hf, model)


def test_eos_lists(tmp_path):
    """Several EOS ids, in config.json and generation_config.json: the first
    the vocabulary holds, generation_config.json's first."""
    build("qwen3").save_pretrained(tmp_path)
    rewrite_config(tmp_path, eos_token_id=[VOCAB + 5, 7, 3])
    (tmp_path / "generation_config.json").unlink()
    with pytest.warns(UserWarning, match=f"eos_token_id {VOCAB + 5} is outside the vocabulary"):
        assert AutoregressiveWrapper.from_pretrained(tmp_path).eos_token_id == 7
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 7]}))
    assert AutoregressiveWrapper.from_pretrained(tmp_path).eos_token_id == 9


# --- the other strategies on sliding windows ---


@pytest.fixture(scope="module", params=["mistral", "gemma2", "gemma3_text"])
def sliding(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param).save_pretrained(folder)
    return AutoregressiveWrapper.from_pretrained(folder)


def test_parallel_candidates_equal_full_forwards(sliding):
    """Contrastive search's forward of k alternatives for one position through
    the cache (past the window) equals a full forward of each continuation."""
    net = sliding.net
    x = sequences(20)
    candidates = torch.tensor([[5, 9, 14], [2, 40, 77]])
    with torch.no_grad():
        cache = net.new_cache()
        net.decode(x, cache)
        hidden = net.decode(candidates, cache, parallel=True)
        for j in range(candidates.shape[1]):
            full = net(torch.cat((x, candidates[:, j:j + 1]), dim=1))[:, -1]
            torch.testing.assert_close(net.logits(hidden[:, j]), full, atol=1e-4, rtol=0)


def test_speculative_and_sampling_past_the_window(sliding):
    """Speculative decoding rolls the cache back past the window and still
    gives greedy decoding's tokens; sampling with the cache gives the tokens
    it gives recomputing every step."""
    x = sequences(6)
    plain = sliding.generate(x, 24, temperature=0.0)
    assert torch.equal(sliding.generate(x, 24, temperature=0.0, prompt_lookup_num_tokens=3), plain)
    assert torch.equal(sliding.generate(x, 24, temperature=0.0, assistant_model=sliding, num_assistant_tokens=4),
                       plain)
    sampled = sliding.generate(x, 24, temperature=1.0, seed=3)
    assert torch.equal(sliding.generate(x, 24, temperature=1.0, seed=3, cache_kv=False), sampled)


def test_fine_tuning_reaches_every_weight(pair):
    """The training loss of an imported model against transformers' (same
    next-token cross-entropy), and a gradient for every parameter, the new
    norms and soft-capped attention included."""
    hf, model = pair
    x = sequences(24)
    model.train()
    try:
        loss = model(x)
        with torch.no_grad():
            expected = hf(x, labels=x).loss
        torch.testing.assert_close(loss, expected, atol=1e-4, rtol=0)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        assert not missing
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("case", ["llama-llama3", "llama-yarn", "qwen3"])
def test_rotary_tables_of_a_bf16_model_equal_transformers(case, tmp_path):
    """Loaded or cast in bf16, the rotary frequencies stay in float32 as transformers keeps them: the cos and
    sin tables at positions far out (where a bf16 frequency would move the angle by radians) equal
    transformers' own, rounded to bf16."""
    hf = build(case)
    hf.save_pretrained(tmp_path)
    positions = torch.tensor([0, 5, 63, 1000, 4095])
    theirs = hf.model.rotary_emb(torch.zeros(1, 1, dtype=torch.bfloat16), positions[None])
    for model in (AutoregressiveWrapper.from_pretrained(tmp_path, dtype=torch.bfloat16),
                  AutoregressiveWrapper.from_pretrained(tmp_path).to(torch.bfloat16)):
        rotary = model.net.attn_layers.rotary
        assert rotary.inv_freq.dtype == torch.float32
        ours = rotary(positions, torch.bfloat16)
        for a, b in zip(ours, theirs):
            assert a.dtype == torch.bfloat16 and torch.equal(a, b[0])


@pytest.mark.parametrize("case", [case for case in CASES if case not in ("gemma2", "olmo2")])
def test_bf16_matches_transformers_computing_the_same_products(case, tmp_path):
    """Loaded in bf16, the logits of a full forward and of cached one-token steps, and greedy tokens, equal
    transformers' bit for bit when transformers computes the same products (PyTorch's own: this model's products
    are all below the size oneDNN takes, and axw runs a bf16 forward with oneDNN's switch off). The norms keep
    their initial weights: with others, transformers' RMSNorm rounds the normalised states to bf16 before
    scaling them, where axw's rounds once, so the last bits differ. Gemma 2 and OLMo 2 differ in the last bits
    too and are compared in fp32 above."""
    build(case, norms=False).save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    model = AutoregressiveWrapper.from_pretrained(tmp_path, dtype=torch.bfloat16)
    x = sequences(20)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        theirs = hf(x).logits
        greedy = hf.generate(x[:, :6], attention_mask=torch.ones_like(x[:, :6]), max_new_tokens=NEW,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
        past, their_steps = None, []
        for i in range(x.shape[1]):
            out = hf(x[:, i:i + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            their_steps.append(out.logits[:, 0])
    with torch.no_grad():
        assert torch.equal(model.net(x), theirs)
        cache = model.net.new_cache(32)
        steps = [model.net.logits(model.net.decode(x[:, i:i + 1], cache)[:, 0]) for i in range(x.shape[1])]
    assert torch.equal(torch.stack(steps, 1), torch.stack(their_steps, 1))
    assert torch.equal(model.generate(x[:, :6], NEW, temperature=0.0), greedy)


# --- the options from scratch ---


def scratch_net(**options):
    torch.manual_seed(0)
    decoder = dict(dim=32, depth=3, heads=4, dim_head=8, attn_kv_heads=2, rotary_pos_emb=True, use_rmsnorm=True)
    net = TransformerWrapper(num_tokens=VOCAB, max_seq_len=64, use_abs_pos_emb=False,
                             attn_layers=Decoder(**{**decoder, **options}), scale_emb=True, logit_softcap=5.0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif p.ndim == 2:
                p.mul_(15)  # attention far from uniform, so positions matter
    return net.eval()


SCRATCH = {
    "gemma3-like": dict(sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                        rotary_emb_base_local=100.0, attn_qk_norm="head", norm_unit_offset=True,
                        post_branch_norm=True, attn_softcap=3.0, attn_scale=0.2),
    "olmo2-like": dict(pre_norm=False, post_branch_norm=True, attn_qk_norm="full", attn_qkv_bias=True),
    "mistral-like": dict(sliding_window=5, nope_layers=[1], rotary_scaling=dict(rope_type="linear", factor=2.0)),
}


@pytest.mark.parametrize("case", SCRATCH)
def test_options_from_scratch_cache_equals_full_forward(case):
    """Built from scratch, a net with the families' options decodes through
    its KV cache (past its sliding windows) exactly as a full forward computes;
    each option changes the output, so none is silently ignored."""
    net = scratch_net(**SCRATCH[case])
    x = sequences(20)
    with torch.no_grad():
        full = net(x)
        logits, cache = net(x[:, :3], return_intermediates=True)
        steps = [logits]
        for t in range(4, 21):
            logits, cache = net(x[:, :t], cache=cache, return_intermediates=True)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
        for name in SCRATCH[case]:
            options = {k: v for k, v in SCRATCH[case].items() if k != name}
            if name == "sliding_window":
                options.pop("layer_types", None)
            if name in ("layer_types",):
                continue  # without it every layer slides, checked by mistral-like
            other = scratch_net(**options)
            other.load_state_dict(net.state_dict(), strict=False)
            assert not torch.allclose(other(x), full, atol=1e-4), name


def test_sliding_window_masks_keys_older_than_the_window():
    """A sliding model's logit at position t depends on tokens t - window + 1 .. t only."""
    net = scratch_net(sliding_window=5, depth=1)
    x = sequences(12)
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % VOCAB  # a token 11 positions before the last
    with torch.no_grad():
        a, b = net(x), net(y)
    assert torch.equal(a[:, 5:], b[:, 5:]) and not torch.equal(a[:, :5], b[:, :5])


# --- refusals ---


def config_only(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_unknown_model_type_lists_the_families(tmp_path):
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4).to_dict()
    folder = config_only(tmp_path, {**config, "model_type": "falcon"})
    with pytest.raises(ValueError, match="model_type 'falcon'") as error:
        AutoregressiveWrapper.from_pretrained(folder)
    for family in FAMILIES:
        assert repr(family) in str(error.value)
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo2",
            "phi3"} <= set(FAMILIES)


@pytest.mark.parametrize("config_class, rope, name", [
    ("LlamaConfig", dict(rope_type="dynamic", rope_theta=1e4, factor=2.0), "dynamic"),
    ("Phi3Config", dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 4, long_factor=[1.0] * 4),
     "longrope"),
    ("Qwen2Config", dict(rope_type="su", rope_theta=1e4), "su"),
])
def test_unsupported_rope_type_refused_by_name(tmp_path, config_class, rope, name):
    config = getattr(transformers, config_class)(hidden_size=32, num_attention_heads=4, num_key_value_heads=4).to_dict()
    folder = config_only(tmp_path, {**config, "rope_parameters": rope})
    with pytest.raises(ValueError, match=f"rope scaling of type '{name}'.*supported: 'default', 'linear'"):
        AutoregressiveWrapper.from_pretrained(folder)


def test_rope_scaling_refused_from_scratch():
    with pytest.raises(ValueError, match="rope scaling of type 'dynamic'"):
        Decoder(dim=32, depth=1, rotary_pos_emb=True, rotary_scaling=dict(rope_type="dynamic", factor=2.0))
    with pytest.raises(ValueError, match="'llama3' needs the number.*low_freq_factor"):
        Decoder(dim=32, depth=1, rotary_pos_emb=True, rotary_scaling=dict(rope_type="llama3", factor=2.0))


@pytest.mark.parametrize("options, message", [
    (dict(layer_types=["sliding_attention"]), "layer_types must list"),
    (dict(layer_types=["sliding_attention", "full_attention"]), "sliding_window is not set"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(attn_qk_norm="layer"), "attn_qk_norm must be one of"),
    (dict(nope_layers=[2]), "nope_layers must be layer indices"),
    (dict(attn_softcap=-1.0), "attn_softcap"),
])
def test_bad_decoder_options_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Decoder(dim=32, depth=2, **options)


def test_gemma3_bidirectional_refused(tmp_path):
    config = transformers.Gemma3TextConfig(hidden_size=32, num_attention_heads=4, head_dim=8).to_dict()
    folder = config_only(tmp_path, {**config, "use_bidirectional_attention": True})
    with pytest.raises(ValueError, match="use_bidirectional_attention=True"):
        AutoregressiveWrapper.from_pretrained(folder)


def test_pickle_only_repo_refused(tmp_path):
    """The refusal the importer has for every family: no safetensors, nothing unpickled."""
    build("gemma2").config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="no safetensors weights.*pytorch_model.bin.*never unpickles"):
        AutoregressiveWrapper.from_pretrained(tmp_path)
