"""The trainer's crash-safe checkpoints.

A checkpoint is a Hub model folder (`save_pretrained`) plus
`training/optimizer.safetensors` (optimizer moments and RNG state) and
`training/state.json` (step, config, history): nothing is pickled. Each save
is written whole beside the folder and swapped in by renames, so a run killed
at any moment leaves the old or the new checkpoint whole; the trainer writes
only into a new or empty folder or one of its own checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .hub import save_pretrained
from .utils import exists

# beside the model files, in a subfolder that model loaders do not read
TRAINING_DIR = "training"
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "state.json"

MARKER_NAME = "checkpoint.json"  # in training/, written first: says the folder is ours and for which name
# what save_pretrained writes
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
               "tokenizer_config.json", "chat_template.jinja")
PARTIAL_STATE = STATE_NAME + ".partial"


def _siblings(folder) -> tuple[Path, Path, Path]:
    """(folder, its temp, its old): the new checkpoint is written into the
    temp, the current one is renamed to old while the temp takes its name."""
    folder = Path(folder)
    return folder, folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")


def is_checkpoint(folder) -> bool:
    """A whole checkpoint: its state.json is written last, so its presence means the rest is there."""
    return (Path(folder) / TRAINING_DIR / STATE_NAME).is_file()


def _marker_text(name: str) -> str:
    return json.dumps({"folder": name}) + "\n"


def _read_marker(side: Path) -> str | None:
    try:
        return (side / TRAINING_DIR / MARKER_NAME).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _marked_for(side: Path, name: str) -> bool:
    return _read_marker(side) == _marker_text(name)


def _holds_nothing(side: Path, name: str) -> bool:
    """Nothing but an empty training/, or one holding only a marker cut
    short: a save killed before its marker was whole, or a removal near its end."""
    entries = list(side.iterdir())
    if not entries:
        return True
    training = side / TRAINING_DIR
    if len(entries) > 1 or entries[0] != training or not training.is_dir() or training.is_symlink():
        return False
    inside = list(training.iterdir())
    if not inside:
        return True
    marker = _read_marker(side)
    cut_short = exists(marker) and _marker_text(name).startswith(marker)
    return len(inside) == 1 and inside[0].name == MARKER_NAME and cut_short


def _is_ours(side: Path, name: str) -> bool:
    """Whether sibling `side` (temp or old) of checkpoint `name` was written by this trainer."""
    return side.is_dir() and not side.is_symlink() and (_marked_for(side, name) or _holds_nothing(side, name))


def _strangers(folder: Path) -> list[str]:
    """Entries of a checkpoint folder that the trainer does not write."""
    ours = {*MODEL_FILES, TRAINING_DIR}
    found = [p.name for p in folder.iterdir() if p.name not in ours]
    training = folder / TRAINING_DIR
    if training.is_dir():
        ours = {OPTIMIZER_NAME, STATE_NAME, MARKER_NAME}
        found += [f"{TRAINING_DIR}/{p.name}" for p in training.iterdir() if p.name not in ours]
    elif training.exists():
        found.append(TRAINING_DIR)
    return sorted(found)


def _remove_ours(side: Path):
    """Remove a temp or old checkpoint file by file, only the names the
    trainer writes, state and marker last, so a removal cut short still
    reads as ours; anything else found there stops it."""
    training = side / TRAINING_DIR
    for path in [*(side / n for n in MODEL_FILES), training / OPTIMIZER_NAME, training / PARTIAL_STATE,
                 training / STATE_NAME, training / MARKER_NAME]:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    if training.is_dir():
        _rmdir(training)
    _rmdir(side)


def _rmdir(path: Path):
    try:
        path.rmdir()
    except OSError as e:
        left = ", ".join(sorted(p.name for p in path.iterdir())) if path.is_dir() else "?"
        raise ValueError(f"{path} holds {left}, which axw.train did not write; it left them in place: "
                         "move them out and run again") from e


def _fsync(path: Path):
    # on disk before the renames that publish it, so a power cut cannot leave a renamed but empty file
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover_checkpoint(folder) -> Path:
    """Finish or undo a save that was cut short. If `folder` is missing, the
    whole new checkpoint (temp) or else the whole old one takes its name;
    then leftover temp and old folders are removed. Touches only folders the
    trainer wrote (see `check_out_dir`)."""
    folder, tmp, old = _siblings(folder)
    if not folder.exists():
        for side in (tmp, old):  # the temp is the newer one
            if _is_ours(side, folder.name) and is_checkpoint(side):
                os.replace(side, folder)
                _fsync(folder.parent)
                break
    for side in (tmp, old):
        if side.exists() and _is_ours(side, folder.name):
            _remove_ours(side)
    return folder


def check_out_dir(folder) -> Path:
    """Raise ValueError unless the trainer may write checkpoints to `folder`:
    absent, an empty folder, or an axw training checkpoint holding only files
    the trainer writes; its `.tmp` and `.old` siblings, if any, must be ours
    too. Then finish any save that was cut short (`recover_checkpoint`)."""
    folder, tmp, old = _siblings(folder)
    for side in (tmp, old):
        if (side.exists() or side.is_symlink()) and not _is_ours(side, folder.name):
            raise ValueError(f"{side} exists and was not written by axw.train for {folder}; the trainer saves "
                             f"{folder}'s checkpoints through it: move or rename it")
    recover_checkpoint(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"{folder} is not a folder; give a new folder, an empty one or a training checkpoint")
    if folder.is_dir() and any(folder.iterdir()):
        if not is_checkpoint(folder):
            raise ValueError(f"{folder} is not empty and is not an axw training checkpoint (it has no "
                             f"{TRAINING_DIR}/{STATE_NAME}); the trainer never overwrites what it did not write: "
                             "give a new folder, an empty one or a training checkpoint")
        strangers = _strangers(folder)
        if strangers:
            raise ValueError(f"{folder} holds {', '.join(strangers)}, which axw.train did not write; a new "
                             "checkpoint replaces the folder, so move them out first")
    return folder


def optimizer_tensors(model, optimizer) -> dict:
    """The optimizer's state per parameter, named `{parameter}.{key}`, on the CPU."""
    names = {id(p): n for n, p in model.net.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors


def save_checkpoint(folder, model, optimizer, step: int, config, history: list,
                    model_card: str | None = None, extra_state: dict | None = None,
                    weights: dict | None = None, moments: dict | None = None) -> Path:
    """A Hub model folder plus the optimizer moments and RNG state (safetensors)
    and the step, config (a `TrainConfig`) and history (JSON). `weights` and
    `moments` (`optimizer_tensors`' names), when given, are saved instead of
    the model's and the optimizer's own: a sharded model's, gathered whole.

    Written whole into `folder.tmp` (state.json last), then swapped in by
    renames: folder -> folder.old, folder.tmp -> folder, then folder.old is
    removed. A run killed at any moment leaves the old or the new checkpoint
    whole; `recover_checkpoint` (run by `check_out_dir`, the next save and
    `load_checkpoint`) puts it back in place. Raises ValueError, before
    writing anything, where `check_out_dir` would."""
    folder = check_out_dir(folder)
    _, tmp, old = _siblings(folder)
    (tmp / TRAINING_DIR).mkdir(parents=True)
    (tmp / TRAINING_DIR / MARKER_NAME).write_text(_marker_text(folder.name), encoding="utf-8")
    save_pretrained(model, tmp, model_card=model_card, state_dict=weights)
    tensors = dict(moments) if exists(moments) else optimizer_tensors(model, optimizer)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, tmp / TRAINING_DIR / OPTIMIZER_NAME)
    state = dict(step=step, config=asdict(config), history=history, **(extra_state or {}))
    partial = tmp / TRAINING_DIR / PARTIAL_STATE
    partial.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    for path in [*tmp.iterdir(), *(tmp / TRAINING_DIR).iterdir(), tmp / TRAINING_DIR]:
        _fsync(path)
    os.replace(partial, tmp / TRAINING_DIR / STATE_NAME)  # from here on the temp is a whole checkpoint
    _fsync(tmp / TRAINING_DIR)
    if folder.is_dir():
        if any(folder.iterdir()):
            # the marker makes the old folder recognisably ours (checkpoints saved before it had none)
            if not _marked_for(folder, folder.name):
                (folder / TRAINING_DIR / MARKER_NAME).write_text(_marker_text(folder.name), encoding="utf-8")
            os.replace(folder, old)
        else:
            folder.rmdir()  # the empty folder the caller gave
    os.replace(tmp, folder)
    _fsync(folder.parent)
    if old.exists():
        _remove_ours(old)
    return folder


