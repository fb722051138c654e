"""Checkpoints: the Hub folder layout, bit-exact round trips, the real
huggingface_hub download path (served from a Hub cache built here), and
refusals."""

import json
import shutil

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

from axw import AutoregressiveWrapper


def byte_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_tokens([chr(i) for i in range(ord("a"), ord("z") + 1)])
    return tok


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(rotary=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, attn_kv_heads=2,
                       wrapper_kwargs=dict(mask_prob=0.15, pad_value=2))
    model.tokenizer = byte_tokenizer()
    model.eos_token_id = 5
    model.save_pretrained(tmp_path / "m", model_card="# tiny\n")
    return model, tmp_path / "m"


def test_folder_layout(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "axw" and config["net"]["num_tokens"] == 97
    assert config["wrapper"]["mask_prob"] == 0.15 and config["eos_token_id"] == 5
    # the weights file is plain safetensors holding exactly the net's tensors
    assert load_file(folder / "model.safetensors").keys() == model.net.state_dict().keys()


def test_round_trip_is_bit_exact(saved):
    model, folder = saved
    loaded = AutoregressiveWrapper.from_pretrained(folder)
    for (name, a), (_, b) in zip(model.net.state_dict().items(), loaded.net.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = torch.randint(0, 97, (2, 12))
    assert torch.equal(model.eval().net(x), loaded.net(x))
    assert loaded.mask_prob == 0.15 and loaded.pad_value == 2 and loaded.eos_token_id == 5
    assert loaded.tokenizer.encode("abc").ids == model.tokenizer.encode("abc").ids
    assert not loaded.training


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_saving_in_half_precision_loads_back_as_float32(saved, tmp_path, dtype):
    model, folder = saved
    model.save_pretrained(tmp_path / "half", dtype=dtype)
    stored = load_file(tmp_path / "half" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {dtype}
    full = (folder / "model.safetensors").stat().st_size
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.55 * full
    loaded = AutoregressiveWrapper.from_pretrained(tmp_path / "half")
    for name, weight in model.net.state_dict().items():
        got = loaded.net.state_dict()[name]
        assert got.dtype == torch.float32 and torch.equal(got, weight.to(dtype).float()), name
    with pytest.raises(ValueError, match="dtype must be one of"):
        model.save_pretrained(tmp_path / "bad", dtype=torch.int8)
    assert not (tmp_path / "bad").exists()


def _hub_cache(root, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out a repo the way huggingface_hub's cache stores it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return root


def test_from_hub_cache_through_huggingface_hub(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, folder = saved
    cache = _hub_cache(tmp_path / "hub", "someone/tiny-axw", folder)
    loaded = AutoregressiveWrapper.from_pretrained("someone/tiny-axw", cache_dir=cache)
    x = torch.randint(0, 97, (1, 9))
    assert torch.equal(model.eval().net(x), loaded.net(x))
    assert loaded.tokenizer is not None


def test_offline_and_not_cached_names_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="someone/missing"):
        AutoregressiveWrapper.from_pretrained("someone/missing", cache_dir=tmp_path)


def test_pickle_only_folder_is_refused(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "pickled"
    shutil.copytree(folder, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="never unpickles"):
        AutoregressiveWrapper.from_pretrained(bad)


@pytest.mark.parametrize("name", ["../etc", "a/b/c", "bad repo", "owner/na me", "/no/such/folder", "x" * 200])
def test_bad_names_are_refused_before_any_download(name):
    with pytest.raises(ValueError):
        AutoregressiveWrapper.from_pretrained(name)


def test_mismatched_weights_are_refused(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "mismatch"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["attn_layers"]["depth"] = 3
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        AutoregressiveWrapper.from_pretrained(bad)


@pytest.fixture
def hub_calls(monkeypatch):
    """huggingface_hub's HfApi with the network side stood in for: what it was handed (the repo made, the
    files of the folder uploaded) lands in the returned dict."""
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, private, exist_ok, repo_type):
        calls["create"] = (repo_id, private, exist_ok, self.token)

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        calls["files"] = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_saved_folder(saved, hub_calls):
    """The network side is huggingface_hub's; here we check what we hand it."""
    model, folder = saved
    calls = hub_calls
    url = model.push_to_hub("someone/tiny", token="hf_secret", private=True)
    assert url.endswith("/commit/abc")
    assert calls["create"] == ("someone/tiny", True, True, "hf_secret")
    assert calls["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert calls["files"]["tokenizer.json"] == (folder / "tokenizer.json").read_bytes()
    with pytest.raises(ValueError):
        model.push_to_hub("not a repo")


def test_an_ngram_datastore_beside_a_model_through_the_hub(saved, tmp_path, monkeypatch, hub_calls):
    """A draft's repo holding its n-gram datastore: both load from huggingface_hub's cache, and push_to_hub
    hands huggingface_hub the datastore's file alone, which loads back as the same table."""
    from axw import NgramDatastore

    model, folder = saved
    store = NgramDatastore.build([torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))], 97)
    repo = tmp_path / "repo"
    shutil.copytree(folder, repo)
    store.save_pretrained(repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = _hub_cache(tmp_path / "hub", "someone/tiny-draft", repo)
    assert NgramDatastore.from_pretrained("someone/tiny-draft", cache_dir=cache).table == store.table
    loaded = AutoregressiveWrapper.from_pretrained("someone/tiny-draft", cache_dir=cache)
    x = torch.randint(0, 97, (1, 9))
    assert torch.equal(model.eval().net(x), loaded.net(x))
    with pytest.raises(OSError, match="someone/missing"):
        NgramDatastore.from_pretrained("someone/missing", cache_dir=cache)

    calls = hub_calls
    assert store.push_to_hub("someone/tiny-draft", token="hf_secret").endswith("someone/tiny-draft/commit/abc")
    assert calls["create"] == ("someone/tiny-draft", False, True, "hf_secret")
    assert list(calls["files"]) == ["ngrams.safetensors"]
    (tmp_path / "pushed.safetensors").write_bytes(calls["files"]["ngrams.safetensors"])
    pushed = NgramDatastore.from_pretrained(tmp_path / "pushed.safetensors")
    assert pushed.table == store.table and pushed.metadata == store.metadata
    with pytest.raises(ValueError):
        store.push_to_hub("not a repo")
