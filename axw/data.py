"""Training text: the held-out split, the byte-level BPE tokenizer and token ids.

The split lives in one function, `split_text`, so the trainer, the tokenizer
training and the tests all hold out exactly the same characters.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

HELDOUT_FRACTION = 0.1
EOS_TOKEN = "<|endoftext|>"


def split_text(text: str, heldout_fraction: float = HELDOUT_FRACTION) -> tuple[str, str]:
    """(train, heldout): the last `heldout_fraction` of the characters is held
    out. A contiguous tail, not random lines, so no held-out passage has its
    neighbours in training."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    cut = len(text) - int(len(text) * heldout_fraction)
    return text[:cut], text[cut:]


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE (GPT-2's scheme: any text encodes, nothing is unknown)
    learned from `text`; `vocab_size` counts the 256 byte tokens and the
    end-of-text token, so 257 means bytes only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an integer >= 257 (256 bytes + end-of-text), got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def eos_id(tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOS_TOKEN)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {EOS_TOKEN} token")
    return token_id


def encode(tokenizer, text: str) -> Tensor:
    """Token ids of `text` as a 1-D long tensor."""
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)


def load_split(path: str | os.PathLike, tokenizer) -> tuple[Tensor, Tensor, str]:
    """(train_ids, heldout_ids, heldout_text) of a text file. The held-out ids
    start with end-of-text, so every held-out character is predicted (the
    first from a blank context) and loss per character divides by
    `len(heldout_text)`."""
    train, heldout = split_text(read_text(path))
    heldout_ids = torch.cat((torch.tensor([eos_id(tokenizer)]), encode(tokenizer, heldout)))
    return encode(tokenizer, train), heldout_ids, heldout
