"""The trainer's command line, `python -m axw.train`: its options, the run
they describe, a progress line and the model card of the checkpoints.

    python -m axw.train --data assets/data/tinyshakespeare.txt --out runs/m --vocab-size 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from .train_checkpoint import check_out_dir, check_unfinished, read_trainer_state
from .train_dist import (
    Ranks,
    TrainingStopped,
    check_ranks,
    checked,
    on_main_first,
    process_group,
    same_on_every_rank,
)
from .train_loop import TrainConfig, TrainResult, check_teacher, train
from .utils import exists

class ProgressLine:
    """A compact one-line progress bar: redrawn in place on a terminal, one
    line every `every` steps in a log file."""

    def __init__(self, stream=sys.stdout, width: int = 20, every: int = 50):
        self.stream, self.width, self.every = stream, width, every
        self.tty = stream.isatty()

    def __call__(self, r: dict):
        done = r["step"] / r["steps"]
        bar = "#" * int(done * self.width)
        eta = (r["steps"] - r["step"]) * r["elapsed"] / max(r["step"] - r["start_step"], 1)
        line = (f"step {r['step']}/{r['steps']} [{bar:<{self.width}}] loss {r['loss']:.3f} lr {r['lr']:.2e} "
                f"{r['tokens_per_s']:,.0f} tok/s eta {int(eta // 60)}:{int(eta % 60):02d}")
        if "heldout_loss" in r:
            line += f" | held-out {r['heldout_loss']:.4f}/token"
            if "heldout_nats_per_char" in r:
                line += f" {r['heldout_nats_per_char']:.4f}/char"
            if "heldout_agreement" in r:
                line += f" agreement {r['heldout_agreement']:.3f}"
        if self.tty:
            end = "\n" if "heldout_loss" in r or r["step"] == r["steps"] else ""
            self.stream.write("\r" + line.ljust(120) + end)
        elif "heldout_loss" in r or r["step"] % self.every == 0:
            self.stream.write(line + "\n")
        self.stream.flush()


DEFAULT_VOCAB_SIZE = 1024
# a new model's shape; --init takes the model's own, so these flags are None unless given
MODEL_DEFAULTS = dict(dim=256, depth=4, heads=4, dim_head=None, ff_mult=4.0, max_seq_len=256, dropout=0.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m axw.train", description="Train an axw language model on a text file.")
    p.add_argument("--data", required=True, help="UTF-8 text file; its last 10%% is held out")
    p.add_argument("--out", required=True,
                   help="folder for the checkpoint (a Hub model folder): new, empty, or a checkpoint of this trainer")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune this model (a folder, a Hub id, or a transformers folder of an imported family) "
                        "instead of a new one: its config and tokenizer; not with the model and tokenizer flags")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard the model's parameters, gradients and optimizer state across the "
                        "ranks (FSDP2), for models that do not fit one device; default: DDP")
    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", help="tokenizer.json to use (default: train one on the training split)")
    tok.add_argument("--vocab-size", type=int, default=None,
                     help=f"byte-level BPE vocabulary when training one (default {DEFAULT_VOCAB_SIZE})")
    dist = p.add_argument_group("distillation")
    dist.add_argument("--teacher", help="model folder whose logits the model learns (its tokenizer is used)")
    dist.add_argument("--generated-data",
                      help="safetensors file of token windows ('ids', rows x length), e.g. the teacher's "
                           "continuations from scripts/teacher_continuations.py; with --generated-fraction")
    net = p.add_argument_group("model")
    net.add_argument("--dim", type=int, help="default 256")
    net.add_argument("--depth", type=int, help="default 4")
    net.add_argument("--heads", type=int, help="default 4")
    net.add_argument("--dim-head", type=int, default=None, help="default dim / heads")
    net.add_argument("--ff-mult", type=float, help="default 4")
    net.add_argument("--max-seq-len", type=int, help="default 256")
    net.add_argument("--dropout", type=float, help="attention, feed-forward and embedding dropout (default 0)")
    net.add_argument("--abs-pos-emb", action="store_true",
                     help="absolute positions instead of rotary ones (then decoding stops at max_seq_len)")
    opt = p.add_argument_group("training")
    for f in fields(TrainConfig):
        if f.name in ("out_dir",):
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        # None means "not given": the TrainConfig default, or on --resume the saved value
        opt.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                         help=f"default {f.default}" if f.default is not None else None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p


def load_generated(path) -> Tensor:
    """The `ids` tensor (rows x length) of a safetensors file of token windows."""
    if not Path(path).is_file():
        raise ValueError(f"--generated-data {path} is not a file")
    tensors = load_file(path)
    if "ids" not in tensors:
        raise ValueError(f"{path} has no 'ids' tensor (rows x length token windows)")
    return tensors["ids"].long()


def load_teacher(path):
    from .wrapper import AutoregressiveWrapper

    if not Path(path).is_dir():
        raise ValueError(f"--teacher {path} is not a model folder")
    teacher = AutoregressiveWrapper.from_pretrained(path)
    if teacher.tokenizer is None:
        raise ValueError(f"--teacher {path} has no tokenizer.json; the student must share the teacher's tokenizer")
    return teacher


def _model_flags(args: argparse.Namespace) -> list[str]:
    """The model and tokenizer flags given; the model flags not given take MODEL_DEFAULTS."""
    given = [f"--{name.replace('_', '-')}" for name in (*MODEL_DEFAULTS, "vocab_size", "tokenizer")
             if getattr(args, name) is not None]
    given += ["--abs-pos-emb"] if args.abs_pos_emb else []
    for name, value in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return given


def _check_init_flags(args: argparse.Namespace, given: list[str]):
    if exists(args.init) and given:
        raise ValueError(f"--init {args.init} fine-tunes that model as it is, with its own config and tokenizer: "
                         f"drop {', '.join(given)}")
    if exists(args.init) and args.resume:
        raise ValueError("--resume continues the model of the checkpoint in --out: drop --init")


def _run_config(args: argparse.Namespace, state: dict, ranks: Ranks) -> TrainConfig:
    """The run's TrainConfig from the flags given and, on --resume, the
    checkpoint's `state`; checked, with the output folder and the ranks,
    before any tokenizer or model work."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name != "out_dir" and getattr(args, f.name) is not None}
    saved = {k: v for k, v in state.get("config", {}).items() if k != "out_dir"}
    # a resumed run keeps its saved settings unless a flag overrides one
    config = TrainConfig(**{**saved, **given}, out_dir=args.out)
    config.validate()
    check_ranks(ranks, config.batch_size, config.grad_accum, config.device)
    if ranks.is_main:  # rank 0 alone writes there
        check_out_dir(args.out)
    if args.resume:
        check_unfinished(args.out, state["step"], config.steps, option="--steps")
    return config


