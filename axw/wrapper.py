"""`AutoregressiveWrapper`: the training loss and generation around a
`TransformerWrapper`, with Hub checkpoints."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from . import hub
from .loss import autoregressive_loss
from .transformer import Decoder, TransformerWrapper
from .utils import exists


class AutoregressiveWrapper(nn.Module):
    """Wraps a decoder-only `TransformerWrapper` for next-token training and
    generation (x-transformers' `AutoregressiveWrapper` contract).

    `forward(seq)` returns the scalar loss of predicting `seq[:, 1:]` from
    `seq[:, :-1]`; `generate(prompts, seq_len)` returns the prompt followed by
    `seq_len` new tokens. `tokenizer` (a `tokenizers.Tokenizer`) and
    `eos_token_id` travel with the checkpoint when set."""

    def __init__(
        self,
        net: TransformerWrapper,
        ignore_index: int = -100,
        pad_value: int = 0,
        mask_prob: float = 0.0,
        add_attn_z_loss: bool = False,
        next_embed_loss_weight: float = 0.1,
    ):
        super().__init__()
        if not isinstance(net, TransformerWrapper):
            raise ValueError("net must be an axw TransformerWrapper")
        if not 0.0 <= mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in [0, 1): it is the fraction of keys hidden, got {mask_prob}")
        if next_embed_loss_weight < 0:
            raise ValueError(f"next_embed_loss_weight must be >= 0, got {next_embed_loss_weight}")
        if not 0 <= pad_value < net.num_tokens:
            raise ValueError(f"pad_value must be a token id in [0, {net.num_tokens}), got {pad_value}")
        self.net = net
        self.max_seq_len = net.max_seq_len
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.mask_prob = mask_prob
        self.add_attn_z_loss = add_attn_z_loss
        self.add_continuous_pred_head = net.add_continuous_pred_head
        self.next_embed_loss_weight = next_embed_loss_weight
        self.tokenizer = None
        self.eos_token_id: int | None = None

    @property
    def config(self) -> dict:
        return dict(
            ignore_index=self.ignore_index, pad_value=self.pad_value, mask_prob=self.mask_prob,
            add_attn_z_loss=self.add_attn_z_loss, next_embed_loss_weight=self.next_embed_loss_weight,
        )

    @property
    def device(self) -> torch.device:
        return self.net.token_emb.weight.device

    def forward(
        self,
        x: Tensor,
        return_outputs: bool = False,
        prepend_embeds: Tensor | None = None,
        lens: Tensor | None = None,
        **kwargs,
    ):
        """Scalar loss of `x` (batch, n); `return_outputs=True` gives
        `(loss, (logits, intermediates))`."""
        self._check_tokens(x, "x", allow_ignore=True)
        if x.shape[1] < 2:
            raise ValueError(f"x needs at least 2 tokens per row (input and target), got {x.shape[1]}")
        if exists(lens) and (lens.shape != (x.shape[0],) or (lens < 0).any() or (lens > x.shape[1]).any()):
            raise ValueError(f"lens must be ({x.shape[0]},) lengths in [0, {x.shape[1]}]")
        return autoregressive_loss(
            self.net, x,
            ignore_index=self.ignore_index, pad_value=self.pad_value, mask_prob=self.mask_prob,
            add_attn_z_loss=self.add_attn_z_loss, next_embed_loss_weight=self.next_embed_loss_weight,
            lens=lens, prepend_embeds=prepend_embeds, return_outputs=return_outputs, **kwargs,
        )

    def _check_tokens(self, x, name: str, allow_ignore: bool = False):
        if not isinstance(x, Tensor) or x.dtype not in (torch.long, torch.int, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"{name} must be an integer tensor of token ids")
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, seq), got {tuple(x.shape)}")
        valid = (x >= 0) & (x < self.net.num_tokens)
        if allow_ignore:
            valid |= x == self.ignore_index
        if not bool(valid.all()):
            raise ValueError(f"{name} holds token ids outside the vocabulary [0, {self.net.num_tokens})")

    # --- checkpoints ---

    def save_pretrained(self, folder: str | os.PathLike, model_card: str | None = None):
        """Write `config.json`, `model.safetensors` and `tokenizer.json` (if a
        tokenizer is attached) in the Hugging Face Hub layout."""
        return hub.save_pretrained(self, folder, model_card=model_card)

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False,
                    commit_message: str = "Upload axw model", model_card: str | None = None) -> str:
        """Upload to the Hub as `repo_id` (created if missing); the token is used
        for this call only."""
        return hub.push_to_hub(self, repo_id, token=token, private=private,
                               commit_message=commit_message, model_card=model_card)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None,
                        token: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None,
                        cache_dir: str | os.PathLike | None = None) -> AutoregressiveWrapper:
        """Load a local folder or a Hub repo id (downloaded with huggingface_hub,
        or taken from its cache). The tokenizer, if the checkpoint has one, is
        attached as `.tokenizer`."""
        folder = hub.resolve(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir)
        config = hub.read_config(folder)
        if config.get("format") == hub.FORMAT:
            model = cls._from_axw_folder(folder, config)
        elif "model_type" in config:
            from .convert import from_transformers_folder

            model = from_transformers_folder(cls, folder, config)
        else:
            raise ValueError(f"{folder / hub.CONFIG_NAME} is neither an axw nor a transformers config")
        model.tokenizer = hub.load_tokenizer(folder)
        if exists(device) or exists(dtype):
            model.to(device=device, dtype=dtype)
        return model.eval()

    @classmethod
    def _from_axw_folder(cls, folder, config: dict) -> AutoregressiveWrapper:
        if config.get("format_version", 1) > hub.FORMAT_VERSION:
            raise ValueError(f"{folder} was written by a newer axw (format {config['format_version']})")
        net = TransformerWrapper(**config["net"], attn_layers=Decoder(**config["attn_layers"]))
        model = cls(net, **config.get("wrapper", {}))
        state = hub.load_safetensors(folder)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        model.eos_token_id = config.get("eos_token_id")
        return model
