"""The training loop, shared by the command line (`axw.train_cli`) and the app's fine-tune tab.

`train(model, train_ids, heldout_ids, config)` samples random windows of
`seq_len + 1` tokens, steps AdamW under linear warmup and cosine decay with
gradient clipping, reports progress through `callback` and stops when
`should_stop()` says so. Its checkpoints (`axw.train_checkpoint`) are Hub
model folders with the optimizer and RNG state beside them, so a resumed run
continues exactly where it left off. With a `teacher` it distils: the
teacher's logits become the target.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import train_dist
from .loss import distillation_loss, random_key_mask
from .train_checkpoint import (
    check_out_dir,
    check_unfinished,
    load_optimizer,
    load_weights,
    read_trainer_state,
    save_checkpoint,
)
from .train_dist import Ranks, TrainingStopped
from .utils import check_number, eval_mode, exists


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # rows per step in all; under torchrun each rank reads batch_size / world of them
    grad_accum: int = 1  # micro-batches each rank's rows are split into, one backward each
    seq_len: int | None = None  # tokens read per window; default the model's max_seq_len
    lr: float = 1e-3
    min_lr: float | None = None  # where the cosine ends; default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    mask_prob: float | None = None  # fraction of keys hidden in training; None keeps the model's
    eval_every: int = 200  # steps between held-out evaluations; 0: only at the end
    eval_tokens: int | None = None  # held-out tokens scored per evaluation; None: all
    eval_batch_size: int = 16
    checkpoint_every: int = 0  # steps between checkpoints in out_dir; 0: only at the end
    out_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    # distillation (with a teacher): loss = alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * cross-entropy
    distill_temperature: float = 1.0
    distill_alpha: float = 1.0
    generated_fraction: float = 0.0  # share of each batch cut from `generated` windows (teacher continuations)

    def validate(self, model=None):
        """Raise ValueError naming the first bad field and what is allowed."""
        for name in ("steps", "batch_size", "grad_accum", "eval_batch_size"):
            check_number(getattr(self, name), name, 1, integer=True)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            check_number(getattr(self, name), name, 0, integer=True)
        for name in ("seq_len", "eval_tokens"):
            if exists(getattr(self, name)):
                check_number(getattr(self, name), name, 1, integer=True)
        check_number(self.lr, "lr", 0, low_open=True)
        if exists(self.min_lr):
            check_number(self.min_lr, "min_lr", 0, self.lr, allowed=f"in [0, lr={self.lr}]")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) cannot exceed steps ({self.steps})")
        for name in ("weight_decay", "beta1", "beta2"):
            check_number(getattr(self, name), name, 0, 1, high_open=True)
        check_number(self.grad_clip, "grad_clip", 0, allowed="a finite number >= 0 (0 turns clipping off)")
        if exists(self.mask_prob):
            check_number(self.mask_prob, "mask_prob", 0, 1, high_open=True)
        check_number(self.distill_temperature, "distill_temperature", 0, low_open=True)
        check_number(self.distill_alpha, "distill_alpha", 0, 1)
        check_number(self.generated_fraction, "generated_fraction", 0, 1)
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from e
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device is 'cuda' but no CUDA device is available")
        if exists(model) and exists(self.seq_len) and self.seq_len > model.max_seq_len:
            raise ValueError(f"seq_len ({self.seq_len}) cannot exceed the model's max_seq_len ({model.max_seq_len})")
        return self

    def resolved_min_lr(self) -> float:
        return self.min_lr if exists(self.min_lr) else self.lr / 10


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of step `step` (0-based): linear warmup from lr/warmup to
    lr over `warmup_steps`, then half a cosine from lr down to min_lr at the
    last step (Loshchilov & Hutter 2016, arXiv:1608.03983, without restarts)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    min_lr = config.resolved_min_lr()
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)


def step_generator(seed: int, step: int, stream: int, device="cpu") -> torch.Generator:
    """A random source of one step (stream 0: its windows, on the CPU; 1: its
    masks, on the device), a function of (seed, step, stream) only, so a
    resumed run draws what the uninterrupted one did."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 2 + stream)


