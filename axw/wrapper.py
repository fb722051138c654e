"""`AutoregressiveWrapper`: the training loss and generation around a
`TransformerWrapper`, with Hub checkpoints."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from typing import Callable, Iterator

from . import hub
from .filters import identity, top_k
from .generation import Decoding, Step
from .loss import autoregressive_loss
from .transformer import Decoder, TransformerWrapper
from .utils import eval_mode, exists


def _amateurs(amateur_model) -> list:
    if amateur_model is None:
        return []
    return list(amateur_model) if isinstance(amateur_model, (list, tuple)) else [amateur_model]


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

    # --- generation ---

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor | list[Tensor],
        seq_len: int,
        eos_token: int | None = None,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable | list = top_k,
        filter_kwargs: dict | list = dict(),
        prompt_lens: Tensor | None = None,
        restrict_to_max_seq_len: bool = True,
        amateur_model=None,
        contrastive_decode_kwargs: dict | list = dict(beta=0.5, alpha=0.1),
        cache_kv: bool = True,
        beams: int = 1,
        penalty_alpha: float | None = None,
        contrastive_k: int = 4,
        **kwargs,
    ) -> Tensor:
        """The prompt followed by `seq_len` generated tokens: (batch, prompt + seq_len),
        or 1-D for a 1-D prompt. A list of 1-D prompts of different lengths is
        left-padded with `pad_value`; each row continues as its prompt alone would.

        Strategy: sampling at `temperature` (0 = greedy) through
        `filter_logits_fn` (a name or callable from `axw.filters`, or a list
        chained in order with a list of `filter_kwargs`); `beams > 1`: beam
        search; `penalty_alpha` in [0, 1]: contrastive search over
        `contrastive_k` candidates; `amateur_model`: contrastive decoding.

        More keyword arguments: `repetition_penalty` (1 = off),
        `no_repeat_ngram_size` (0 = off), `length_penalty` and `stochastic` (beam
        search), `seed` or `generator` (reproducible sampling). Rows stop at
        `eos_token`; what follows it is `pad_value`."""
        run = Decoding(
            self, prompts, seq_len, eos_token=eos_token, temperature=temperature,
            filter_logits_fn=filter_logits_fn, filter_kwargs=filter_kwargs, prompt_lens=prompt_lens,
            restrict_to_max_seq_len=restrict_to_max_seq_len, amateur_model=amateur_model,
            contrastive_decode_kwargs=contrastive_decode_kwargs, cache_kv=cache_kv, beams=beams,
            penalty_alpha=penalty_alpha, contrastive_k=contrastive_k, **kwargs,
        )
        with eval_mode(self, *_amateurs(amateur_model)):
            return run.output()

    @torch.no_grad()
    def beam_search(
        self,
        prompts: Tensor | list[Tensor],
        seq_len: int,
        beams: int = 4,
        return_beams_and_scores: bool = False,
        eos_token: int | None = None,
        length_penalty: float = 0.0,
        stochastic: bool = False,
        temperature: float = 1.0,
        filter_logits_fn: str | Callable | list = identity,
        filter_kwargs: dict | list = dict(),
        **kwargs,
    ):
        """Beam search: the best beam, (batch, prompt + seq_len); with
        `return_beams_and_scores`, all beams best first as (beams, batch, prompt +
        seq_len) and their (beams, batch) scores, summed token log-probs
        (divided by length ** length_penalty when it is not 0). EOS ends a
        hypothesis. `stochastic=True` picks beams by Gumbel-top-k over the
        filtered, tempered distribution instead of the top scores."""
        run = Decoding(
            self, prompts, seq_len, beams=beams, eos_token=eos_token, length_penalty=length_penalty,
            stochastic=stochastic, temperature=temperature, filter_logits_fn=filter_logits_fn,
            filter_kwargs=filter_kwargs, **kwargs,
        )
        with eval_mode(self):
            if return_beams_and_scores:
                return run.beams_and_scores()
            return run.output()

    def stream(self, prompts: Tensor | list[Tensor], seq_len: int, **kwargs) -> Iterator[Step]:
        """Like `generate`, but yields a `Step` as each token is chosen; stop
        early by breaking out of the loop. `trace=True` attaches the teaching
        trace to each step. Arguments are checked here, before the first step."""
        run = Decoding(self, prompts, seq_len, **kwargs)
        return _stream(run, [self, *_amateurs(kwargs.get("amateur_model"))])

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

    def save_pretrained(self, folder: str | os.PathLike, model_card: str | None = None,
                        dtype: torch.dtype | None = None):
        """Write `config.json`, `model.safetensors` and `tokenizer.json` (if a
        tokenizer is attached) in the Hugging Face Hub layout. `dtype`
        (float32, float16 or bfloat16) stores the weights in that precision;
        `from_pretrained` loads them into the model's own, float32 unless told."""
        return hub.save_pretrained(self, folder, model_card=model_card, dtype=dtype)

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


@torch.no_grad()
def _stream(run: Decoding, modules: list) -> Iterator[Step]:
    with eval_mode(*modules):
        yield from run
