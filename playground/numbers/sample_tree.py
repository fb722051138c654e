"""The sample tree: N sampled texts of one prompt merged into a prefix tree of their tokens, each edge with how
many texts took it and the probability it was chosen with; how many distinct texts there are, and the entropy
of the first k tokens' distribution over the N texts."""

from __future__ import annotations

import math
from collections import Counter


def prefix_tree(samples: list[dict]) -> list[dict]:
    """The prefix tree of `samples` (each a dict: `tokens`, `probs` the probability each token was chosen with,
    `seed`, `ended` "eos" or "length"). Nodes in the order first reached, node 0 the prompt; each with `id`,
    `parent`, `token`, `prob` (of the edge into it), `depth` (tokens from the prompt), `count` (texts through
    it), `ends` (texts that end at it), `seed` (the first sample's seed through it: its run opens its step)
    and `children` (ids)."""
    nodes = [dict(id=0, parent=None, token=None, prob=None, depth=0, count=0, ends=0, seed=None, children=[])]
    index: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    for sample in samples:
        at = nodes[0]
        at["count"] += 1
        at["seed"] = sample["seed"] if at["seed"] is None else at["seed"]
        for token, prob in zip(sample["tokens"], sample["probs"]):
            key = (at["id"], token)
            if key not in index:
                index[key] = len(nodes)
                nodes.append(dict(id=len(nodes), parent=at["id"], token=token, prob=prob, depth=at["depth"] + 1,
                                  count=0, ends=0, seed=sample["seed"], children=[]))
                at["children"].append(index[key])
            at = nodes[index[key]]
            at["count"] += 1
        at["ends"] += 1
    return nodes


def chains(nodes: list[dict]) -> list[dict]:
    """The tree with every chain collapsed: a node whose texts all go on to one child (none ends at it) is drawn
    as one with that child. Each drawn node: `id` (its last node's), `parent` (the drawn node above), `tokens`,
    `probs`, `depth` (of its last token), `count`, `ends`, `seed`; the prompt first, with no tokens."""
    drawn, stack = [], [(0, None)]
    while stack:
        node_id, parent = stack.pop()
        node = nodes[node_id]
        tokens = [] if node["token"] is None else [node["token"]]
        probs = [] if node["token"] is None else [node["prob"]]
        while node["token"] is not None and len(node["children"]) == 1 and node["ends"] == 0:
            node = nodes[node["children"][0]]
            tokens.append(node["token"])
            probs.append(node["prob"])
        drawn.append(dict(id=node["id"], parent=parent, tokens=tokens, probs=probs, depth=node["depth"],
                          count=node["count"], ends=node["ends"], seed=node["seed"]))
        stack.extend((c, node["id"]) for c in reversed(node["children"]))
    return drawn


def texts(samples: list[dict]) -> Counter:
    """How many samples gave each text (its tokens, as a tuple)."""
    return Counter(tuple(s["tokens"]) for s in samples)


def prefix_entropy(samples: list[dict], k: int) -> float:
    """The entropy in bits of the first `k` tokens' distribution over the samples (a text shorter than k counts
    as what it is): 0 when every sample starts alike, log2(N) when no two do."""
    counts = Counter(tuple(s["tokens"][:k]) for s in samples)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) + 0.0 if n else 0.0


def summary(samples: list[dict], k: int) -> dict:
    """The numbers beside the tree: samples, distinct texts, the entropy of the first k tokens, and the most
    common texts' counts."""
    counted = texts(samples)
    return dict(n=len(samples), distinct=len(counted), k=k, entropy=prefix_entropy(samples, k),
                max_entropy=math.log2(len(samples)) if samples else 0.0,
                top=[c for _, c in counted.most_common(5)])
