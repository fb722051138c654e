"""The trainer, shared by the command line and the app's fine-tune tab.

    python -m axw.train --data assets/data/tinyshakespeare.txt --out runs/m --vocab-size 1024
    torchrun --nproc_per_node 2 -m axw.train --data my.txt --out runs/m --init HuggingFaceTB/SmolLM2-135M

`train(model, train_ids, heldout_ids, config)` samples random windows of
`seq_len + 1` tokens, steps AdamW under linear warmup and cosine decay with
gradient clipping, reports progress through `callback` and stops when
`should_stop()` says so. Checkpoints are a Hub model folder
(`save_pretrained`) plus `training/optimizer.safetensors` and `training/state.json`:
nothing is pickled, and a resumed run continues exactly where it left off.
Each checkpoint replaces the last by renames, and the trainer writes only
into a new or empty folder or one of its own checkpoints. With a `teacher`
it distils: the teacher's logits become the target.

Its parts, each importable from here:
- `axw.train_loop`: `TrainConfig`, `train`, `evaluate` / `score`, the
  learning-rate schedule, the windows and the optimizer;
- `axw.train_checkpoint`: the crash-safe checkpoints;
- `axw.train_cli`: the command line and the model card;
- `axw.train_dist`: the same loop on several processes under torchrun
  (DDP, or FSDP2 with `--fsdp`), each rank reading its rows of the global batch.
"""

from __future__ import annotations

from .train_checkpoint import (
    MARKER_NAME,
    MODEL_FILES,
    OPTIMIZER_NAME,
    STATE_NAME,
    TRAINING_DIR,
    check_out_dir,
    check_unfinished,
    is_checkpoint,
    load_checkpoint,
    read_trainer_state,
    recover_checkpoint,
    save_checkpoint,
)
from .train_cli import DEFAULT_VOCAB_SIZE, ProgressLine, build_parser, load_generated, load_teacher, main, model_card
from .train_dist import Ranks, TrainingStopped, current_ranks, process_group
from .train_loop import (
    TrainConfig,
    TrainResult,
    check_teacher,
    evaluate,
    generated_windows,
    lr_at,
    make_optimizer,
    param_groups,
    random_windows,
    score,
    step_generator,
    train,
)

__all__ = [
    "DEFAULT_VOCAB_SIZE", "MARKER_NAME", "MODEL_FILES", "OPTIMIZER_NAME", "STATE_NAME", "TRAINING_DIR",
    "ProgressLine", "Ranks", "TrainConfig", "TrainResult", "TrainingStopped", "build_parser", "check_out_dir",
    "check_teacher", "check_unfinished", "current_ranks", "evaluate", "generated_windows", "is_checkpoint",
    "load_checkpoint", "load_generated", "load_teacher", "lr_at", "main", "make_optimizer", "model_card",
    "param_groups", "process_group", "random_windows", "read_trainer_state", "recover_checkpoint",
    "save_checkpoint", "score", "step_generator", "train",
]

if __name__ == "__main__":
    try:
        main()
    except (ValueError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}")
