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

from axw.train import TrainConfig, train

from . import models
from .caps import MAX_BATCH_SIZE, MAX_FINETUNE_STEPS, MAX_TRAIN_CHARS, MAX_UPLOAD_BYTES
from .settings import number


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
    config = TrainConfig(steps=steps, batch_size=batch_size, seq_len=context, lr=lr,
                         warmup_steps=min(10, max(1, steps // 10)), mask_prob=mask_prob, eval_every=0, seed=seed,
                         device=str(model.device))
    return ids, config


class FineTune:
    """One visitor's fine-tune: a deep copy of the base model trained in a
    worker thread, so no other visitor's model ever changes."""

    def __init__(self, base, train_ids, config: TrainConfig):
        self.model = copy.deepcopy(base).float()  # train in fp32 even when serving in bf16
        self.base_name = None
        self.train_ids, self.config = train_ids, config
        self.stop = threading.Event()
        self.records: queue.Queue = queue.Queue()
        self.history: list[dict] = []
        self.result = None
        self.error: BaseException | None = None
        # set once training has ended (finished, stopped or failed): until then the thread may be about to train
        # the copy or be training it, and nobody else may use it (not even to flip it into eval mode)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.result = train(self.model, self.train_ids, None, self.config, callback=self.records.put,
                                should_stop=self.stop.is_set)
        except BaseException as e:  # reported to the visitor by the waiting handler
            self.error = e
            if isinstance(e, models.OutOfMemoryError):
                models.free_memory()
        finally:
            self.model.eval()
            self.train_ids = None  # the token ids of a 2 MB text are not kept for the session's life
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
