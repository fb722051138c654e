"""Speculative decoding's rounds, from the trace: the drafts of each round, which were accepted, the model's own
token after them, and the running acceptance rate."""

from __future__ import annotations


def speculative_rounds(rows: list[dict]) -> list[dict]:
    """Speculative decoding's rounds, from the trace: per round the `drafted` tokens with the draft's and the
    model's probability of each (`draft_probs`, `model_probs`), which were `accepted`, how many in a row were
    (`n_accepted`), the `replacement` (the model's token in place of the first rejected draft, or after all of
    them), which drafts were copied (`copied`) and where each came from (`sources`: axw.speculative's ASSISTANT,
    TEXT by prompt lookup or DATASTORE), the steps it emitted (`steps`, 0-based), and
    the running `acceptance_rate` and `tokens_per_forward` after it."""
    rounds = []
    for i, row in enumerate(rows):
        spec = row.get("speculative")
        if spec is None:
            continue
        if not rounds or rounds[-1]["round"] != spec["round"]:
            rounds.append(dict(round=spec["round"], drafted=spec["drafted"], draft_probs=spec["draft_probs"],
                               model_probs=spec["model_probs"], accepted=spec["accepted"],
                               n_accepted=spec["n_accepted"], replacement=spec["replacement"], steps=[],
                               drafter=spec["drafter"], copied=spec.get("copied") or [False] * len(spec["drafted"]),
                               sources=spec["sources"]))
        rounds[-1]["steps"].append(i)
        rounds[-1].update(acceptance_rate=spec["acceptance_rate"], tokens_per_forward=spec["tokens_per_forward"])
    return rounds