def _check_distill_flags(config: TrainConfig, teacher_path: str | None, generated_path: str | None):
    """ValueError for distillation and data flags that do not go together."""
    if not exists(teacher_path) and (config.distill_alpha != 1.0 or config.distill_temperature != 1.0):
        raise ValueError("--distill-alpha and --distill-temperature need a --teacher")
    if exists(generated_path) != (config.generated_fraction > 0):
        raise ValueError("--generated-data and --generated-fraction (> 0) go together: give both or neither")


def _set_threads(args: argparse.Namespace):
    if exists(args.threads):
        if args.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)


def _new_decoder(args: argparse.Namespace):
    """The Decoder of a new model, after checking the tokenizer and model flags."""
    from .transformer import Decoder

    if exists(args.tokenizer) and not Path(args.tokenizer).is_file():
        raise ValueError(f"--tokenizer {args.tokenizer} is not a file")
    if exists(args.vocab_size) and args.vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + end-of-text), got {args.vocab_size}")
    if args.dim % args.heads and args.dim_head is None:
        raise ValueError(f"dim ({args.dim}) must be divisible by heads ({args.heads}), or pass --dim-head")
    if args.max_seq_len < 1:
        raise ValueError(f"max_seq_len must be a positive integer, got {args.max_seq_len}")
    return Decoder(dim=args.dim, depth=args.depth, heads=args.heads,
                   dim_head=args.dim_head or args.dim // args.heads, ff_mult=args.ff_mult,
                   attn_dropout=args.dropout, ff_dropout=args.dropout, rotary_pos_emb=not args.abs_pos_emb)


