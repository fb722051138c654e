"""`Tokenizer`: a model's `tokenizers.Tokenizer` (its `tokenizer.json`) with
transformers' everyday calls beside the library's own.

    tok = model.tokenizer                     # or Tokenizer.from_pretrained(folder)
    batch = tok(["a text", "another"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=20)
    tok.batch_decode(out, skip_special_tokens=True)

It is a thin wrapper: every other attribute is the `tokenizers.Tokenizer`'s
(`token_to_id`, `get_vocab_size`, `decode_batch`, `save`, ...), which is
`tok.backend` itself. Two calls serve both libraries' habits at once:
`encode(text)` is the list of ids (transformers') that also carries the
`tokenizers.Encoding` it came from (`.ids`, `.tokens`, `.offsets`, ...), and
`decode(ids)` skips special tokens unless told `skip_special_tokens=False`
(tokenizers' default, which axw has always used; transformers keeps them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from . import chat, hub

# what Tokenizer.from_pretrained fetches of a Hub repo
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                   "generation_config.json", "chat_template.jinja", "additional_chat_templates/*.jinja"]
SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")
PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}


class Encoded(list):
    """The ids of one text: a list, as transformers' `encode` returns, that
    also reads as the `tokenizers.Encoding` it came from (`.ids`, `.tokens`,
    `.offsets`, `.attention_mask`, ...)."""

    def __init__(self, encoding):
        super().__init__(encoding.ids)
        self.encoding = encoding

    def __getattr__(self, name: str):
        if name == "encoding" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.encoding, name)


class BatchEncoding(dict):
    """What calling a `Tokenizer` returns: `input_ids` and `attention_mask`,
    read as keys or attributes (transformers' `BatchEncoding`), so
    `generate(**batch)` takes it."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> BatchEncoding:
        """The tensors moved to `device`."""
        return BatchEncoding({k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.items()})


def _ids(ids) -> list[int]:
    """Token ids as a list of ints: a list, a 1-D tensor or one id."""
    if isinstance(ids, Tensor):
        if ids.ndim > 1:
            raise ValueError(f"decode takes one sequence of ids, got a tensor of shape {tuple(ids.shape)}: "
                             "batch_decode takes several")
        return ids.reshape(-1).tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class Tokenizer:
    """A `tokenizers.Tokenizer` (`backend`) with transformers' calls:
    `tok(text or texts, padding=..., truncation=..., max_length=...,
    return_tensors="pt")`, `encode`, `decode`, `batch_decode`, the special
    tokens (`eos_token` / `eos_token_id`, `bos_*`, `pad_*`, `unk_*`, each
    settable, None when the tokenizer has none) and `apply_chat_template`.
    `padding_side` ("right", as transformers' default, or "left") is where
    padding goes (`generate` takes either with the `attention_mask`),
    `truncation_side` which end truncation cuts ("right")."""

    def __init__(self, backend, chat_template: chat.ChatTemplate | None = None, padding_side: str = "right",
                 truncation_side: str = "right", **special_tokens: str | None):
        from tokenizers import Tokenizer as Backend

        backend = getattr(backend, "backend", backend)
        if not isinstance(backend, Backend):
            raise ValueError(f"Tokenizer wraps a tokenizers.Tokenizer, got {type(backend).__name__}")
        unknown = sorted(set(special_tokens) - set(SPECIAL))
        if unknown:
            raise ValueError(f"unknown special token {', '.join(unknown)}: the special tokens are {', '.join(SPECIAL)}")
        self.backend, self.chat_template = backend, chat_template
        self.padding_side = self._side(padding_side, "padding_side")
        self.truncation_side = self._side(truncation_side, "truncation_side")
        for name in SPECIAL:
            setattr(self, name, special_tokens.get(name))

    def __getattr__(self, name: str):
        if name == "backend" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        tokens = ", ".join(f"{n}={getattr(self, n)!r}" for n in SPECIAL if getattr(self, n) is not None)
        return f"axw.Tokenizer(vocab={len(self)}{', ' + tokens if tokens else ''})"

    def __len__(self) -> int:
        """The vocabulary with the added tokens, as transformers' `len(tokenizer)`."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The vocabulary without the added tokens (transformers' `vocab_size`)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    # --- special tokens ---

    def _special_id(self, name: str) -> int | None:
        token = getattr(self, name)
        return None if token is None else self.backend.token_to_id(token)

    def _set_special_id(self, name: str, token_id: int | None):
        token = None if token_id is None else self.backend.id_to_token(token_id)
        if token_id is not None and token is None:
            raise ValueError(f"{name}_id must be a token id of this tokenizer (vocabulary {len(self)}), "
                             f"got {token_id!r}")
        setattr(self, name, token)

    eos_token_id = property(lambda self: self._special_id("eos_token"),
                            lambda self, i: self._set_special_id("eos_token", i))
    bos_token_id = property(lambda self: self._special_id("bos_token"),
                            lambda self, i: self._set_special_id("bos_token", i))
    pad_token_id = property(lambda self: self._special_id("pad_token"),
                            lambda self, i: self._set_special_id("pad_token", i))
    unk_token_id = property(lambda self: self._special_id("unk_token"),
                            lambda self, i: self._set_special_id("unk_token", i))

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        return self.backend.token_to_id(tokens) if isinstance(tokens, str) else [self.backend.token_to_id(t)
                                                                                  for t in tokens]

    def convert_ids_to_tokens(self, ids):
        return self.backend.id_to_token(ids) if isinstance(ids, int) else [self.backend.id_to_token(i)
                                                                           for i in _ids(ids)]

    # --- text -> ids ---

    def encode(self, text: str, pair: str | None = None, is_pretokenized: bool = False,
               add_special_tokens: bool = True, return_tensors: str | None = None):
        """The ids of `text`: a list (also the `tokenizers.Encoding`: `.ids`,
        `.tokens`, ...), or a (1, n) tensor with `return_tensors="pt"`."""
        encoded = Encoded(self.backend.encode(text, pair, is_pretokenized=is_pretokenized,
                                              add_special_tokens=add_special_tokens))
        if return_tensors is None:
            return encoded
        self._check_tensors(return_tensors)
        return torch.tensor([encoded], dtype=torch.long)

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, padding: bool | str = False,
                 truncation: bool | str = False, max_length: int | None = None, return_tensors: str | None = None,
                 padding_side: str | None = None) -> BatchEncoding:
        """transformers' call: `input_ids` and `attention_mask` of a text (flat
        lists) or of a list of texts (lists of lists); `return_tensors="pt"`
        gives (batch, n) tensors. `padding` True / "longest" pads to the
        longest, "max_length" to `max_length`, on `padding_side`, with the pad
        token (which must be set: `tok.pad_token = tok.eos_token` is the usual
        choice, as in transformers; the mask's 0s say those ids are not read).
        `truncation=True` keeps each text's first `max_length` ids (its last
        with `truncation_side = "left"`, set on the tokenizer)."""
        batched = self._check_texts(text)
        pad_to, side = self._check_padding(padding, max_length, padding_side)
        self._check_tensors(return_tensors)
        if truncation not in (False, True, "longest_first", "do_not_truncate"):
            raise ValueError(f"truncation must be True, False or 'longest_first', got {truncation!r}")
        cut = truncation not in (False, "do_not_truncate")
        if cut and max_length is None:
            raise ValueError("truncation needs max_length: how many ids to keep")
        rows = [e.ids for e in self.backend.encode_batch(text if batched else [text],
                                                         add_special_tokens=add_special_tokens)]
        if cut:
            side_cut = self._side(self.truncation_side, "truncation_side")
            rows = [row[:max_length] if side_cut == "right" else row[-max_length:] for row in rows]
        masks = [[1] * len(row) for row in rows]
        if pad_to is not None:
            width = max(max(map(len, rows)), max_length or 0) if pad_to == "max_length" else max(map(len, rows))
            pad = self.pad_token_id
            for row, mask in zip(rows, masks):
                fill = width - len(row)
                at = 0 if side == "left" else len(row)
                row[at:at], mask[at:at] = [pad] * fill, [0] * fill
        if return_tensors is not None:
            if len({len(row) for row in rows}) > 1:
                raise ValueError("the texts have different lengths, so they make no tensor: pass padding=True")
            return BatchEncoding(input_ids=torch.tensor(rows, dtype=torch.long),
                                 attention_mask=torch.tensor(masks, dtype=torch.long))
        return BatchEncoding(input_ids=rows if batched else rows[0], attention_mask=masks if batched else masks[0])

    @staticmethod
    def _check_texts(text) -> bool:
        """Whether `text` is a list of texts (else one text); ValueError for anything else."""
        if isinstance(text, str):
            return False
        if isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
            return True
        raise ValueError(f"a text or a non-empty list of texts, got {type(text).__name__}")

    def _check_padding(self, padding, max_length, padding_side) -> tuple[str | None, str]:
        if not isinstance(padding, (bool, str)) or padding not in PADDING:
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        pad_to = PADDING[padding]
        if max_length is not None and not (isinstance(max_length, int) and max_length >= 1):
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        if pad_to == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if pad_to is not None and self.pad_token_id is None:
            raise ValueError("this tokenizer has no pad token to pad with: set tokenizer.pad_token (say "
                             "tokenizer.pad_token = tokenizer.eos_token, as with transformers)")
        return pad_to, self._side(self.padding_side if padding_side is None else padding_side, "padding_side")

    @staticmethod
    def _side(side, name: str) -> str:
        if side not in ("left", "right"):
            raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        return side

    @staticmethod
    def _check_tensors(return_tensors):
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt' (PyTorch), got {return_tensors!r}")

    # --- ids -> text ---

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of `ids` (a list, a 1-D tensor or one id); special tokens
        are left out unless `skip_special_tokens=False` (tokenizers' default;
        transformers' is to keep them)."""
        return self.backend.decode(_ids(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        """The texts of several sequences: a list of lists or a (batch, n) tensor."""
        if isinstance(sequences, Tensor) and sequences.ndim != 2:
            raise ValueError(f"batch_decode takes (batch, n) ids, got a tensor of shape {tuple(sequences.shape)}")
        return self.backend.decode_batch([_ids(row) for row in sequences], skip_special_tokens=skip_special_tokens)

    # --- chat ---

    def apply_chat_template(self, conversation, **kwargs):
        """Chat messages laid out by the chat template, as transformers'
        `tokenizer.apply_chat_template` (the same arguments as
        `AutoregressiveWrapper.apply_chat_template`)."""
        return chat.apply_chat_template(self.chat_template, self, "tokenizer", conversation, **kwargs)

    # --- files ---

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None,
                        token: str | None = None, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
        """The tokenizer of a model folder or Hub repo (only its tokenizer's
        files are downloaded): `tokenizer.json`, the special tokens of
        `tokenizer_config.json` (else EOS from the model's `eos_token_id`) and
        the chat template."""
        folder = hub.resolve(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir,
                             files=TOKENIZER_FILES)
        tokenizer = load(folder)
        if tokenizer is None:
            raise ValueError(f"{path_or_repo_id} has no {hub.TOKENIZER_NAME}")
        return tokenizer


def load(folder: str | os.PathLike, chat_template: chat.ChatTemplate | None = None) -> Tokenizer | None:
    """A folder's tokenizer, None when it has no `tokenizer.json`: its special
    tokens are those of `tokenizer_config.json`; without an EOS there, the
    model's single `eos_token_id` (generation_config.json's, else
    config.json's). `chat_template`: the folder's, when already read."""
    folder = Path(folder)
    backend = hub.load_tokenizer(folder)
    if backend is None:
        return None
    tokens = chat.special_tokens(folder, hub.read_json(folder / chat.TOKENIZER_CONFIG_NAME))
    special = {name: tokens[name] for name in SPECIAL if name in tokens}
    if "eos_token" not in special:
        for source in ("generation_config.json", hub.CONFIG_NAME):
            eos = hub.read_json(folder / source).get("eos_token_id")
            if isinstance(eos, int) and not isinstance(eos, bool) and backend.id_to_token(eos) is not None:
                special["eos_token"] = backend.id_to_token(eos)
                break
    template = chat_template if chat_template is not None else chat.ChatTemplate.from_pretrained(folder)
    return Tokenizer(backend, template, **special)