def read_trainer_state(folder) -> dict:
    """The step, config and history of a checkpoint, after finishing a save
    of it that was cut short (`recover_checkpoint`)."""
    folder = recover_checkpoint(folder)
    if not is_checkpoint(folder):
        raise ValueError(f"{folder} has no {TRAINING_DIR}/{STATE_NAME}: not a training checkpoint")
    return json.loads((folder / TRAINING_DIR / STATE_NAME).read_text(encoding="utf-8"))


def check_unfinished(folder, done: int, steps: int, option: str = "steps"):
    """ValueError if the checkpoint in `folder`, `done` steps in, has nothing left of a run of `steps`."""
    if done >= steps:
        raise ValueError(f"{folder} has already finished {done} of {steps} steps; raise {option} to train further")


def load_weights(folder, model):
    """The checkpoint's weights into `model` (a whole one, not yet sharded)."""
    from .hub import load_safetensors

    model.net.load_state_dict(load_safetensors(Path(folder), device=model.device))


def load_optimizer(folder, model, optimizer, place=None):
    """The checkpoint's optimizer moments into `optimizer` and its RNG state
    into torch's; `place(p, tensor)` puts a saved moment where parameter `p`
    keeps its own (default: on its device)."""
    tensors = load_file(Path(folder) / TRAINING_DIR / OPTIMIZER_NAME)
    for name, p in model.net.named_parameters():
        entry = {key.rsplit(".", 1)[1]: value for key, value in tensors.items()
                 if key.rsplit(".", 1)[0] == name}
        if entry:
            optimizer.state[p] = {k: (v if k == "step" else place(p, v) if exists(place) else v.to(p.device))
                                  for k, v in entry.items()}
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def load_checkpoint(folder, model, optimizer) -> dict:
    """Restore weights, optimizer moments and RNG state saved by
    `save_checkpoint` into `model` and `optimizer`; returns the trainer state."""
    state = read_trainer_state(folder)
    load_weights(folder, model)
    load_optimizer(folder, model, optimizer)
    return state
