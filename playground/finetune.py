"""Fine-tuning, per visitor: uploads checked, a deep copy trained in a worker thread, the result zipped."""

from __future__ import annotations

import copy
import queue
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import torch

from axw.train import TrainConfig, evaluate, train

from . import models
from .caps import MAX_BATCH_SIZE, MAX_FINETUNE_STEPS, MAX_TRAIN_CHARS, MAX_UPLOAD_BYTES
from .settings import number

HELDOUT_DIVISOR = 10  # the last 1/HELDOUT_DIVISOR of the text's tokens is held out
HELDOUT_EVAL_TOKENS = 2048  # held-out tokens scored per evaluation (its first ones), so each costs little
START_OVER = "the base model (start over)"
CONTINUE = "my fine-tuned copy (continue)"
START_FROM = [START_OVER, CONTINUE]


def read_upload(path) -> str:
    """The text of an uploaded file, refused if too big, not .txt or binary."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".md", ""):
        raise ValueError(f"upload a plain-text .txt file, not {path.suffix}")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the file has {size:,} bytes; at most {MAX_UPLOAD_BYTES:,} are allowed")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError("the file is binary, not text: upload a UTF-8 .txt file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text: upload a UTF-8 .txt file") from None


def finetune_setup(model, text: str, steps, learning_rate, batch_size, context_length, mask_prob, seed=0):
    """Check the fine-tune request and return (train_ids, TrainConfig), before
    any compute."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no training text: paste some text or upload a .txt file")
    if len(text) > MAX_TRAIN_CHARS:
        raise ValueError(f"the text has {len(text):,} characters; at most {MAX_TRAIN_CHARS:,} are allowed")
    steps = number("steps", steps, 1, MAX_FINETUNE_STEPS, integer=True)
    lr = number("learning rate", learning_rate, 1e-6, 1e-1)
    batch_size = number("batch size", batch_size, 1, MAX_BATCH_SIZE, integer=True)
    context = number("context length", context_length, 8, model.max_seq_len, integer=True)
    mask_prob = number("mask_prob", mask_prob, 0.0, 0.9)
    seed = number("seed", seed, 0, 2**31 - 1, integer=True)
    ids = torch.tensor(model.tokenizer.encode(text).ids, dtype=torch.long)
    if ids.numel() < context + 1:
        raise ValueError(f"the text is {ids.numel()} tokens long; a training window needs context length + 1 = "
                         f"{context + 1}: add text or shorten the context length")
    # the held-out slice (when there is one: split_heldout) is scored before the first step, every tenth of
    # the run and at its end
    config = TrainConfig(steps=steps, batch_size=batch_size, seq_len=context, lr=lr,
                         warmup_steps=min(10, max(1, steps // 10)), mask_prob=mask_prob,
                         eval_every=max(1, steps // 10), eval_tokens=HELDOUT_EVAL_TOKENS, seed=seed,
                         device=str(model.device))
    return ids, config


def split_heldout(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    """(training ids, held-out ids, None): the text's last tenth of tokens held out, so its loss shows what the
    model learned that carries over to text it does not train on; or (all ids, None, why there is no held-out
    slice) when that tenth is shorter than one window of context + 1 tokens."""
    held = ids.numel() // HELDOUT_DIVISOR
    if held < context + 1:
        return ids, None, (f"no held-out curve: the last tenth of your text is {held} tokens, shorter than one window "
                           f"(context length + 1 = {context + 1}); with at least {HELDOUT_DIVISOR * (context + 1)} "
                           "tokens of text, or a shorter context length, its last tenth is held out")
    return ids[:-held], ids[-held:], None


def loss_curves(history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training, held-out) losses as (step, loss) in step order, from the training loop's progress records: one
    training loss per step (a run stopped early reports its last step again, with its held-out loss), and the
    held-out loss where it was scored, before the first step included."""
    train_curve, heldout = {}, {}
    for r in history:
        if "loss" in r:  # the held-out evaluation before the first step has none
            train_curve[r["step"]] = r["loss"]
        if r.get("heldout_loss") is not None:
            heldout[r["step"]] = r["heldout_loss"]
    return sorted(train_curve.items()), sorted(heldout.items())


class FineTune:
    """One visitor's fine-tune: a deep copy of `base` trained in a worker thread, so no other visitor's model ever
    changes. With `heldout_ids` they are scored before the first step, then by the loop every `config.eval_every`
    steps. To continue an earlier fine-tune, `base` is its copy and `earlier` its records: the copy is copied
    again (a failed run leaves it as it was) and the steps number on from the earlier ones."""

    def __init__(self, base, train_ids, config: TrainConfig, heldout_ids=None, earlier: list[dict] | None = None):
        self.model = copy.deepcopy(base).float()  # train in fp32 even when serving in bf16
        self.base_name = None
        self.train_ids, self.heldout_ids, self.config = train_ids, heldout_ids, config
        self.start_step = earlier[-1]["step"] if earlier else 0
        self.continued = earlier is not None
        self.stop = threading.Event()
        self.records: queue.Queue = queue.Queue()
        self.history: list[dict] = list(earlier or [])
        self.first_heldout: dict | None = None
        self.result = None
        self.error: BaseException | None = None
        # set once training has ended (finished, stopped or failed): until then the thread may be about to train
        # the copy or be training it, and nobody else may use it (not even to flip it into eval mode)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def steps(self) -> int:
        """Steps trained in all, earlier runs included."""
        return self.start_step + (self.result.step if self.result is not None else 0)

    def _record(self, record: dict):
        record = dict(record, step=record["step"] + self.start_step, steps=record["steps"] + self.start_step)
        if "loss" not in record:  # the held-out loss before the first step: reported with that step's record, so
            self.first_heldout = record  # that any record says training is under way
            return
        if self.first_heldout is not None:
            self.records.put(self.first_heldout)
            self.first_heldout = None
        self.records.put(record)

    def _run(self):
        try:
            if self.heldout_ids is not None and not self.stop.is_set():
                # where the held-out curve starts, by the loop's own evaluation (train scores it every eval_every
                # steps from then on)
                c = self.config
                total, count = evaluate(self.model, self.heldout_ids, c.seq_len, c.eval_batch_size, c.eval_tokens,
                                        c.device)
                self._record(dict(step=0, steps=c.steps, heldout_loss=total / count))
            self.result = train(self.model, self.train_ids, self.heldout_ids, self.config, callback=self._record,
                                should_stop=self.stop.is_set)
        except BaseException as e:  # reported to the visitor by the waiting handler
            self.error = e
            if isinstance(e, models.OutOfMemoryError):
                models.free_memory()
        finally:
            self.model.eval()
            # the token ids of a 2 MB text are not kept for the session's life
            self.train_ids = self.heldout_ids = None
            self.done.set()
            self.records.put(None)

    def run(self, poll: float = 0.25):
        """Start, then yield the list of progress records every `poll` seconds
        (and at the end) until training ends."""
        self.thread.start()
        done = False
        while not done:
            try:
                record = self.records.get(timeout=poll)
            except queue.Empty:
                yield self.history
                continue
            while True:
                if record is None:
                    done = True
                    break
                self.history.append(record)
                try:
                    record = self.records.get_nowait()
                except queue.Empty:
                    break
            yield self.history
        self.thread.join()
        if isinstance(self.error, models.OutOfMemoryError):
            raise ValueError(f"fine-tuning failed: {models.OOM_MESSAGE}")
        if self.error is not None:
            raise ValueError(f"fine-tuning failed: {self.error}")


def model_zip(model, name: str = "axw-finetuned") -> str:
    """The model as a Hub-format folder (save_pretrained) in a zip; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="axw-"))
    model.save_pretrained(folder / name, model_card=f"# {name}\n\nFine-tuned in the axw playground.\n")
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((folder / name).iterdir()):
            z.write(f, f"{name}/{f.name}")
    shutil.rmtree(folder / name)
    return str(path)