def _check_teacher_tokenizer(args: argparse.Namespace, teacher):
    """ValueError if --vocab-size or --tokenizer contradicts the teacher's tokenizer, which a new student uses."""
    vocab = teacher.tokenizer.get_vocab_size()
    if exists(args.vocab_size) and args.vocab_size != vocab:
        raise ValueError(f"--vocab-size {args.vocab_size} differs from the teacher's vocabulary ({vocab}); "
                         "with --teacher the model uses the teacher's tokenizer")
    if exists(args.tokenizer):
        from tokenizers import Tokenizer

        if Tokenizer.from_file(args.tokenizer).get_vocab() != teacher.tokenizer.get_vocab():
            raise ValueError(f"--tokenizer {args.tokenizer} differs from the teacher's tokenizer; "
                             "distillation needs the same token ids")


def _resolve_init(name: str):
    """The local folder of --init's model (downloaded if a Hub id), or a ValueError saying why not."""
    from .hub import read_config, resolve

    try:
        folder = resolve(name)
    except OSError as e:
        raise ValueError(f"--init {name}: {e}") from e
    except ValueError as e:
        raise ValueError(f"--init {name}: {e}; give a model folder or a Hub id") from e
    read_config(folder)
    return folder


def _load_or_build_model(args: argparse.Namespace, config: TrainConfig, text: str, decoder, teacher, init_folder):
    """The checkpoint's model on --resume, --init's model, else a new one
    around `decoder` with the teacher's tokenizer, the --tokenizer file or one
    trained on the training split; checked against `config`."""
    from .data import eos_id, split_text, train_tokenizer
    from .transformer import TransformerWrapper
    from .wrapper import AutoregressiveWrapper

    if args.resume or exists(init_folder):
        model = AutoregressiveWrapper.from_pretrained(args.out if args.resume else init_folder)
        if model.tokenizer is None:
            raise ValueError(f"--init {args.init} has no tokenizer.json: fine-tuning reads the text with the "
                             "model's own tokenizer")
        config.validate(model)
        return model
    if exists(teacher):
        tokenizer = teacher.tokenizer
    elif exists(args.tokenizer):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
    else:
        tokenizer = train_tokenizer(split_text(text)[0], args.vocab_size or DEFAULT_VOCAB_SIZE)
    net = TransformerWrapper(num_tokens=tokenizer.get_vocab_size(), max_seq_len=args.max_seq_len,
                             attn_layers=decoder, emb_dropout=args.dropout, use_abs_pos_emb=args.abs_pos_emb)
    model = AutoregressiveWrapper(net)
    model.tokenizer = tokenizer
    model.eos_token_id = eos_id(tokenizer)
    config.validate(model)
    return model


def _run_state(args: argparse.Namespace, argv: list[str], state: dict, teacher_path: str | None,
               generated_path: str | None, ranks: Ranks) -> tuple[list[str], dict]:
    """(every command of the run so far, the extra state its checkpoints keep)."""
    command = "python -m axw.train " + " ".join(argv)
    if ranks.world > 1:
        command += f"  # under torchrun, {ranks.world} ranks" + (", FSDP" if ranks.fsdp else ", DDP")
    commands = state.get("commands", []) + [command]
    extra = {"commands": commands}
    # the teacher and generated data are re-read from these paths on --resume
    if exists(teacher_path):
        extra["teacher"] = teacher_path
    if exists(generated_path):
        extra["generated_data"] = generated_path
    if exists(args.init or state.get("init")):
        extra["init"] = args.init or state["init"]
    return commands, extra


