"""The bundled models: they load offline, share one tokenizer, and the expert
beats the amateur on text neither was trained on."""

import math
from pathlib import Path

import pytest
import torch

from axw import AutoregressiveWrapper
from axw.data import EOS_TOKEN, load_split
from axw.train import evaluate

ROOT = Path(__file__).resolve().parent.parent
EXPERT = ROOT / "assets/models/shakespeare"
AMATEUR = ROOT / "assets/models/shakespeare-tiny"
DRAFT = ROOT / "assets/models/shakespeare-draft"
DATA = ROOT / "assets/data/tinyshakespeare.txt"


@pytest.fixture(scope="module")
def models():
    return AutoregressiveWrapper.from_pretrained(EXPERT), AutoregressiveWrapper.from_pretrained(AMATEUR)


def test_loads_offline_by_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # the path the app uses, relative to the repository
    model = AutoregressiveWrapper.from_pretrained("assets/models/shakespeare")
    assert model.tokenizer is not None and not model.training
    # rotary positions and no absolute table: decoding may run past max_seq_len
    assert model.net.pos_emb is None and model.net.attn_layers.rotary is not None
    assert model.eos_token_id == model.tokenizer.token_to_id(EOS_TOKEN)
    assert sorted(p.name for p in EXPERT.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "tokenizer.json"]
    # stored in float16, loaded as float32; small enough to ship in the repository
    assert (EXPERT / "model.safetensors").stat().st_size < 10 * 2**20
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_models_share_the_tokenizer(models):
    expert, amateur = models
    assert (EXPERT / "tokenizer.json").read_bytes() == (AMATEUR / "tokenizer.json").read_bytes()
    text = "ROMEO:\nWhat light through yonder window breaks? 'Tis the east.\n"
    assert expert.tokenizer.encode(text).ids == amateur.tokenizer.encode(text).ids
    assert expert.net.num_tokens == amateur.net.num_tokens == expert.tokenizer.get_vocab_size()
    assert expert.eos_token_id == amateur.eos_token_id
    assert expert.tokenizer.decode(expert.tokenizer.encode(text).ids) == text


def test_expert_beats_amateur_on_heldout_text(models):
    expert, amateur = models
    _, heldout_ids, heldout_text = load_split(DATA, expert.tokenizer)
    slice_ids = heldout_ids[:3001]
    scores = {}
    for name, model in (("expert", expert), ("amateur", amateur)):
        total, count = evaluate(model, slice_ids, seq_len=model.max_seq_len)
        scores[name] = total / count
    uniform = math.log(expert.net.num_tokens)
    assert scores["expert"] < scores["amateur"] < uniform
    # the amateur is clearly weaker, so contrastive decoding has a gap to use
    assert scores["amateur"] - scores["expert"] > 0.2


def test_amateur_is_cheap_next_to_the_expert(models):
    expert, amateur = models
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(amateur) * 4 < count(expert)



def test_the_draft_loads_shares_the_tokenizer_and_agrees_with_the_expert(models):
    """The distilled draft: the expert's tokenizer byte for byte, a sixth of
    its parameters, and its argmax close to the expert's on held-out text
    (far closer than the amateur's)."""
    expert, amateur = models
    draft = AutoregressiveWrapper.from_pretrained(DRAFT)
    assert (DRAFT / "tokenizer.json").read_bytes() == (EXPERT / "tokenizer.json").read_bytes()
    assert draft.eos_token_id == expert.eos_token_id and draft.net.num_tokens == expert.net.num_tokens
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(draft) * 3 < count(expert)
    _, heldout_ids, _ = load_split(DATA, expert.tokenizer)
    x = heldout_ids[:4 * 256].view(4, 256)  # four windows of the expert's context
    with torch.no_grad():
        top = expert.net(x).argmax(-1)
        agree = {name: float((m.net(x).argmax(-1) == top).float().mean()) for name, m in
                 (("draft", draft), ("amateur", amateur))}
    assert agree["draft"] > 0.55 and agree["draft"] > agree["amateur"] + 0.15, agree
