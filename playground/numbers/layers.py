"""The layer view's numbers (the logit lens): what each layer of the network would have predicted at one step of
a run, from one full forward over that step's prefix, computed only when a learner asks for that step."""

from __future__ import annotations

import torch

from axw.logit_lens import logit_lens

LAYER_TOP = 5  # each layer's most likely tokens shown


def taken(run, step: int) -> int | None:
    """The token `run` took at `step` (0-based): the trace's choice; for beam search the token the leading beam
    after the step adds to the one that led into it (None when another beam took the lead); else its text's."""
    row = run.rows[step] if step < len(run.rows) else {}
    if row.get("chosen") is not None:
        return int(row["chosen"])
    if "beams" in row:
        prefix, beam = run.prefix(step), run.prompt_ids + row["beams"][0]
        return beam[len(prefix)] if len(beam) > len(prefix) and beam[:len(prefix)] == prefix else None
    return run.new_ids[step] if step < len(run.new_ids) else None


def formed_at(ranks: list[int]) -> int | None:
    """The first layer from which the chosen token stays the most likely through the last (None: the last layer
    does not rank it first, as when sampling picked another)."""
    first = None
    for layer, rank in enumerate(ranks):
        if rank == 0:
            first = layer if first is None else first
        else:
            first = None
    return first


def layer_view(model, run, step: int) -> dict:
    """`axw.logit_lens.logit_lens` at `step` of `run` (a `runs.Run`), for the token it took there, with the layer
    where that choice formed and, for DoLa, the two layers it contrasted there (the early one, the last)."""
    chosen = taken(run, step)
    ids = torch.tensor(run.prefix(step), dtype=torch.long)
    lens = logit_lens(model.net, ids, chosen, top=LAYER_TOP)
    row = run.rows[step] if step < len(run.rows) else {}
    last = lens["layers"][-1]
    lens.update(step=step, formed=formed_at(lens["chosen_rank"]) if chosen is not None else None,
                contrasted=[row["dola"]["premature"], last] if "dola" in row else [])
    return lens
