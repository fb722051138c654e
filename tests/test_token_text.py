"""Tokens read as text in the page: SentencePiece's `▁`, GPT-2's `Ġ` and byte-fallback tokens show what they decode
to (the raw token on hover), and a character split over several tokens renders whole in the text."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import playground as pg
from playground.render import candidates_html, raw_token, token_text

TEXT = "the cat sat on the mat. the dog ate the hat. " * 20


def sentencepiece_like() -> Tokenizer:
    """A Llama-style tokenizer: `▁` for spaces, and in its vocabulary a token per byte for characters it never
    learned (byte fallback)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    tok.model = models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def byte_level() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    return tok


def test_sentencepiece_tokens_keep_their_space_and_bytes_show_as_bytes():
    tok = sentencepiece_like()
    the = tok.token_to_id("▁the")
    assert tok.decode([the]) == "the"  # decoding it alone drops the space it stands for
    assert token_text(tok, the) == " the" and pg.show_token(tok, the) == "␣the"
    ids = tok.encode("the é").ids  # é was never learned: two byte tokens, <0xC3> <0xA9>
    assert [tok.id_to_token(i) for i in ids[-2:]] == ["<0xC3>", "<0xA9>"]
    assert [pg.show_token(tok, i) for i in ids[-2:]] == ["‹C3›", "‹A9›"]
    assert token_text(tok, tok.token_to_id("<0x41>")) == "A"  # an ASCII byte reads as itself
    assert raw_token(tok, ids[-2]) == f"<0xC3> (id {ids[-2]})"
    # in the text, the character split over the two tokens renders whole, on the token that completes it
    pieces = pg.token_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == "the é" and pieces[-2:] == ["", "é"]


def test_byte_level_tokens_read_as_text():
    tok = byte_level()
    the = tok.token_to_id("Ġthe")
    assert pg.show_token(tok, the) == "␣the"
    ids = tok.encode(" é").ids  # Ġ, then a byte-level piece per byte of é (never merged): Ã ©
    assert [tok.id_to_token(i) for i in ids] == ["Ġ", "Ã", "©"]
    assert [pg.show_token(tok, i) for i in ids] == ["␣", "‹C3›", "‹A9›"]
    assert pg.token_pieces(tok, ids) == [" ", "", "é"]


def test_the_step_view_shows_the_text_with_the_raw_token_on_hover():
    tok = sentencepiece_like()
    the, byte = tok.token_to_id("▁the"), tok.token_to_id("<0xC3>")
    row = dict(candidates=[the, byte], stages=["model"], probs={"model": [0.7, 0.3]}, kept={"model": 2},
               chosen=the)
    html = candidates_html(row, tok)
    assert f'<code title="▁the (id {the})">␣the</code>' in html
    assert f'<code title="&lt;0xC3&gt; (id {byte})">‹C3›</code>' in html


@pytest.mark.parametrize("token", ["<s>", "</s>"])
def test_a_token_with_no_text_has_a_label(token):
    tok = sentencepiece_like()
    tok.add_special_tokens([token])
    assert pg.show_token(tok, tok.token_to_id(token)) in (token, f"#{tok.token_to_id(token)}")
