"""`AutoregressiveWrapper`: the training loss and generation around a
`TransformerWrapper`, with Hub checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from typing import Callable, Iterator

from . import chat, hub
from .tokenizer import Tokenizer, load as load_tokenizer
from .attention import KVCache
from .generation import Decoding, GenerateOutput, Step
from .runtime import prompt_cut, read_prompt
from .generation_config import GenerationConfig
from .loss import autoregressive_loss
from .transformer import Decoder, TransformerWrapper, refuse_x_transformers_keys
from .utils import ConfigMixin, build_config, check_flag, check_number, eval_mode, exists


def is_transformers_config(config) -> bool:
    """A transformers `GenerationConfig` (read by its module, so transformers is never imported here)."""
    return type(config).__name__ == "GenerationConfig" and type(config).__module__.startswith("transformers")


# what generate takes beside the settings: models and inputs
DECODING_OBJECTS = ("amateur_model", "assistant_model", "assistant_datastore", "prompt_lens", "generator",
                    "cache")
# transformers' arguments of generate (axw.specs.TRANSFORMERS_GENERATE_ARGUMENTS) that a run takes; stream yields
# its steps itself (no streamer) and keeps no scores, and beam search refuses a streamer, as transformers' does
RUN_ARGUMENTS = ("attention_mask", "pad_token_id", "num_return_sequences", "output_scores", "output_logits")
NOT_TAKEN = {
    "stream": {"streamer": "stream yields each step itself: iterate over it instead of passing a streamer",
               "output_scores": "stream yields Steps: trace=True records each step's distribution, stage by stage",
               "output_logits": "stream yields Steps: trace=True records each step's logits"},
    "beam_search": {"streamer": "a streamer shows each step's token, but beam search's best beam may change at any "
                                "step (transformers refuses it too)"},
}


def generate_arguments(method: str, prompts, overrides: dict) -> tuple[object, dict]:
    """The prompts (given first, or as transformers' `input_ids=` / `inputs=`) and the run's arguments among
    transformers' arguments of generate, popped from `overrides` (None: the default, as in transformers); a
    ValueError for one `method` does not take."""
    for name, why in NOT_TAKEN.get(method, {}).items():
        if name in overrides:
            raise ValueError(f"{method} takes no {name}: {why}")
    for name in ("input_ids", "inputs"):
        if name in overrides:
            if prompts is not None:
                raise ValueError(f"the prompts are given twice: first and as {name}=; give one")
            prompts = overrides.pop(name)
    if prompts is None:
        raise ValueError(f"{method} needs prompts: token ids (batch, n) or (n,), a list of 1-D prompts, or input_ids=")
    run = {k: overrides.pop(k) for k in RUN_ARGUMENTS if k in overrides}
    run = {k: v for k, v in run.items() if v is not None}
    for name in ("output_scores", "output_logits"):
        check_flag(run.get(name, False), name)
    return prompts, run


def _models(run: Decoding) -> list:
    """The other networks a run uses (amateurs, a draft), for eval mode."""
    return [*run.amateurs, *([run.assistant] if run.assistant is not None else [])]


@dataclass
class WrapperConfig(ConfigMixin):
    """Every option of `AutoregressiveWrapper` but its `net`."""

    ignore_index: int = -100
    pad_value: int = 0
    mask_prob: float = 0.0
    add_attn_z_loss: bool = False
    next_embed_loss_weight: float = 0.1

    ALIASES = {}
    NO_OPS = {}

    def __post_init__(self):
        check_number(self.ignore_index, "ignore_index", integer=True)
        check_number(self.pad_value, "pad_value", 0, integer=True, allowed="a token id >= 0")
        if not (isinstance(self.mask_prob, (int, float)) and 0.0 <= self.mask_prob < 1.0):
            raise ValueError(f"mask_prob must be in [0, 1): it is the fraction of keys hidden, got {self.mask_prob}")
        check_number(self.next_embed_loss_weight, "next_embed_loss_weight", 0)


class AutoregressiveWrapper(nn.Module):
    """Wraps a decoder-only `TransformerWrapper` for next-token training and
    generation (x-transformers' `AutoregressiveWrapper` contract).

    `forward(seq)` returns the scalar loss of predicting `seq[:, 1:]` from
    `seq[:, :-1]`; `generate(prompts, seq_len)` returns the prompt followed by
    `seq_len` new tokens. `tokenizer` (a `tokenizers.Tokenizer`),
    `eos_token_id` and `generation_config` (the model's default decoding
    settings) travel with the checkpoint when set. Options: `WrapperConfig`."""

    def __init__(self, net: TransformerWrapper, *args, **kwargs):
        super().__init__()
        if not isinstance(net, TransformerWrapper):
            raise ValueError("net must be an axw TransformerWrapper")
        config = build_config(WrapperConfig, args, kwargs, "AutoregressiveWrapper")
        if not config.pad_value < net.num_tokens:
            raise ValueError(f"pad_value must be a token id in [0, {net.num_tokens}), got {config.pad_value}")
        self.net = net
        self.max_seq_len = net.max_seq_len
        for f in fields(WrapperConfig):  # the live values; `config` reads them back
            setattr(self, f.name, getattr(config, f.name))
        self.add_continuous_pred_head = net.add_continuous_pred_head
        self.tokenizer = None
        self.eos_token_id: int | None = None
        self.generation_config: GenerationConfig | None = None
        self.chat_template: chat.ChatTemplate | None = None
        self.stop_token_ids: list[int] = []

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, after a check that these are not
        x-transformers' weights (`axw.from_x_transformers` converts those)."""
        refuse_x_transformers_keys(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer: an `axw.Tokenizer` (transformers' calls on a `tokenizers.Tokenizer`, which is
        its `.backend`); a `tokenizers.Tokenizer` assigned here is wrapped in one."""
        return self.__dict__.get("_tokenizer")

    @tokenizer.setter
    def tokenizer(self, value):
        from tokenizers import Tokenizer as Backend

        if isinstance(value, Backend):
            eos = getattr(self, "eos_token_id", None)
            eos = value.id_to_token(eos) if isinstance(eos, int) and not isinstance(eos, bool) else None
            value = Tokenizer(value, eos_token=eos)
        self.__dict__["_tokenizer"] = value

    @property
    def config(self) -> WrapperConfig:
        return WrapperConfig(**{f.name: getattr(self, f.name) for f in fields(WrapperConfig)})

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

    def _decoding(self, prompts, seq_len, generation_config, overrides: dict, strategy: str | None = None,
                  base: GenerationConfig | None = None, method: str = "generate") -> Decoding:
        """Where keyword arguments meet the settings: the config given (else
        the method's own defaults, else the model's `generation_config.json`,
        else GenerationConfig's), with the keyword arguments on top; the model
        objects and inputs (transformers' among them) go beside it."""
        prompts, run_arguments = generate_arguments(method, prompts, overrides)
        if is_transformers_config(generation_config):
            generation_config = GenerationConfig.from_transformers(generation_config)
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise ValueError(
                f"the third argument is a GenerationConfig, got {generation_config!r}: pass other settings by name "
                "(eos_token=..., temperature=...)")
        objects = {k: overrides.pop(k) for k in DECODING_OBJECTS if k in overrides}
        config = (generation_config or base or self.generation_config or GenerationConfig()).update(**overrides)
        if seq_len is None:
            if config.max_new_tokens is None:
                raise ValueError("how many tokens? give seq_len (the second argument) or max_new_tokens")
            seq_len = config.max_new_tokens
        return Decoding(self, prompts, seq_len, config, strategy=strategy, **objects, **run_arguments)

    @torch.no_grad()
    def generate(self, prompts: Tensor | list[Tensor] | None = None, seq_len: int | None = None,
                 generation_config: GenerationConfig | None = None, *, return_dict_in_generate: bool = False,
                 **kwargs) -> Tensor | GenerateOutput:
        """The prompt followed by `seq_len` generated tokens: (batch, prompt + seq_len),
        or 1-D for a 1-D prompt (`max_new_tokens=` says the same, as in transformers). A list of 1-D prompts of
        different lengths is left-padded with `pad_value`; each row continues as its prompt alone would.

        Settings: a `GenerationConfig` and/or its fields as keyword arguments
        (these win): `temperature` (0 = greedy), `filter_logits_fn` (a name or
        callable from `axw.filters`, or a list chained in order with a list of
        `filter_kwargs`), `sampler_order`, `beams` > 1 (beam search),
        `penalty_alpha` (contrastive search over `contrastive_k` candidates),
        penalties, `seed`, `eos_token` (rows stop there; what follows is
        `pad_value`), ... or transformers' names for them
        (`axw.specs.TRANSFORMERS_ALIASES`). Beside them: `amateur_model` (contrastive decoding),
        `assistant_model`, `assistant_datastore` (an `NgramDatastore`) or
        `prompt_lookup_num_tokens` (speculative decoding), `prompt_lens`, `generator`, and `cache`: a `KVCache` the
        run fills (`net.new_cache()`) or continues from (`prefill`, or a
        `fork()` of an earlier run's cropped to where a branch starts).
        `return_dict_in_generate=True` returns a `GenerateOutput`: the
        sequences with the beams and their scores (beam search) or the
        counts (speculative decoding).

        transformers' arguments (`axw.specs.TRANSFORMERS_GENERATE_ARGUMENTS`), so `generate(**tokenizer(texts,
        return_tensors="pt", padding=True), max_new_tokens=...)` works:
        - `input_ids` (or `inputs`): the prompts.
        - `attention_mask` (batch, n): 1 on each row's tokens, 0 on padding. Left padding (transformers' layout
          for generation): the output is (batch, n + seq_len) starting with `input_ids` as given, each row's new
          tokens the ones its prompt alone gets. Right padding: each row's prompt comes back moved to the end of
          the first n columns, left-padded with the pad (the layout of the same prompts as a list), its new
          tokens after it.
        - `pad_token_id`: the pad of this call (left padding, and after a row's EOS) instead of `pad_value`.
        - `streamer`: `streamer.put(prompt)` with the (1, n) prompt, then `put(tokens)` with each step's (1,)
          new token, then `end()` (transformers' `TextStreamer`, `TextIteratorStreamer`, ...); one row only,
          and not beam search, as in transformers.
        - `num_return_sequences`: sampling: each prompt's row repeated that many times (rows of one prompt
          together), each its own sample; beam search: each prompt's that many best beams, best first (and their
          scores as `sequences_scores`). Greedy decoding and contrastive search refuse more than 1.
        - `output_scores` / `output_logits` (with `return_dict_in_generate=True`): each step's scores and raw
          logits in the `GenerateOutput` (see there what each strategy gives)."""
        check_flag(return_dict_in_generate, "return_dict_in_generate")
        streamer = kwargs.pop("streamer", None)
        run = self._decoding(prompts, seq_len, generation_config, kwargs)
        _refuse_trace(run.config, "generate")
        check_output(run, return_dict_in_generate)
        if streamer is not None:
            check_streamer(streamer, run)
        with eval_mode(self, *_models(run)):
            if streamer is not None:
                feed(run, streamer)
            return run.result() if return_dict_in_generate else run.output()

    @torch.no_grad()
    def beam_search(self, prompts: Tensor | list[Tensor] | None = None, seq_len: int | None = None,
                    beams: int | None = None, return_beams_and_scores: bool = False,
                    generation_config: GenerationConfig | None = None, *, return_dict_in_generate: bool = False,
                    **kwargs):
        """Beam search: the best beam, (batch, prompt + seq_len); with
        `return_beams_and_scores`, all beams best first as (beams, batch, prompt +
        seq_len) and their (beams, batch) scores, summed token log-probs
        (divided by length ** length_penalty when it is not 0). EOS ends a
        hypothesis. A beam of one is greedy search. `stochastic=True` is
        stochastic beam search (Kool et al. 2019) over the filtered, tempered
        distribution: the beams are a sample without replacement of sequences.
        Defaults: 4 beams, no filter. `return_dict_in_generate=True` returns
        a `GenerateOutput`, as `generate` does; transformers' arguments as in
        `generate` but `streamer` (`num_return_sequences`: each prompt's best
        beams, (batch * n, prompt + seq_len))."""
        check_flag(return_dict_in_generate, "return_dict_in_generate")
        if beams is not None:
            kwargs["beams"] = beams
        run = self._decoding(prompts, seq_len, generation_config, kwargs, strategy="beam",
                             base=GenerationConfig(beams=4, filter_logits_fn=None), method="beam_search")
        _refuse_trace(run.config, "beam_search")
        check_output(run, return_dict_in_generate)
        with eval_mode(self):
            if return_dict_in_generate:
                return run.result()
            if return_beams_and_scores:
                return run.beams_and_scores()
            return run.output()

    def stream(self, prompts: Tensor | list[Tensor] | None = None, seq_len: int | None = None,
               generation_config: GenerationConfig | None = None, **kwargs) -> Iterator[Step]:
        """Like `generate`, but yields a `Step` as each token is chosen; stop
        early by breaking out of the loop. `trace=True` attaches the teaching
        trace to each step. Arguments are checked here, before the first step;
        transformers' `input_ids`, `attention_mask`, `pad_token_id` and (sampling)
        `num_return_sequences` as in `generate`."""
        run = self._decoding(prompts, seq_len, generation_config, kwargs, method="stream")
        if run.strategy == "beam" and run.num_return > 1:
            raise ValueError("stream yields each prompt's best beam: num_return_sequences > 1 of beam search is "
                             "generate's or beam_search's")
        return _stream(run, [self, *_models(run)])

    @torch.no_grad()
    def prefill(self, ids: Tensor, prompt_len: int | None = None) -> KVCache:
        """A KV cache holding `ids` ((batch, n), or 1-D for one row) as a run
        reads them, in one forward: pass it as `cache=` to `generate` or
        `stream` with a prompt that goes on past `ids`, and only the rest
        runs. `prompt_len`: how many of the first ids were a run's prompt
        (default: all of them); a prompt past max_seq_len is cut to its last
        max_seq_len tokens as a run cuts it (the cache's `offset` counts the
        ones left out), and the ids after it are read as tokens it generated.
        A what-if branch from an earlier step of a run continues from such a
        cache, or from a `fork()` of the run's own cache cropped (`crop`) to it."""
        if isinstance(ids, Tensor) and ids.ndim == 1:
            ids = ids[None]
        self._check_tokens(ids, "ids")
        n = ids.shape[1]
        if n == 0:
            raise ValueError("ids must hold at least one token")
        prompt_len = n if prompt_len is None else check_number(prompt_len, "prompt_len", 1, n, integer=True)
        net = self.net
        cut = prompt_cut(net, prompt_len)
        if n - cut > net.max_seq_len and not net.can_cache_kv_outside_max_seq_len:
            raise ValueError(f"{n - cut} tokens to read are past max_seq_len={net.max_seq_len} of a model with "
                             "absolute positions")
        cache = net.new_cache()
        with eval_mode(self):
            read_prompt(net, ids.long(), cache, cut=cut)
        return cache

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

    # --- chat ---

    def apply_chat_template(self, conversation: list[dict] | list[list[dict]], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool | str = False,
                            tokenize: bool = True, return_tensors: str | None = None, return_dict: bool = False,
                            **kwargs):
        """Lay chat messages out with the model's chat template, as
        transformers' `tokenizer.apply_chat_template` does (same arguments, and
        the same text and ids: it is the reference behaviour).

        `conversation` is a list of {"role", "content"} messages (or a list of
        such lists). `add_generation_prompt` appends the start of an assistant
        turn; `continue_final_message` leaves the last message open instead.
        `tools` (JSON schemas), `documents` and other keyword arguments are
        passed to the template. `tokenize=False` gives the text; else its ids
        (a list, or a (1, n) tensor with `return_tensors="pt"`; with
        `return_dict=True`, a dict of `input_ids` and `attention_mask`), the
        special tokens the template writes encoded whole and none added, so a
        template that starts with the BOS token yields one BOS. A model with no
        template, or a template that refuses the messages, is a ValueError."""
        return chat.apply_chat_template(self.chat_template, self.tokenizer, "model", conversation, tools=tools,
                                        documents=documents, chat_template=chat_template,
                                        add_generation_prompt=add_generation_prompt,
                                        continue_final_message=continue_final_message, tokenize=tokenize,
                                        return_tensors=return_tensors, return_dict=return_dict, **kwargs)

    # --- checkpoints ---

    def save_pretrained(self, folder: str | os.PathLike, model_card: str | None = None,
                        dtype: torch.dtype | None = None):
        """Write `config.json`, `model.safetensors`, and `tokenizer.json`,
        `generation_config.json` and the chat template (`chat_template.jinja`
        and `tokenizer_config.json`) when they are set, in the Hugging Face Hub layout. `dtype`
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
                        cache_dir: str | os.PathLike | None = None,
                        progress: Callable[[list[hub.Bar]], None] | None = None) -> AutoregressiveWrapper:
        """Load a local folder or a Hub repo id (downloaded with huggingface_hub,
        or taken from its cache; `progress` is given the download's progress
        bars as they move, `axw.hub.resolve`). The tokenizer, if the checkpoint has one, is
        attached as `.tokenizer` (an `axw.Tokenizer`); its `generation_config.json`, if it has one,
        as `.generation_config` (the defaults `generate` and `stream` use); its
        chat template, if it has one, as `.chat_template`."""
        folder = hub.resolve(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir, progress=progress,
                             check=lambda config: check_config(config, path_or_repo_id))
        config = hub.read_config(folder)
        check_config(config, folder / hub.CONFIG_NAME)
        if config.get("format") == hub.FORMAT:
            model = cls._from_axw_folder(folder, config)
        else:
            from .convert import from_transformers_folder

            model = from_transformers_folder(cls, folder, config)
        model.generation_config = hub.load_generation_config(folder)
        model.chat_template = chat.ChatTemplate.from_pretrained(folder)
        model.tokenizer = load_tokenizer(folder, model.chat_template)
        # an axw folder keeps the list it was saved with; else it is made from the checkpoint's files
        model.stop_token_ids = config.get("stop_token_ids") or chat.stop_token_ids(
            folder, config, model.tokenizer, model.net.num_tokens)
        if exists(device) or exists(dtype):
            model.to(device=device, dtype=dtype)
        return model.eval()

    @classmethod
    def _from_axw_folder(cls, folder, config: dict) -> AutoregressiveWrapper:
        net = TransformerWrapper(**config["net"], attn_layers=Decoder(**config["attn_layers"]))
        model = cls(net, **config.get("wrapper", {}))
        state = hub.load_safetensors(folder)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        model.eos_token_id = config.get("eos_token_id")
        return model


def _refuse_trace(config: GenerationConfig, method: str):
    """The trace is handed out step by step, so only `stream` records it."""
    if config.trace:
        raise ValueError(f"{method} returns only the tokens and would drop the trace: use "
                         "stream(..., trace=True), which yields each step with its trace")


def check_output(run: Decoding, return_dict_in_generate: bool):
    """Per-step scores and logits come in the `GenerateOutput`: they need `return_dict_in_generate`."""
    if (run.kept_scores is not None or run.kept_logits is not None) and not return_dict_in_generate:
        raise ValueError("output_scores / output_logits come in the GenerateOutput: pass return_dict_in_generate=True "
                         "too")


def check_streamer(streamer, run: Decoding):
    """transformers' streamer protocol, on one row and a strategy whose tokens stay once chosen."""
    if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise ValueError(f"streamer must have put(ids) and end() (transformers' BaseStreamer), got "
                         f"{type(streamer).__name__}")
    if run.strategy == "beam":
        raise ValueError("a streamer shows each step's token, but beam search's best beam may change at any step "
                         "(transformers refuses it too): stream(...) yields beam search's best beam step by step")
    if run.tokens.shape[0] != 1:
        raise ValueError(f"a streamer streams one row (as in transformers), got {run.tokens.shape[0]} rows")


def feed(run: Decoding, streamer):
    """Run with transformers' streamer protocol: the prompt, then each step's token, then end()."""
    streamer.put((run.given if exists(run.given) else run.tokens).cpu())
    for step in run:
        streamer.put(step.tokens.cpu())
    streamer.end()


@torch.no_grad()
def _stream(run: Decoding, modules: list) -> Iterator[Step]:
    with eval_mode(*modules):
        yield from run


def check_config(config: dict, source) -> None:
    """A ValueError for a config.json (of `source`) axw cannot load, read before any weights: a newer axw
    format, a transformers family axw does not import (the message lists those it does), or an option of its
    family axw does not implement (a rope scaling type, ...)."""
    if config.get("format") == hub.FORMAT:
        if config.get("format_version", 1) > hub.FORMAT_VERSION:
            raise ValueError(f"{source} was written by a newer axw (format {config['format_version']})")
    elif "model_type" in config:
        from .convert import transformers_arguments

        transformers_arguments(config)
    else:
        raise ValueError(f"{source} is neither an axw nor a transformers config")
