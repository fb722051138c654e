"""The sample tree drawn: an SVG of the collapsed prefix tree (`playground.sample_tree.drawn`), the prompt on the
left, each chain of tokens one node, each edge as thick as the share of the N texts that took it; a click on a
node opens its step. And the numbers beside two trees (current settings, one setting changed)."""

from __future__ import annotations

import html
import math

from .render import show_number

COL, ROW, TOP, LEFT, LABEL = 170, 20, 8, 6, 20  # a column's width, a leaf's height, margins, label characters
MAX_STROKE = 14.0


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def layout(nodes: list[dict]) -> dict[int, tuple[float, float]]:
    """(x, y) of each drawn node by id: a column per level of the collapsed tree, each leaf a row of its own, an
    inner node at the middle of its children."""
    children: dict[int, list[int]] = {}
    for node in nodes[1:]:
        children.setdefault(node["parent"], []).append(node["id"])
    at, next_row = {}, [0]

    def place(node_id: int, level: int) -> float:
        kids = children.get(node_id, [])
        ys = [place(k, level + 1) for k in kids]
        y = sum(ys) / len(ys) if ys else TOP + ROW * next_row[0] + ROW / 2
        if not ys:
            next_row[0] += 1
        at[node_id] = (LEFT + COL * level, y)
        return y

    place(nodes[0]["id"], 0)
    return at


def _title(node: dict, n: int) -> str:
    p = math.prod(node["probs"]) if node["probs"] else 1.0
    parts = [f"{node['count']} of {n} texts ({node['count'] / n:.0%})",
             f"tokens {node['depth'] - len(node['tokens']) + 1}–{node['depth']}" if node["tokens"] else "the prompt",
             f"probability of this chain {show_number(p, '.3g')}"]
    if node["ends"]:
        parts.append(f"{node['ends']} end here")
    return " · ".join(parts) + " — click to open its step"


def tree_svg(nodes: list[dict], n: int, side: str = "a") -> str:
    """The collapsed tree as SVG; each node carries `data-seed` (the first sample through it) and `data-depth`
    (its tokens so far), which a click sends."""
    if not nodes:
        return ""
    at = layout(nodes)
    width = max(x for x, _ in at.values()) + COL + LEFT
    height = max(y for _, y in at.values()) + ROW
    edges, labels = [], []
    for node in nodes:
        x, y = at[node["id"]]
        if node["parent"] is not None:
            px, py = at[node["parent"]]
            stroke = 1.0 + (MAX_STROKE - 1.0) * node["count"] / n
            edges.append(f'<path class="axw-st-edge" d="M{px + COL - 24:.1f},{py:.1f} C{px + COL - 8:.1f},{py:.1f} '
                         f'{x - 14:.1f},{y:.1f} {x - 2:.1f},{y:.1f}" stroke-width="{stroke:.1f}"/>')
        label = node.get("label", "") or "prompt"
        short = label if len(label) <= LABEL else label[:LABEL - 1] + "…"
        cls = "axw-st-node axw-st-ends" if node["ends"] else "axw-st-node"
        labels.append(f'<g class="{cls}" data-seed="{node["seed"]}" data-depth="{node["depth"]}" data-side="{side}">'
                      f'<title>{_esc(label)} — {_esc(_title(node, n))}</title>'
                      f'<text x="{x:.1f}" y="{y + 4:.1f}">{_esc(short)}</text>'
                      f'<text class="axw-st-count" x="{x + COL - 30:.1f}" y="{y - 3:.1f}">{node["count"]}</text></g>')
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
