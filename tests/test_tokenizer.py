"""`axw.Tokenizer`: transformers' everyday tokenizer calls, checked against transformers'
`PreTrainedTokenizerFast` on the same `tokenizers.Tokenizer` (the bundled model's), and the calls the library
has always made on `model.tokenizer` (tokenizers') still answering as before."""

import copy
import json
import pickle

import pytest
import torch
from tokenizers import Tokenizer as Backend

from axw import AutoregressiveWrapper, Tokenizer
from conftest import tiny_model

transformers = pytest.importorskip("transformers")

FOLDER = "assets/models/shakespeare"
EOS = "<|endoftext|>"
TEXTS = ["ROMEO: hi", "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?", "a", "First Citizen : you  are ?"]


@pytest.fixture(scope="module")
def backend():
    return Backend.from_file(f"{FOLDER}/tokenizer.json")


@pytest.fixture
def pair(backend):
    ours = Tokenizer(backend, eos_token=EOS, pad_token=EOS)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS)
    return ours, theirs


def same(a, b):
    """Two call results alike: the same keys, each the same lists or tensors."""
    assert set(a) == set(b) == {"input_ids", "attention_mask"}
    for key in a:
        if isinstance(b[key], torch.Tensor):
            assert isinstance(a[key], torch.Tensor) and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def plain(x):
    """Lists, dicts and strings for tensors, dict-likes and strings."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return {k: plain(v) for k, v in x.items()} if hasattr(x, "keys") else x


def kinds(x):
    """Which parts are tensors."""
    return {k: isinstance(v, torch.Tensor) for k, v in x.items()} if hasattr(x, "keys") else isinstance(x, torch.Tensor)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(return_tensors="pt", padding=True), dict(return_tensors="pt", padding=True, padding_side="left"),
    dict(padding="longest"), dict(padding="max_length", max_length=20), dict(truncation=True, max_length=3),
    dict(add_special_tokens=False),
])
def test_calls_give_transformers_ids_and_masks(pair, kwargs):
    ours, theirs = pair
    same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    same(ours(TEXTS[1], **kwargs), theirs(TEXTS[1], **kwargs))
    # the sides set on the tokenizer, as transformers' attributes
    ours.padding_side = theirs.padding_side = ours.truncation_side = theirs.truncation_side = "left"
    same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))


def test_encode_is_a_list_and_still_the_encoding(pair, backend):
    ours, theirs = pair
    text = f"ROMEO: hi {EOS} there"
    ids = ours.encode(text)
    assert ids == theirs.encode(text) and isinstance(ids, list)
    assert ids.ids == backend.encode(text).ids and ids.tokens == backend.encode(text).tokens
    assert ids.offsets == backend.encode(text).offsets and len(ids) == len(backend.encode(text))
    assert torch.equal(ours.encode(text, return_tensors="pt"), theirs.encode(text, return_tensors="pt"))
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)


def test_decode_with_and_without_special_tokens(pair, backend):
    ours, theirs = pair
    ids = ours.encode(f"ROMEO: hi {EOS} there")
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
        assert ours.decode(torch.tensor(ids), skip_special_tokens=skip) == theirs.decode(ids,
                                                                                         skip_special_tokens=skip)
    # the default is tokenizers' (and the library's so far): special tokens left out
    assert ours.decode(ids) == backend.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids) != theirs.decode(ids)
    batch = ours(TEXTS, padding=True, return_tensors="pt").input_ids
    for skip in (True, False):
        assert ours.batch_decode(batch, skip_special_tokens=skip) == theirs.batch_decode(
            batch, skip_special_tokens=skip)
        assert ours.batch_decode(batch.tolist(), skip_special_tokens=skip) == theirs.batch_decode(
            batch.tolist(), skip_special_tokens=skip)
    assert ours.decode(5) == theirs.decode(5)


def test_special_tokens_and_sizes(pair):
    ours, theirs = pair
    for name in ("eos_token", "eos_token_id", "pad_token", "pad_token_id", "bos_token", "bos_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    assert ours.convert_ids_to_tokens([0, 5]) == theirs.convert_ids_to_tokens([0, 5])
    assert ours.convert_tokens_to_ids(EOS) == theirs.convert_tokens_to_ids(EOS) == 0
    ours.pad_token_id = 5
    assert ours.pad_token == ours.convert_ids_to_tokens(5)
    ours.pad_token = None
    assert ours.pad_token_id is None
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        ours.eos_token_id = 10 ** 6


def test_the_bundled_model_s_tokenizer(backend):
    model = AutoregressiveWrapper.from_pretrained(FOLDER)
    tok = model.tokenizer
    assert isinstance(tok, Tokenizer) and tok.backend.to_str() == backend.to_str()
    assert tok.eos_token == EOS and tok.eos_token_id == model.eos_token_id == 0 and tok.pad_token is None
    assert Tokenizer.from_pretrained(FOLDER).backend.to_str() == backend.to_str()
    # what the library and its callers have always called, answered by tokenizers
    assert tok.encode("ROMEO:").ids == backend.encode("ROMEO:").ids
    assert tok.token_to_id(EOS) == 0 and tok.get_vocab_size() == backend.get_vocab_size()
    assert tok.decode_batch([[5, 6]]) == backend.decode_batch([[5, 6]])
    assert type(copy.deepcopy(tok)) is Tokenizer and pickle.loads(pickle.dumps(tok)).encode("a") == tok.encode("a")
    # transformers' habit end to end: a padded batch straight into generate, the texts back
    tok.pad_token = tok.eos_token
    batch = tok(["ROMEO:", "JULIET: my lord"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    for i, text in enumerate(["ROMEO:", "JULIET: my lord"]):
        alone = model.generate(torch.tensor(tok.encode(text)), 8, temperature=0.0)
        assert tok.batch_decode(out)[i] == tok.decode(alone)


def test_a_tokenizers_tokenizer_assigned_to_a_model_is_wrapped(backend):
    model = tiny_model()
    model.eos_token_id = 0
    model.tokenizer = backend
    assert isinstance(model.tokenizer, Tokenizer) and model.tokenizer.backend is backend
    assert model.tokenizer.eos_token == EOS
    model.tokenizer = None
    assert model.tokenizer is None


def test_special_tokens_come_from_tokenizer_config(tmp_path, backend):
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token=EOS, eos_token=EOS, pad_token=EOS, chat_template="{{ messages[0]"
        "['content'] }}{% if add_generation_prompt %}!{% endif %}")))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 0, 0)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "ROMEO: hi"}]
    for kwargs in (dict(tokenize=False), dict(return_dict=False), dict(return_dict=True),
                   dict(add_generation_prompt=True, return_tensors="pt", return_dict=False),
                   dict(add_generation_prompt=True, return_tensors="pt", return_dict=True)):
        a, b = tok.apply_chat_template(chat, **kwargs), theirs.apply_chat_template(chat, **kwargs)
        assert plain(a) == plain(b) and kinds(a) == kinds(b), kwargs
    assert Tokenizer(backend).apply_chat_template(chat, chat_template="{{ messages[0]['content'] }}!",
                                                  tokenize=False) == "ROMEO: hi!"
    with pytest.raises(ValueError, match="this tokenizer has no chat template"):
        Tokenizer(backend).apply_chat_template(chat)


@pytest.mark.parametrize("call, message", [
    (lambda t: t(TEXTS, padding=True), "no pad token"),
    (lambda t: t(TEXTS, padding="sides"), "padding must be"),
    (lambda t: t(TEXTS, padding="max_length"), "needs max_length"),
    (lambda t: t(TEXTS, truncation=True), "truncation needs max_length"),
    (lambda t: t(TEXTS, return_tensors="np"), "return_tensors must be None or 'pt'"),
    (lambda t: t(TEXTS, return_tensors="pt"), "pass padding=True"),
    (lambda t: t([]), "a text or a non-empty list of texts"),
    (lambda t: t([1, 2]), "a text or a non-empty list of texts"),
    (lambda t: t(TEXTS, padding_side="top"), "padding_side must be"),
    (lambda t: t.decode(torch.zeros(2, 2, dtype=torch.long)), "batch_decode takes several"),
    (lambda t: Tokenizer(t, sep_token="x"), "unknown special token sep_token"),
    (lambda t: Tokenizer("tokenizer.json"), "wraps a tokenizers.Tokenizer"),
])
def test_bad_calls_are_refused(backend, call, message):
    with pytest.raises(ValueError, match=message):
        call(Tokenizer(backend, eos_token=EOS))
