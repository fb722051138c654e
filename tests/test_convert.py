"""Import of transformers checkpoints (GPT-2 and Llama families): tiny
random-weight models built with transformers' own classes, saved the way
`save_pretrained` saves them, loaded with `AutoregressiveWrapper.from_pretrained`
and compared with transformers' logits; and the refusals."""

import copy
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from axw import AutoregressiveWrapper

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

VOCAB = 96
SPECIALS = ["<eos>", "<pad>"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models gain nothing from a second thread, and on a busy machine
    # its spin-waits cost seconds per test
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def word_tokenizer() -> Tokenizer:
    """VOCAB whitespace-split words: 'w0' ... plus the special tokens last."""
    words = [f"w{i}" for i in range(VOCAB - len(SPECIALS))] + SPECIALS
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def randomised(model):
    """transformers initialises biases to 0 and norm weights to 1; random
    ones make the tests see where each lands."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# initializer_range=0.3: weights large enough that greedy and beam continuations
# of these tiny models vary instead of repeating one token

def gpt2(**kwargs):
    kwargs = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, initializer_range=0.3,
                  bos_token_id=1, eos_token_id=3, **kwargs)
    torch.manual_seed(0)
    return randomised(GPT2LMHeadModel(GPT2Config(**kwargs)))


def llama(**kwargs):
    kwargs = {**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=40, vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.3,
                     bos_token_id=1, eos_token_id=3), **kwargs}
    torch.manual_seed(0)
    return randomised(LlamaForCausalLM(LlamaConfig(**kwargs)))


def save(hf, folder, **kwargs):
    hf.save_pretrained(folder, **kwargs)
    word_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def assert_same_logits(hf, model, length=24, batch=2, x=None):
    """Whole-sequence logits of `x` (random ids by default), and a KV-cache decode one token at a time from a
    5-token prefill, against transformers' whole-sequence logits; returns the cache."""
    if x is None:
        torch.manual_seed(1)
        x = torch.randint(0, VOCAB, (batch, length))
    length = x.shape[1]
    with torch.no_grad():
        expected = hf(x).logits
        torch.testing.assert_close(model.net(x), expected, atol=1e-4, rtol=0)
        logits, cache = model.net(x[:, :5], return_intermediates=True)
        steps = [logits]
        for t in range(6, length + 1):
            logits, cache = model.net(x[:, :t], cache=cache, return_intermediates=True)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-4, rtol=0)
    return cache


GPT2_CASES = {
    "tied": {},
    "untied": dict(tie_word_embeddings=False),
    "exact-gelu": dict(activation_function="gelu", n_inner=48, layer_norm_epsilon=1e-6),
}


@pytest.mark.parametrize("case", GPT2_CASES)
def test_gpt2_matches_transformers(tmp_path, case):
    hf = gpt2(**GPT2_CASES[case])
    model = AutoregressiveWrapper.from_pretrained(save(hf, tmp_path))
    assert model.net.pos_emb is not None and (model.net.to_logits is None) == (case != "untied")
    assert_same_logits(hf, model)


def test_gpt2_original_repo_layout(tmp_path):
    """The gpt2 repos store keys without `transformer.` and carry the
    causal-mask buffers `attn.bias` / `attn.masked_bias`."""
    hf = gpt2()
    hf.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "model.safetensors")
    assert_same_logits(hf, AutoregressiveWrapper.from_pretrained(tmp_path))


def test_gpt2_sharded(tmp_path):
    hf = gpt2()
    save(hf, tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert_same_logits(hf, AutoregressiveWrapper.from_pretrained(tmp_path))


LLAMA_CASES = {
    "gqa-untied": dict(tie_word_embeddings=False),
    "tied-mha": dict(tie_word_embeddings=True, num_key_value_heads=4, rope_theta=100000.0),
    "mqa-biases": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5),
    "head-dim": dict(head_dim=16, tie_word_embeddings=True),
}


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_matches_transformers(tmp_path, case):
    hf = llama(**LLAMA_CASES[case])
    model = AutoregressiveWrapper.from_pretrained(save(hf, tmp_path))
    layers = model.net.attn_layers
    assert model.net.pos_emb is None and layers.rotary is not None and layers.kv_heads == hf.config.num_key_value_heads
    assert (model.net.to_logits is None) == hf.config.tie_word_embeddings
    # decoding 40 tokens past a 16-token prompt stays inside max_seq_len (64)
    assert_same_logits(hf, model, length=56)