def _reporters(model, config: TrainConfig, commands: list[str], params: int, extra: dict, state: dict,
               ranks: Ranks):
    """(model card writer, progress callback) of a run starting now."""
    # wall time of earlier invocations, so a resumed run's card reports the whole run
    previous_seconds = next((r["total_seconds"] for r in reversed(state.get("history", []))
                             if "total_seconds" in r), 0.0)
    began = time.perf_counter()

    def card(record: dict) -> str:
        return model_card(model, config, commands, record, params, time.perf_counter() - began + previous_seconds,
                          teacher=extra.get("teacher"), init=extra.get("init"), ranks=ranks)

    progress = ProgressLine()

    def on_progress(record):
        record["total_seconds"] = previous_seconds + time.perf_counter() - began
        if ranks.is_main:
            progress(record)

    return card, on_progress


@dataclass
class _Inputs:
    """What a run reads before it trains: the model, the token ids, the teacher and generated windows."""
    model: object
    train_ids: Tensor
    heldout_ids: Tensor
    heldout_text: str
    teacher: object = None
    generated: Tensor | None = None


def _prepare(args: argparse.Namespace, config: TrainConfig, teacher_path: str | None,
             generated_path: str | None, init_folder) -> _Inputs:
    """Read the data, the teacher and generated windows, and build or load the model; checked throughout."""
    from .data import encode_split, read_text

    _check_distill_flags(config, teacher_path, generated_path)
    _set_threads(args)
    text = read_text(args.data)
    decoder = None if args.resume or exists(init_folder) else _new_decoder(args)
    generated = load_generated(generated_path) if exists(generated_path) else None
    teacher = load_teacher(teacher_path) if exists(teacher_path) else None
    if exists(teacher) and exists(decoder):
        _check_teacher_tokenizer(args, teacher)

    torch.manual_seed(config.seed)  # the same new model on every rank
    model = _load_or_build_model(args, config, text, decoder, teacher, init_folder)
    if exists(teacher):
        check_teacher(model, teacher, config.seq_len or model.max_seq_len)
    train_ids, heldout_ids, heldout_text = encode_split(text, model.tokenizer)
    return _Inputs(model, train_ids, heldout_ids, heldout_text, teacher, generated)


def _describe(inputs: _Inputs, config: TrainConfig, params: int, teacher_path: str | None, ranks: Ranks) -> str:
    tokenizer, heldout_ids, generated = inputs.model.tokenizer, inputs.heldout_ids, inputs.generated
    where = f"{torch.get_num_threads()} threads on {config.device}"
    if ranks.world > 1:
        where += f", {ranks.world} ranks ({'FSDP' if ranks.fsdp else 'DDP'}, {config.batch_size // ranks.world} rows each)"
    return (f"{params / 1e6:.2f}M parameters, vocabulary {tokenizer.get_vocab_size()}, "
            f"{inputs.train_ids.numel():,} training / {heldout_ids.numel():,} held-out tokens "
            f"({len(inputs.heldout_text) / (heldout_ids.numel() - 1):.2f} characters per token), {where}"
            + (f", teacher {teacher_path}" if exists(inputs.teacher) else "")
            + (f", {generated.shape[0]:,} generated windows of {generated.shape[1]}" if exists(generated) else ""))