def random_windows(ids: Tensor, batch_size: int, length: int, generator: torch.Generator) -> Tensor:
    """`batch_size` windows of `length` consecutive tokens at uniform random starts."""
    if ids.numel() < length:
        raise ValueError(f"need at least {length} tokens to cut windows of that length, got {ids.numel()}")
    starts = torch.randint(0, ids.numel() - length + 1, (batch_size,), generator=generator)
    return ids[starts[:, None] + torch.arange(length)]


def _autocast(device: torch.device):
    # bf16 on the GPU (no loss scaling needed); plain fp32 on the CPU
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def evaluate(model, ids: Tensor, seq_len: int, batch_size: int = 16, max_tokens: int | None = None,
             device: str | torch.device | None = None) -> tuple[float, int]:
    """(total NLL in nats, tokens scored) of `ids`, cut into consecutive
    windows of seq_len + 1 that overlap by one token, so every token after the
    first is predicted exactly once from up to `seq_len` tokens before it."""
    total, count, _ = score(model, ids, seq_len, batch_size, max_tokens, device)
    return total, count


@torch.no_grad()
def score(model, ids: Tensor, seq_len: int, batch_size: int = 16, max_tokens: int | None = None,
          device: str | torch.device | None = None, argmax: bool = False) -> tuple[float, int, Tensor | None]:
    """`evaluate`'s (total NLL, count), and with `argmax` the model's top-1
    prediction for each scored token, in order (1-D, `count` long)."""
    device = torch.device(device) if exists(device) else model.device
    if exists(max_tokens):
        ids = ids[: max_tokens + 1]
    n = ids.numel() - 1
    if n < 1:
        raise ValueError("need at least 2 held-out tokens to score")
    total, count, tops = 0.0, 0, []
    with eval_mode(model):
        starts = range(0, n, seq_len)
        full = [s for s in starts if s + seq_len + 1 <= ids.numel()]
        groups = [ids[torch.tensor(full[i:i + batch_size])[:, None] + torch.arange(seq_len + 1)]
                  for i in range(0, len(full), batch_size)]
        if len(full) < len(starts):  # the shorter last window
            groups.append(ids[starts[-1]:].unsqueeze(0))
        for windows in groups:
            windows = windows.to(device)
            with _autocast(device):
                logits = model.net(windows[:, :-1])
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                                  reduction="sum")
            total += nll.item()
            count += windows[:, 1:].numel()
            if argmax:
                tops.append(logits.argmax(dim=-1).reshape(-1).cpu())
    return total, count, torch.cat(tops) if argmax else None


def check_teacher(model, teacher, seq_len: int):
    """ValueError unless `teacher` can score what `model` trains on: the same
    vocabulary (the same tokenizer, where both carry one) and a context of
    at least `seq_len`."""
    if not hasattr(teacher, "net") or not hasattr(teacher.net, "num_tokens"):
        raise ValueError("teacher must be an AutoregressiveWrapper")
    if teacher.net.num_tokens != model.net.num_tokens:
        raise ValueError(f"the teacher's vocabulary ({teacher.net.num_tokens} tokens) differs from the student's "
                         f"({model.net.num_tokens}): distillation needs the teacher's tokenizer")
    tokenizers = (getattr(model, "tokenizer", None), getattr(teacher, "tokenizer", None))
    if all(exists(t) for t in tokenizers) and tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise ValueError("the student's tokenizer differs from the teacher's: distillation needs the same token ids")
    if seq_len > teacher.max_seq_len:
        raise ValueError(f"seq_len ({seq_len}) exceeds the teacher's max_seq_len ({teacher.max_seq_len})")


def generated_windows(generated: Tensor, count: int, length: int, generator: torch.Generator) -> Tensor:
    """`count` windows of `length` tokens from random rows of `generated`
    (rows, row_length), at random offsets when rows are longer."""
    rows = torch.randint(0, generated.shape[0], (count,), generator=generator)
    offsets = torch.randint(0, generated.shape[1] - length + 1, (count,), generator=generator)
    return generated[rows[:, None], offsets[:, None] + torch.arange(length)]


