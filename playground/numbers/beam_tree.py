"""Beam search's tree: every candidate it expanded at every step, kept, pruned or finished, and the path of the
beam it returned, from the trace's `beam_tree` records."""

from __future__ import annotations


def candidate_status(tree: dict, i: int) -> str:
    """What became of candidate i of a beam-search step's trace `tree`: "ended" (its beam had finished before),
    "pruned", "finished" (kept, and it is EOS) or "kept"."""
    if tree["parent_finished"][i]:
        return "ended"
    if tree["kept_as"][i] < 0:
        return "pruned"
    return "finished" if tree["eos"][i] else "kept"


def beam_tree(rows: list[dict]) -> list[list[dict]]:
    """Every candidate beam search expanded, step by step: per step a list of nodes, each with its `parent` (the
    index of a node of the step before; None for the prompt), `token`, `score` (summed log-probability),
    `ranked` (the score with the length penalty, what beams are ranked by), `key` (stochastic beams: the
    perturbed key they are ranked by instead, else None), `status` ("kept", "finished": kept and ended with EOS,
    "pruned", or "ended": the carried-over continuation of a beam that had finished), `beam` (the index among
    the step's kept beams, or None) and `returned` (on the path to the beam returned). Impossible candidates
    (no probability) are left out."""
    steps, kept_at = [], {}  # kept_at: beam index of the step before -> node index there
    for t, row in enumerate(rows):
        tree = row.get("beam_tree")
        if tree is None:
            break
        nodes, kept_now = [], {}
        for i, token in enumerate(tree["token"]):
            if not tree["possible"][i]:
                continue
            beam = tree["kept_as"][i] if tree["kept_as"][i] >= 0 else None
            status = candidate_status(tree, i)
            node = dict(step=t, parent=kept_at.get(tree["parent"][i]) if t else None, parent_beam=tree["parent"][i],
                        token=token, score=tree["score"][i], ranked=tree["ranked_score"][i],
                        key=tree["key"][i] if "key" in tree else None, status=status, beam=beam, returned=False)
            if beam is not None:
                kept_now[beam] = len(nodes)
            nodes.append(node)
        steps.append(nodes)
        kept_at = kept_now
    # the returned beam: the best kept one after the last step, followed back to the prompt
    if steps:
        index = next((i for i, n in enumerate(steps[-1]) if n["beam"] == 0), None)
        for t in range(len(steps) - 1, -1, -1):
            if index is None:
                break
            steps[t][index]["returned"] = True
            index = steps[t][index]["parent"]
    return steps
