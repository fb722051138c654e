"""The uncertainty timeline's numbers: per step of a run, how unsure the model was and what was chosen."""

from __future__ import annotations


def timeline(run) -> list[dict]:
    """A record per step of `run` (a `runs.Run`): the entropy (bits) of the model's distribution and of the final
    processed one, the chosen token's probability and rank, how many tokens the last stage kept, and the share of
    the model's probability the constraint removed (None without one: the grammar stage's)."""
    out = []
    for i, row in enumerate(run.rows):
        last = row["stages"][-1]
        out.append(dict(step=i + 1, model_entropy=row["entropy"]["model"], final_entropy=row["entropy"][last],
                        chosen_prob=run.probs[i] if i < len(run.probs) else row.get("chosen_prob"),
                        chosen_rank=row["chosen_rank"] + 1 if "chosen_rank" in row else None,
                        kept=row["kept"][last],
                        constraint_removed=1.0 - row["mass"]["grammar"] if "grammar" in row["stages"] else None,
                        token=row.get("chosen", run.new_ids[i] if i < len(run.new_ids) else None)))
    return out