@contextmanager
def _stop_on_sigterm(ranks: Ranks):
    """Under torchrun, SIGTERM (sent to every rank when one fails) ends this
    rank with a message; a checkpoint being written stays whole."""
    if ranks.world == 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TrainingStopped(f"rank {ranks.rank} of {ranks.world} received SIGTERM "
                              "(torchrun stops every rank when one fails)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> TrainResult:
    """`python -m axw.train` with `argv` (default: the process's arguments);
    under torchrun, on every rank."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _check_init_flags(args, _model_flags(args))
    with process_group() as ranks:
        ranks = replace(ranks, fsdp=args.fsdp)
        with _stop_on_sigterm(ranks):
            return _main(args, argv, ranks)


def _main(args: argparse.Namespace, argv: list[str], ranks: Ranks) -> TrainResult:
    # resume only reads a checkpoint (rank 0 first: reading may finish a save cut short)
    state = on_main_first(ranks, lambda: read_trainer_state(args.out)) if args.resume else {}
    # every argument is checked before any tokenizer or model work
    config = on_main_first(ranks, lambda: _run_config(args, state, ranks))
    teacher_path = args.teacher or state.get("teacher")
    generated_path = args.generated_data or state.get("generated_data")
    init_folder = on_main_first(ranks, lambda: _resolve_init(args.init)) if exists(args.init) else None
    inputs = checked(ranks, lambda: _prepare(args, config, teacher_path, generated_path, init_folder))
    model = inputs.model
    if not same_on_every_rank(ranks, model.tokenizer.to_str()):  # each rank made or read its own
        raise ValueError("the ranks' tokenizers differ: give them one with --tokenizer FILE")
    params = sum(p.numel() for p in model.parameters())
    if ranks.is_main:
        print(_describe(inputs, config, params, teacher_path, ranks), flush=True)

    commands, extra = _run_state(args, argv, state, teacher_path, generated_path, ranks)
    card, on_progress = _reporters(model, config, commands, params, extra, state, ranks)
    result = train(model, inputs.train_ids, inputs.heldout_ids, config, callback=on_progress,
                   resume=args.out if args.resume else None, heldout_chars=len(inputs.heldout_text),
                   model_card=card, extra_state=extra, teacher=inputs.teacher, generated=inputs.generated,
                   fsdp=args.fsdp)
    line = f"done: {result.step} steps in {result.seconds:.0f} s"
    if exists(result.heldout_loss):
        line += f", held-out {result.heldout_loss:.4f} nats/token, {result.heldout_nats_per_char:.4f} nats/char"
    if exists(result.heldout_agreement):
        line += f", agreement with the teacher {result.heldout_agreement:.4f}"
    if ranks.is_main:
        print(f"{line}; saved to {args.out}")
    return result


def model_card(model, config: TrainConfig, commands: list[str], record: dict, params: int, seconds: float,
               teacher: str | None = None, init: str | None = None, ranks: Ranks | None = None) -> str:
    net, layers = model.net.config, model.net.attn_layers.config
    heldout = f"Fine-tuned from `{init}`.\n\n" if exists(init) else ""
    if "heldout_nats_per_char" in record:
        heldout += (f"Held-out loss (last 10% of the characters, never trained on): "
                   f"**{record['heldout_nats_per_char']:.4f} nats per character** "
                   f"({record['heldout_loss']:.4f} nats per token) after step {record['step']}.\n\n")
    if exists(teacher):
        heldout += (f"Distilled from `{teacher}` (KL at temperature {config.distill_temperature}, weight "
                    f"{config.distill_alpha}; cross-entropy weight {1 - config.distill_alpha:g}).\n\n")
    if "heldout_agreement" in record:
        heldout += (f"Its argmax is the teacher's on {record['heldout_agreement']:.2%} of the held-out tokens "
                    "(teacher-forced).\n\n")
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    device = config.device if config.device != "cpu" else f"CPU ({cpu}, {threads} thread{'s' * (threads > 1)})"
    if exists(ranks) and ranks.world > 1:
        device += f" x {ranks.world} ranks ({'FSDP' if ranks.fsdp else 'DDP'})"
    return f"""---
library_name: axw
license: mit
tags: [axw, text-generation, tiny-shakespeare]
---
# axw model

{params / 1e6:.2f}M-parameter decoder trained with `axw.train`.

{heldout}## Config

- vocabulary {net['num_tokens']} (byte-level BPE), max_seq_len {net['max_seq_len']}, absolute positions {net['use_abs_pos_emb']}
- dim {layers['dim']}, depth {layers['depth']}, heads {layers['heads']} x {layers['dim_head']}, \
feed-forward {layers['ff_inner_dim']}, rotary {layers['rotary_pos_emb']}, dropout {layers['ff_dropout']}
- training: {json.dumps({k: v for k, v in asdict(config).items() if k != 'out_dir'})}

## How it was made

```
{chr(10).join(commands)}
```

Hardware: {device}, torch {torch.__version__}. Wall time: {seconds / 60:.1f} minutes.
"""