@dataclass
class TrainResult:
    step: int  # steps done in total (a resumed run counts the earlier ones)
    stopped: bool  # ended by should_stop before the last step
    loss: float | None  # last training loss
    heldout_loss: float | None  # nats per token at the end
    heldout_nats_per_char: float | None
    seconds: float  # wall time of this call
    history: list  # every progress record passed to callback
    heldout_agreement: float | None = None  # with a teacher: share of held-out tokens where both argmaxes agree


def param_groups(model, weight_decay: float):
    """Decay matrices (weights, embeddings), not gains and biases."""
    named = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2))



def _check_inputs(model, train_ids: Tensor, heldout_ids: Tensor | None, config: TrainConfig, seq_len: int,
                 teacher=None, generated: Tensor | None = None):
    """ValueError, before any compute, unless `train` can run on these token
    ids, `generated` windows and `teacher` (see `train`)."""
    for name, ids in (("train_ids", train_ids), ("heldout_ids", heldout_ids), ("generated", generated)):
        if ids is None and name != "train_ids":
            continue
        ndim = 2 if name == "generated" else 1
        if not isinstance(ids, Tensor) or ids.ndim != ndim or ids.dtype != torch.long:
            raise ValueError(f"{name} must be a {ndim}-D long tensor of token ids")
        if ids.numel() and (ids.min() < 0 or ids.max() >= model.net.num_tokens):
            raise ValueError(f"{name} holds ids outside the vocabulary [0, {model.net.num_tokens})")
    if train_ids.numel() < seq_len + 1:
        raise ValueError(f"train_ids has {train_ids.numel()} tokens; a window needs seq_len + 1 = {seq_len + 1}")
    if exists(heldout_ids) and heldout_ids.numel() < 2:
        raise ValueError("heldout_ids needs at least 2 tokens")
    if exists(generated) != (config.generated_fraction > 0):
        raise ValueError("generated windows and a generated_fraction > 0 go together: give both or neither")
    if exists(generated) and (generated.shape[0] < 1 or generated.shape[1] < seq_len + 1):
        raise ValueError(f"generated must hold rows of at least seq_len + 1 = {seq_len + 1} tokens, "
                         f"got shape {tuple(generated.shape)}")
    if exists(teacher):
        check_teacher(model, teacher, seq_len)
    elif config.distill_alpha != 1.0 or config.distill_temperature != 1.0:
        raise ValueError("distill_alpha and distill_temperature need a teacher")


