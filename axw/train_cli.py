"""The trainer's command line, `python -m axw.train`: its options, the run
they describe, a progress line and the model card of the checkpoints.

    python -m axw.train --data assets/data/tinyshakespeare.txt --out runs/m --vocab-size 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from .train_checkpoint import check_out_dir, check_unfinished, read_trainer_state
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m axw.train", description="Train an axw language model on a text file.")
    p.add_argument("--data", required=True, help="UTF-8 text file; its last 10%% is held out")
    p.add_argument("--out", required=True,
                   help="folder for the checkpoint (a Hub model folder): new, empty, or a checkpoint of this trainer")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
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
    net.add_argument("--dim", type=int, default=256)
    net.add_argument("--depth", type=int, default=4)
    net.add_argument("--heads", type=int, default=4)
    net.add_argument("--dim-head", type=int, default=None, help="default dim / heads")
    net.add_argument("--ff-mult", type=float, default=4)
    net.add_argument("--max-seq-len", type=int, default=256)
    net.add_argument("--dropout", type=float, default=0.0, help="attention, feed-forward and embedding dropout")
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


def _run_config(args: argparse.Namespace, state: dict) -> TrainConfig:
    """The run's TrainConfig from the flags given and, on --resume, the
    checkpoint's `state`; checked, with the output folder, before any
    tokenizer or model work."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name != "out_dir" and getattr(args, f.name) is not None}
    saved = {k: v for k, v in state.get("config", {}).items() if k != "out_dir"}
    # a resumed run keeps its saved settings unless a flag overrides one
    config = TrainConfig(**{**saved, **given}, out_dir=args.out)
    config.validate()
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


def _load_or_build_model(args: argparse.Namespace, config: TrainConfig, text: str, decoder, teacher):
    """The checkpoint's model on --resume, else a new one around `decoder`
    with the teacher's tokenizer, the --tokenizer file or one trained on the
    training split; checked against `config`."""
    from .data import eos_id, split_text, train_tokenizer
    from .transformer import TransformerWrapper
    from .wrapper import AutoregressiveWrapper

    if args.resume:
        model = AutoregressiveWrapper.from_pretrained(args.out)
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
              generated_path: str | None) -> tuple[list[str], dict]:
    """(every command of the run so far, the extra state its checkpoints keep)."""
    commands = state.get("commands", []) + ["python -m axw.train " + " ".join(argv)]
    extra = {"commands": commands}
    # the teacher and generated data are re-read from these paths on --resume
    if exists(teacher_path):
        extra["teacher"] = teacher_path
    if exists(generated_path):
        extra["generated_data"] = generated_path
    return commands, extra


def _reporters(model, config: TrainConfig, commands: list[str], params: int, teacher_path: str | None, state: dict):
    """(model card writer, progress callback) of a run starting now."""
    # wall time of earlier invocations, so a resumed run's card reports the whole run
    previous_seconds = next((r["total_seconds"] for r in reversed(state.get("history", []))
                             if "total_seconds" in r), 0.0)
    began = time.perf_counter()

    def card(record: dict) -> str:
        return model_card(model, config, commands, record, params, time.perf_counter() - began + previous_seconds,
                          teacher=teacher_path)

    progress = ProgressLine()

    def on_progress(record):
        record["total_seconds"] = previous_seconds + time.perf_counter() - began
        progress(record)

    return card, on_progress


def main(argv: list[str] | None = None) -> TrainResult:
    """`python -m axw.train` with `argv` (default: the process's arguments)."""
    from .data import encode_split, read_text

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # resume only reads a checkpoint: anything else is refused here
    state = read_trainer_state(args.out) if args.resume else {}
    # every argument is checked before any tokenizer or model work
    config = _run_config(args, state)
    teacher_path = args.teacher or state.get("teacher")
    generated_path = args.generated_data or state.get("generated_data")
    _check_distill_flags(config, teacher_path, generated_path)
    _set_threads(args)
    text = read_text(args.data)
    decoder = None if args.resume else _new_decoder(args)
    generated = load_generated(generated_path) if exists(generated_path) else None
    teacher = load_teacher(teacher_path) if exists(teacher_path) else None
    if exists(teacher) and not args.resume:
        _check_teacher_tokenizer(args, teacher)

    torch.manual_seed(config.seed)
    model = _load_or_build_model(args, config, text, decoder, teacher)
    tokenizer = model.tokenizer
    if exists(teacher):
        check_teacher(model, teacher, config.seq_len or model.max_seq_len)
    train_ids, heldout_ids, heldout_text = encode_split(text, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters, vocabulary {tokenizer.get_vocab_size()}, "
          f"{train_ids.numel():,} training / {heldout_ids.numel():,} held-out tokens "
          f"({len(heldout_text) / (heldout_ids.numel() - 1):.2f} characters per token), "
          f"{torch.get_num_threads()} threads on {config.device}"
          + (f", teacher {teacher_path}" if exists(teacher) else "")
          + (f", {generated.shape[0]:,} generated windows of {generated.shape[1]}" if exists(generated) else ""),
          flush=True)

    commands, extra = _run_state(args, argv, state, teacher_path, generated_path)
    card, on_progress = _reporters(model, config, commands, params, teacher_path, state)
    result = train(model, train_ids, heldout_ids, config, callback=on_progress, resume=args.out if args.resume else None,
                   heldout_chars=len(heldout_text), model_card=card, extra_state=extra, teacher=teacher,
                   generated=generated)
    line = f"done: {result.step} steps in {result.seconds:.0f} s"
    if exists(result.heldout_loss):
        line += f", held-out {result.heldout_loss:.4f} nats/token, {result.heldout_nats_per_char:.4f} nats/char"
    if exists(result.heldout_agreement):
        line += f", agreement with the teacher {result.heldout_agreement:.4f}"
    print(f"{line}; saved to {args.out}")
    return result


def model_card(model, config: TrainConfig, commands: list[str], record: dict, params: int, seconds: float,
               teacher: str | None = None) -> str:
    net, layers = model.net.config, model.net.attn_layers.config
    heldout = ""
    if "heldout_nats_per_char" in record:
        heldout = (f"Held-out loss (last 10% of the characters, never trained on): "
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
