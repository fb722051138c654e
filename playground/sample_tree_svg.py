"""The sample tree drawn: an SVG of the collapsed prefix tree (`playground.sample_tree.drawn`), the prompt on the
left, each chain of tokens one node, each edge as thick as the share of the N texts that took it; a click on a
node opens its step. And the numbers beside two trees (current settings, one setting changed)."""

from __future__ import annotations

import html
import math

from .render import show_number

ROW, TOP, LEFT, GAP, LABEL = 20, 8, 6, 40, 18  # a leaf's height, margins, between a label and its children, characters
CHAR = 7.3  # a label character's width (12px monospace)
MAX_STROKE = 14.0


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def layout(nodes: list[dict]) -> dict[int, tuple[float, float]]:
    """(x, y) of each drawn node by id: each node right of its parent's label, each leaf a row of its own, the
    most common branch first, an inner node on the row of its first child (the prompt top left, read as an
    outline)."""
    children: dict[int, list[dict]] = {}
    for node in nodes[1:]:
        children.setdefault(node["parent"], []).append(node)
    at, next_row = {}, [0]

    def place(node: dict, x: float) -> float:
        kids = sorted(children.get(node["id"], []), key=lambda n: -n["count"])  # stable: first reached first
        ys = [place(k, label_end(node, x) + GAP) for k in kids]
        if ys:
            y = ys[0]
        else:
            y = TOP + ROW * next_row[0] + ROW / 2
            next_row[0] += 1
        at[node["id"]] = (x, y)
        return y

    place(nodes[0], LEFT)
    return at


def label_end(node: dict, x: float) -> float:
    """Where a node's label and count end: its edges start there."""
    return x + len(_short(node)) * CHAR + 3 + len(str(node["count"])) * 6 + 3


def _title(node: dict, n: int) -> str:
    p = math.prod(node["probs"]) if node["probs"] else 1.0
    parts = [f"{node['count']} of {n} texts ({node['count'] / n:.0%})",
             f"tokens {node['depth'] - len(node['tokens']) + 1}–{node['depth']}" if node["tokens"] else "the prompt",
             f"probability of this chain {show_number(p, '.3g')}"]
    if node["ends"]:
        parts.append(f"{node['ends']} end here")
    return " · ".join(parts) + " — click to open its step"


def _short(node: dict) -> str:
    label = node.get("label", "") or "prompt"
    return label if len(label) <= LABEL else label[:LABEL - 1] + "…"


def _node(node: dict, x: float, y: float, n: int, side: str) -> str:
    cls = "axw-st-node axw-st-ends" if node["ends"] else "axw-st-node"
    label = node.get("label", "") or "prompt"
    return (f'<g class="{cls}" data-seed="{node["seed"]}" data-depth="{node["depth"]}" data-side="{side}" '
            f'data-count="{node["count"]}" data-ends="{node["ends"]}">'
            f'<title>{_esc(label)} — {_esc(_title(node, n))}</title>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}">{_esc(_short(node))}</text>'
            f'<text class="axw-st-count" x="{x + len(_short(node)) * CHAR + 3:.1f}" y="{y - 3:.1f}">{node["count"]}'
            f'</text></g>')


def tree_svg(nodes: list[dict], n: int, side: str = "a") -> str:
    """The collapsed tree as SVG; each node carries `data-seed` (the first sample through it) and `data-depth`
    (its tokens so far), which a click sends, and `data-count`, `data-ends` (texts through it, ending at it)."""
    if not nodes:
        return ""
    at = layout(nodes)
    by_id = {node["id"]: node for node in nodes}
    width = max(label_end(node, at[node['id']][0]) for node in nodes) + LEFT
    height = max(y for _, y in at.values()) + ROW
    edges, labels = [], []
    for node in nodes:
        x, y = at[node["id"]]
        if node["parent"] is not None:
            px, py = at[node["parent"]]
            start, mid = label_end(by_id[node["parent"]], px), (label_end(by_id[node["parent"]], px) + x) / 2
            stroke = 1.0 + (MAX_STROKE - 1.0) * node["count"] / n
            edges.append(f'<path class="axw-st-edge" d="M{start:.1f},{py:.1f} C{mid:.1f},{py:.1f} {mid:.1f},{y:.1f} '
                         f'{x - 3:.1f},{y:.1f}" stroke-width="{stroke:.1f}"/>')
        labels.append(_node(node, x, y, n, side))
    return (f'<div class="axw-st-scroll"><svg class="axw-st" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">{"".join(edges)}{"".join(labels)}'
            f'</svg></div>')


def numbers_html(a: dict, b: dict | None = None, change: str = "") -> str:
    """The numbers beside the trees: distinct texts and the entropy of the first k tokens, and with a second tree
    (`change` says which setting moved) how each moved."""
    def cell(s: dict) -> list[str]:
        return [f"{s['distinct']} of {s['n']}", f"{show_number(s['entropy'], '.2f')} bits "
                f"(at most {show_number(s['max_entropy'], '.2f')})"]

    head = "<tr><th></th><th>current settings</th>"
    rows = [["distinct texts"], [f"entropy of the first {a['k']} tokens"]]
    for r, v in zip(rows, cell(a)):
        r.append(v)
    if b is not None:
        head += f"<th>{_esc(change)}</th><th>moved</th>"
        moves = [f"{b['distinct'] - a['distinct']:+d}", f"{b['entropy'] - a['entropy']:+.2f} bits"]
        for r, v, m in zip(rows, cell(b), moves):
            r += [v, m]
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="axw-table axw-st-numbers">{head}</tr>{body}</table>'