def test_llama_config_of_older_transformers(tmp_path):
    """Configs written before transformers 5 (most Hub repos, e.g. SmolLM2's)
    hold rope_theta and rope_scaling at the top level, not rope_parameters."""
    hf = llama(rope_theta=100000.0, num_attention_heads=6, num_key_value_heads=2, hidden_size=48)
    folder = save(hf, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("rope_parameters") == {"rope_theta": 100000.0, "rope_type": "default"}
    config.update(rope_theta=100000, rope_scaling=None, rope_interleaved=False, is_llama_config=True,
                  torch_dtype="float32", transformers_version="4.48.0", head_dim=None)
    (folder / "config.json").write_text(json.dumps(config))
    model = AutoregressiveWrapper.from_pretrained(folder)
    assert model.net.attn_layers.rotary.base == 100000.0
    assert_same_logits(hf, model)


def test_llama_sharded_bf16(tmp_path):
    """Sharded bf16 weights load into an fp32 axw model."""
    hf = llama()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.bfloat16())
    # a bf16 copy is saved; the fp32 reference keeps fp32 rotary frequencies
    save(copy.deepcopy(hf).to(torch.bfloat16), tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = AutoregressiveWrapper.from_pretrained(tmp_path)
    assert model.net.token_emb.weight.dtype == torch.float32
    assert_same_logits(hf, model)


def test_tokenizer_attached(tmp_path):
    model = AutoregressiveWrapper.from_pretrained(save(llama(), tmp_path))
    assert model.tokenizer.encode("w5 w7 <eos>").ids == [5, 7, VOCAB - 2]


def test_imported_model_saves_in_axw_format(tmp_path):
    hf = llama(pad_token_id=4)
    model = AutoregressiveWrapper.from_pretrained(save(hf, tmp_path / "hf"))
    model.save_pretrained(tmp_path / "axw")
    assert json.loads((tmp_path / "axw" / "config.json").read_text())["format"] == "axw"
    again = AutoregressiveWrapper.from_pretrained(tmp_path / "axw")
    assert again.eos_token_id == 3 and again.pad_value == 4
    assert_same_logits(hf, again)


def test_from_hub_cache_by_repo_id(tmp_path, monkeypatch, no_unpickling):
    """A repo id resolves through huggingface_hub (its cache, offline here) to
    the same import; pickle weights beside the safetensors ones are ignored."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = llama(tie_word_embeddings=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = save(hf, repo / "snapshots" / commit, max_shard_size="20KB")
    (snapshot / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    model = AutoregressiveWrapper.from_pretrained("someone/tiny-llama", cache_dir=tmp_path / "hub")
    assert model.eos_token_id == 3 and model.tokenizer is not None
    assert_same_logits(hf, model)


# --- decoding against transformers' generate ---


@pytest.fixture(params=["gpt2", "llama"])
def pair(request, tmp_path):
    hf = gpt2() if request.param == "gpt2" else llama()
    return hf, AutoregressiveWrapper.from_pretrained(save(hf, tmp_path))


def prompts():
    torch.manual_seed(2)
    return torch.randint(0, VOCAB, (2, 6))


def test_greedy_matches_transformers(pair):
    hf, model = pair
    x = prompts()
    ours = model.generate(x, 40, temperature=0.0)
    theirs = hf.generate(x, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.shape == (2, 46) and torch.equal(ours, theirs)


def test_greedy_left_padded_matches_transformers(pair):
    """Prompts of different lengths: axw left-pads a list, transformers gets
    the same left-padded batch with an attention mask."""
    hf, model = pair
    rows = [prompts()[0, :3], prompts()[1]]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 6 - len(row):], mask[i, 6 - len(row):] = row, 1
    ours = model.generate(rows, 30, temperature=0.0)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    assert torch.equal(ours[:, 6:], theirs[:, 6:])


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_matches_transformers(pair, early_stopping):
    """axw's beam search keeps the top `beams` hypotheses by summed token
    log-prob for exactly seq_len steps. transformers does the same with EOS
    off (eos_token_id=None; these models emit their EOS id, which would end
    hypotheses early): no hypothesis finishes before max_new_tokens, so the
    2 * beams candidates it keeps to step past finished ones reduce to the
    top `beams`, and early_stopping, which decides when to stop once enough
    have finished, makes no difference. length_penalty=0 makes its scores the
    plain sums (all hypotheses have one length, so the ranking is the same
    for any length_penalty)."""
    hf, model = pair
    x = prompts()
    beams, scores = model.beam_search(x, 40, beams=4, return_beams_and_scores=True)
    theirs = hf.generate(x, max_new_tokens=40, do_sample=False, num_beams=4, length_penalty=0.0,
                         early_stopping=early_stopping, eos_token_id=None, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    assert torch.equal(model.beam_search(x, 40, beams=4), theirs.sequences)
    assert torch.equal(beams[0], theirs.sequences)
    torch.testing.assert_close(scores[0], theirs.sequences_scores, atol=1e-4, rtol=0)
    # the search is not greedy in disguise
    assert not torch.equal(beams[0], model.generate(x, 40, temperature=0.0))


# --- special tokens ---


def test_eos_and_pad_from_config(tmp_path):
    model = AutoregressiveWrapper.from_pretrained(save(llama(pad_token_id=4), tmp_path))
    assert model.eos_token_id == 3 and model.pad_value == 4
    model = AutoregressiveWrapper.from_pretrained(save(gpt2(), tmp_path / "g"))
    assert model.eos_token_id == 3 and model.pad_value == 0  # no pad id: the wrapper's default stays


def test_generation_config_comes_first(tmp_path):
    folder = save(llama(), tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 3], "pad_token_id": 8}))
    model = AutoregressiveWrapper.from_pretrained(folder)
    assert model.eos_token_id == 9 and model.pad_value == 8


def test_special_tokens_from_tokenizer_config(tmp_path):
    folder = save(llama(eos_token_id=None, bos_token_id=None), tmp_path)
    (folder / "generation_config.json").unlink()
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<eos>", "pad_token": {"content": "<pad>", "special": True}})
    )
    model = AutoregressiveWrapper.from_pretrained(folder)
    assert model.eos_token_id == VOCAB - 2 and model.pad_value == VOCAB - 1


def test_ids_outside_the_vocabulary_dropped_with_a_warning(tmp_path):
    """Tiny models built with GPT2Config(vocab_size=...) keep GPT-2's 50256 as
    bos and eos. transformers loads them with a warning, and so does axw: the
    id the model can never produce is dropped, the weights are the same."""
    torch.manual_seed(0)
    hf = randomised(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                                               initializer_range=0.3)))
    assert hf.config.eos_token_id == hf.config.bos_token_id == 50256
    with pytest.warns(UserWarning, match=r"eos_token_id 50256 is outside the vocabulary \[0, 96\)") as record:
        model = AutoregressiveWrapper.from_pretrained(save(hf, tmp_path))
    assert len([w for w in record if "is outside the vocabulary" in str(w.message)]) == 1
    assert model.eos_token_id is None and model.pad_value == 0
    assert_same_logits(hf, model)


def test_pad_and_listed_eos_outside_the_vocabulary_dropped(tmp_path):
    hf = llama()
    folder = save(hf, tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [VOCAB, 3], "pad_token_id": -1}))
    with pytest.warns(UserWarning) as record:
        model = AutoregressiveWrapper.from_pretrained(folder)
    messages = [str(w.message) for w in record if "is outside the vocabulary" in str(w.message)]
    assert len(messages) == 2
    assert "eos_token_id 96" in messages[0] and "pad_token_id -1" in messages[1] and "padding uses id 0" in messages[1]
    assert model.eos_token_id == 3 and model.pad_value == 0  # the listed id the model has
    assert_same_logits(hf, model)


@pytest.mark.parametrize("value", ["</s>", 3.0, True, [3, "</s>"]])
def test_special_id_that_is_not_an_integer_refused(tmp_path, value):
    """transformers refuses such a config too (its strict config fields); the
    refusal comes before weights are looked for."""
    folder = config_only(tmp_path, LlamaConfig(hidden_size=32, num_attention_heads=4), eos_token_id=value)
    with pytest.raises(ValueError, match=r"eos_token_id .* is not an integer token id"):
        AutoregressiveWrapper.from_pretrained(folder)


# --- refusals ---


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)


def test_pickle_only_folder_refused(tmp_path, no_unpickling):
    hf = gpt2()
    hf.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="no safetensors weights.*pytorch_model.bin.*never unpickles"):
        AutoregressiveWrapper.from_pretrained(tmp_path)


def config_only(tmp_path, hf_config, **changes):
    """A folder with just a config: a refusal must come before weights are looked for."""
    config = {**hf_config.to_dict(), **changes}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "make, changes, message",
    [
        (GPT2Config, dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
        (GPT2Config, dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn=True"),
        (GPT2Config, dict(scale_attn_weights=False), "scale_attn_weights=False"),
        (GPT2Config, dict(add_cross_attention=True), "add_cross_attention=True"),
        (GPT2Config, dict(activation_function="quick_gelu"), "activation_function='quick_gelu'.*gelu_new"),
        # rope scaling without the parameters its type needs (llama3 and linear scaling themselves load)
        (LlamaConfig, dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "'llama3'"),
        (LlamaConfig, dict(rope_parameters=None, rope_theta=1e4, rope_scaling={"type": "linear"}),
         "'linear'"),
        (LlamaConfig, dict(hidden_act="gelu"), "hidden_act='gelu'.*'silu'"),
        (LlamaConfig, dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
        (LlamaConfig, dict(model_type="bert"), "model_type 'bert'.*'gpt2', 'llama'"),
    ],
)
def test_unsupported_config_refused(tmp_path, make, changes, message):
    sizes = dict(n_embd=32, n_head=4) if make is GPT2Config else dict(hidden_size=32, num_attention_heads=4)
    folder = config_only(tmp_path, make(**sizes), **changes)
    with pytest.raises(ValueError, match=message):
        AutoregressiveWrapper.from_pretrained(folder)


def test_weights_not_matching_config_refused(tmp_path):
    folder = save(llama(), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ValueError, match="ff.proj_in.weight has shape \\(80, 32\\), the config implies \\(96, 32\\)"):
        AutoregressiveWrapper.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing the tensor 'model.layers.2.self_attn.q_proj.weight'"):
        AutoregressiveWrapper.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="no place for: model.layers.1"):
        AutoregressiveWrapper.from_pretrained(folder)