class _Run:
    """What the steps of one `train` call share: the model (and teacher) on
    the device, wrapped for the ranks, the optimizer, the data and the history so far."""

    def __init__(self, model, config: TrainConfig, seq_len: int, train_ids: Tensor, heldout_ids: Tensor | None,
                 heldout_chars: int | None, teacher, generated: Tensor | None, resume,
                 model_card: Callable[[dict], str] | None, extra_state: dict | None, ranks: Ranks):
        self.model, self.config, self.seq_len, self.teacher = model, config, seq_len, teacher
        self.train_ids = train_ids.cpu()  # windows are cut on the CPU, then moved
        self.generated = generated.cpu() if exists(generated) else None
        self.heldout_ids, self.heldout_chars = heldout_ids, heldout_chars
        self.model_card, self.extra_state, self.ranks = model_card, extra_state, ranks
        self.device = ranks.device(config.device)
        # FSDP moves each rank's shards to the device, never the whole model
        (model if ranks.fsdp else model.to(self.device)).train()
        if exists(teacher):
            teacher.to(self.device)
        if exists(config.mask_prob):
            model.mask_prob = config.mask_prob
        self.start_step, self.history = 0, []
        if exists(resume):
            state = read_trainer_state(resume)
            self.start_step, self.history = state["step"], state["history"]
            load_weights(resume, model)  # whole, before any sharding
        self.engine = train_dist.wrap(model, ranks, self.device)  # what the steps call
        self.optimizer = make_optimizer(model, config)
        if exists(resume):
            load_optimizer(resume, model, self.optimizer, place=train_dist.place_moment)
        self.step = self.start_step  # steps done so far
        self.saved_step = self.start_step if exists(resume) else None  # of the checkpoint on disk
        self.n_generated = round(config.batch_size * config.generated_fraction) if exists(generated) else 0
        self.teacher_top1 = None  # the teacher's held-out argmax, computed at the first evaluation
        self.began = time.perf_counter()  # the call's wall time and throughput leave out this setup

    def batch(self, step: int) -> Tensor:
        """This rank's rows of step `step`'s windows of seq_len + 1 tokens, on
        the device: every rank draws the whole batch and keeps its rows."""
        config, length = self.config, self.seq_len + 1
        windows = step_generator(config.seed, step, 0)
        batch = random_windows(self.train_ids, config.batch_size - self.n_generated, length, windows)
        if self.n_generated:  # drawn after the text windows, so runs without them draw what they always did
            batch = torch.cat((batch, generated_windows(self.generated, self.n_generated, length, windows)))
        return batch[self.ranks.rows(config.batch_size)].to(self.device)

    def key_mask(self, step: int) -> Tensor | None:
        """This rank's rows of the keys kept by masked training (`mask_prob`),
        drawn for the whole batch as one process draws them; None without masking."""
        if not self.model.mask_prob > 0:
            return None
        generator = step_generator(self.config.seed, step, 1, self.device)
        keep = random_key_mask(self.config.batch_size, self.seq_len, self.model.mask_prob, self.device, generator)
        return keep[self.ranks.rows(self.config.batch_size)]

    def micro_loss(self, rows: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(loss, distillation KL or None) of some rows, each a mean over their tokens."""
        config, teacher = self.config, self.teacher
        kwargs = {} if keep is None else {"self_attn_kv_mask": keep}
        with _autocast(self.device):
            if not exists(teacher):
                return self.engine(rows, **kwargs), None
            loss, (logits, _) = self.engine(rows, return_outputs=True, **kwargs)
            with torch.no_grad():
                teacher_logits = teacher.net(rows[:, :-1])
            kl = distillation_loss(logits, teacher_logits, config.distill_temperature)
            return config.distill_alpha * kl + (1 - config.distill_alpha) * loss, kl

    def optimizer_step(self, step: int, lr: float) -> dict:
        """One update at learning rate `lr`: its loss and, with a teacher, the
        distillation `kl` (both averaged over the ranks), and with clipping
        `grad_norm`, the gradient's global norm before clipping.

        Each rank's rows are split into `grad_accum` equal micro-batches whose
        mean losses are divided by their count, and DDP or FSDP averages the
        ranks' gradients: equal rows everywhere make that the gradient of the
        whole batch's mean loss, as one process computes it."""
        model, config, ranks = self.model, self.config, self.ranks
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch, keep, k = self.batch(step), self.key_mask(step), config.grad_accum
        rows = batch.chunk(k)
        keeps = keep.chunk(k) if exists(keep) else [None] * k
        loss_sum, kl_sum = 0.0, 0.0
        for i, (micro, micro_keep) in enumerate(zip(rows, keeps)):
            with train_dist.no_sync(self.engine, model, ranks, last=i == k - 1):
                loss, kl = self.micro_loss(micro, micro_keep)
                (loss / k).backward()
            loss_sum = loss_sum + loss.detach() / k
            kl_sum = kl_sum + kl.detach() / k if exists(kl) else None
        stats = {"loss": train_dist.mean_over_ranks(ranks, loss_sum).item()}
        if exists(kl_sum):
            stats["kl"] = train_dist.mean_over_ranks(ranks, kl_sum).item()
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            stats["grad_norm"] = train_dist.whole(norm).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def heldout_record(self) -> dict:
        """The held-out evaluation's fields of a progress record (none without held-out ids)."""
        if self.heldout_ids is None:
            return {}
        config, heldout_ids, teacher = self.config, self.heldout_ids, self.teacher
        args = (heldout_ids, self.seq_len, config.eval_batch_size, config.eval_tokens, self.device)
        total, count, top1 = score(self.model, *args, argmax=exists(teacher))
        record = {"heldout_loss": total / count}
        if exists(self.heldout_chars):
            # a capped evaluation covers about count / all tokens of the characters
            chars = self.heldout_chars * count / (heldout_ids.numel() - 1)
            record["heldout_nats_per_char"] = total / chars
        if exists(teacher):
            if self.teacher_top1 is None:
                self.teacher_top1 = score(teacher, *args, argmax=True)[2]
            record["heldout_agreement"] = (top1 == self.teacher_top1).float().mean().item()
        return record

    def checkpoint(self, step: int, record: dict):
        """Save to `config.out_dir`, if any, with the model card of `record`:
        rank 0 writes, the others wait until the checkpoint is whole."""
        if not exists(self.config.out_dir):
            return
        weights, moments = train_dist.gather_checkpoint(self.model, self.optimizer, self.ranks)

        def save():
            if self.ranks.is_main:
                card = self.model_card(record) if exists(self.model_card) else None
                save_checkpoint(self.config.out_dir, self.model, self.optimizer, step, self.config, self.history,
                                model_card=card, extra_state=self.extra_state, weights=weights, moments=moments)
                self.saved_step = step

        train_dist.checked(self.ranks, save)
        self.saved_step = step

    def report(self, record: dict, callback: Callable[[dict], None] | None, evaluate: bool) -> dict:
        """`record`, with the held-out evaluation when `evaluate` (then kept in
        the history), passed to `callback`."""
        if evaluate:
            record.update(self.heldout_record())
            self.history.append(record)
        if exists(callback):
            callback(record)
        return record


def _train_steps(run: _Run, callback, should_stop) -> tuple[int, bool, float | None, dict]:
    """Step from where `run` starts to `config.steps` or until `should_stop()`;
    evaluate and checkpoint on schedule. Returns (step, stopped, last loss, last record)."""
    config = run.config
    tokens_seen, loss_value, record, stopped = 0, None, {}, False
    step = run.start_step
    while step < config.steps:
        if exists(should_stop) and train_dist.any_rank(run.ranks, should_stop()):
            stopped = True
            break
        lr = lr_at(step, config)
        train_dist.seed_dropout(config.seed, step, run.ranks)
        stats = run.optimizer_step(step, lr)
        step += 1
        run.step = step

        loss_value = stats.pop("loss")
        tokens_seen += config.batch_size * run.seq_len  # all ranks' tokens
        elapsed = time.perf_counter() - run.began
        record = dict(step=step, steps=config.steps, loss=loss_value, lr=lr,
                      tokens_per_s=tokens_seen / max(elapsed, 1e-9), elapsed=elapsed, start_step=run.start_step,
                      **stats)
        is_last = step == config.steps
        run.report(record, callback, evaluate=(config.eval_every and step % config.eval_every == 0) or is_last)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and not is_last:
            run.checkpoint(step, record)

    if stopped and "heldout_loss" not in record and step > run.start_step:
        record = run.report(dict(record), callback, evaluate=True)
    return step, stopped, loss_value, record


def train(
    model,
    train_ids: Tensor,
    heldout_ids: Tensor | None,
    config: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: str | os.PathLike | None = None,
    heldout_chars: int | None = None,
    model_card: Callable[[dict], str] | None = None,
    extra_state: dict | None = None,
    teacher=None,
    generated: Tensor | None = None,
    fsdp: bool = False,
) -> TrainResult:
    """Train `model` (an AutoregressiveWrapper) in place on 1-D `train_ids`.

    Every step calls `callback` with a dict: step, steps, loss, lr,
    tokens_per_s and elapsed (of this call, which began at start_step), and, on evaluation steps, heldout_loss (nats per
    token) and heldout_nats_per_char (when `heldout_chars`, the character
    count of the held-out text, is given). `should_stop()` is asked before
    each step; True ends the run (with a checkpoint if `config.out_dir`).
    `resume` names a checkpoint folder to continue from. `model_card(record)`
    writes the README.md of saved checkpoints; `extra_state` (JSON) is stored
    in their training/state.json.

    Distillation: with a `teacher` (an AutoregressiveWrapper on the same
    vocabulary, moved to the device, run in eval mode without gradients), the
    loss is `distill_alpha` times `distillation_loss` of the teacher's logits
    plus 1 - `distill_alpha` times the usual cross-entropy; records then
    carry `kl` and, on evaluation steps, `heldout_agreement`, the share of
    held-out tokens where the model's argmax is the teacher's. `generated`
    (rows, length) token windows, say the teacher's continuations of
    training prompts, make up `config.generated_fraction` of each batch.

    Under torchrun (`axw.train_dist`) every rank calls `train` with the same
    arguments: each trains its rows of the global batch with DDP, or with
    the model sharded by FSDP2 when `fsdp`; every rank evaluates and gets
    the same records, rank 0 alone writes checkpoints. A rank that dies
    stops every rank with `TrainingStopped`."""
    with train_dist.process_group() as ranks:
        ranks = replace(ranks, fsdp=fsdp)
        seq_len = _checked_run(model, train_ids, heldout_ids, config, resume, teacher, generated, ranks)
        run = None
        try:
            run = _Run(model, config, seq_len, train_ids, heldout_ids, heldout_chars, teacher, generated, resume,
                       model_card, extra_state, ranks)
            with eval_mode(*([teacher] if exists(teacher) else [])):
                step, stopped, loss_value, record = _train_steps(run, callback, should_stop)
            if step > run.start_step or not exists(resume):
                run.checkpoint(step, record)
        except RuntimeError as e:  # a collective that failed, or TrainingStopped from a signal
            if not ranks.distributed:
                raise
            raise TrainingStopped(_stopped_message(ranks, run, config, e)) from e
    return TrainResult(step=step, stopped=stopped, loss=loss_value, heldout_loss=record.get("heldout_loss"),
                       heldout_nats_per_char=record.get("heldout_nats_per_char"),
                       seconds=time.perf_counter() - run.began, history=run.history,
                       heldout_agreement=record.get("heldout_agreement"))


def _checked_run(model, train_ids, heldout_ids, config: TrainConfig, resume, teacher, generated,
                 ranks: Ranks) -> int:
    """The window length, after every check `train` makes before any
    compute: on every rank, the first error raised on all of them."""

    def check():
        config.validate(model)
        train_dist.check_ranks(ranks, config.batch_size, config.grad_accum, config.device)
        seq_len = config.seq_len or model.max_seq_len
        _check_inputs(model, train_ids, heldout_ids, config, seq_len, teacher, generated)
        return seq_len

    seq_len = train_dist.checked(ranks, check)
    if exists(resume):  # reading may finish a save cut short: rank 0 first
        train_dist.on_main_first(
            ranks, lambda: check_unfinished(resume, read_trainer_state(resume)["step"], config.steps))
    if exists(config.out_dir):  # only rank 0 writes there
        train_dist.checked(ranks, lambda: check_out_dir(config.out_dir) if ranks.is_main else None)
    return seq_len


def _stopped_message(ranks: Ranks, run: _Run | None, config: TrainConfig, error: Exception) -> str:
    where = f"after step {run.step}" if exists(run) else "before its first step"
    if isinstance(error, TrainingStopped):  # says which rank already
        text = f"{error} {where}. "
    else:
        text = f"rank {ranks.rank} of {ranks.world} stopped {where}: {error}".rstrip(". ") + ". "
    if not exists(config.out_dir):
        return text + "Nothing was saved (no out_dir)."
    if not exists(run) or run.saved_step is None:
        return text + f"No checkpoint was written to {config.out_dir} yet."
    return (text + f"The checkpoint in {config.out_dir} (step {run.saved_step}) is whole: resume it, "
            "at any world size (--resume; in Python, resume=out_dir).")
