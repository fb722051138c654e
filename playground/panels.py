"""The strategies' own drawings: the beam tree, speculative decoding's rounds, contrastive search's scores as
alpha moves, contrastive decoding's two models overlaid. Pure functions of the trace (`numbers.beam_tree`,
`numbers.rounds`, `numbers.alpha_sweep` give the numbers), escaped throughout; the step view's panels are
added to `render.STEP_PANELS`."""

from __future__ import annotations

import html
import math

from axw.speculative import DATASTORE, TEXT

from . import render
from .render import bar_html, show_number, show_token
from .numbers.alpha_sweep import alpha_sweep
from .numbers.beam_tree import beam_tree, candidate_status
from .numbers.rounds import speculative_rounds


def _label(tokenizer, token: int, width: int = 9) -> str:
    text = show_token(tokenizer, token)
    return text if len(text) <= width else text[: width - 1] + "…"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


# --- beam search: the tree of every candidate ---

COL, ROW, TOP, LEFT = 150, 17, 26, 8
SCORE_X, EDGE_X = 70, 108  # a node's score, and where its edges start, right of its token
STATUS_TEXT = dict(kept="kept as beam {beam}", finished="kept, finished (EOS)", pruned="pruned",
                   ended="a finished beam, carried over")


def _node_title(node: dict, tokenizer, lp: float | None) -> str:
    parts = [f"step {node['step'] + 1}: {show_token(tokenizer, node['token'])!r}",
             STATUS_TEXT[node["status"]].format(beam=(node["beam"] or 0) + 1),
             f"score (summed log-probability) {show_number(node['score'], '.3f')}"]
    if lp:
        parts.append(f"with the length penalty {show_number(node['ranked'], '.3f')}")
    if node["key"] is not None:
        parts.append(f"perturbed key {show_number(node['key'], '.3f')}")
    if node["returned"]:
        parts.append("on the path of the returned beam")
    return " · ".join(parts)


def beam_tree_svg(rows: list[dict], tokenizer, prompt: str = "", selected: int | None = None,
                  length_penalty: float | None = None) -> str:
    """The tree from the prompt to the returned beam: a column per step holding every candidate expanded there
    (each live beam's best few), grouped by the beam they extend, with an edge from that beam. Kept beams are
    solid, finished ones marked ■, pruned ones faded; the path of the returned beam is drawn thick. Each node
    and column header carries its step (`data-step`, 0-based): a click opens it."""
    steps = beam_tree(rows)
    if not steps:
        return '<p class="axw-note">Generate with beam search to see the tree of every candidate it weighed.</p>'
    height = TOP + ROW * max(len(nodes) for nodes in steps) + 10
    width = LEFT + COL * (len(steps) + 1)
    out = [f'<svg class="axw-tree" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" font-family="ui-monospace, monospace" font-size="11">']
    prompt_y = TOP + ROW * (len(steps[0]) - 1) / 2
    out.append(f'<text x="{LEFT}" y="{TOP - 12}" class="axw-tree-head">prompt</text>'
               f'<text x="{LEFT}" y="{prompt_y + 4:.1f}" font-weight="600"><title>{_esc(prompt)}</title>'
               f'{_esc(prompt[-10:].replace(chr(10), "↵"))}</text>')
    ys_before = {None: prompt_y}
    for t, nodes in enumerate(steps):
        x = LEFT + COL * (t + 1)
        cls = "axw-tree-head axw-tree-sel" if t == selected else "axw-tree-head"
        out.append(f'<text x="{x}" y="{TOP - 12}" class="{cls}" data-step="{t}">step {t + 1}</text>')
        order = sorted(range(len(nodes)), key=lambda i: (nodes[i]["parent_beam"], -(nodes[i]["key"]
                       if nodes[i]["key"] is not None else nodes[i]["ranked"])))
        ys = {}
        for slot, i in enumerate(order):
            ys[i] = TOP + ROW * slot
        for i in order:  # edges under the nodes
            n, y = nodes[i], ys[i]
            y0 = ys_before.get(n["parent"], prompt_y)
            x0 = x - COL + (EDGE_X if t else 74)
            kind = "path" if n["returned"] else ("pruned" if n["status"] == "pruned" else "kept")
            mid = (x0 + x - 4) / 2
            out.append(f'<path class="axw-edge axw-edge-{kind}" d="M{x0:.0f},{y0 - 3:.1f} C{mid:.0f},{y0 - 3:.1f} '
                       f'{mid:.0f},{y - 3:.1f} {x - 4:.0f},{y - 3:.1f}"/>')
        for i in order:
            n, y = nodes[i], ys[i]
            mark = "■ " if n["status"] == "finished" else ""
            text = "▪ (ended)" if n["status"] == "ended" else mark + _label(tokenizer, n["token"])
            score = n["key"] if n["key"] is not None else n["ranked"]
            kind = "returned" if n["returned"] else n["status"]
            out.append(f'<g class="axw-node axw-node-{kind}" data-step="{t}" data-token="{n["token"]}"><title>'
                       f'{_esc(_node_title(n, tokenizer, length_penalty))}</title>'
                       f'<text x="{x}" y="{y:.1f}">{_esc(text)}</text>'
                       f'<text x="{x + SCORE_X}" y="{y:.1f}" class="axw-score">{show_number(score)}</text></g>')
        ys_before = {i: ys[i] for i in range(len(nodes))}
    out.append("</svg>")
    what = "key (perturbed)" if any(n["key"] is not None for n in steps[0]) else "score"
    legend = (f'<div class="axw-tree-legend"><b>bold</b>: the returned beam · <span class="axw-k">kept</span> · '
              f'<span class="axw-p">pruned</span> · ■ finished (EOS) · the number: each candidate\'s {what}'
              f'{" with the length penalty" if length_penalty and what == "score" else ""}, what beams are ranked by '
              f'· hover a node for its numbers, click it to open its step</div>')
    return f'<div class="axw-tree-wrap">{legend}<div class="axw-tree-scroll">{"".join(out)}</div></div>'


def beam_candidates_panel(row: dict, tokenizer, settings=None, previous: dict | None = None) -> str:
    """One step of the tree as a table: each live beam's best candidates, kept, pruned or finished, with the
    score with and without the length penalty (and the perturbed key of stochastic beams)."""
    tree = row.get("beam_tree")
    if tree is None:
        return ""
    before = previous.get("beams") if previous else None  # the live beams going into this step
    has_key = "key" in tree
    parts = ['<p>Every candidate this step expanded: each live beam\'s best continuations, ranked by '
             + ("their perturbed key (stochastic beams)" if has_key else "score") + '. The best '
             f'{sum(k >= 0 for k in tree["kept_as"])} go on as beams.</p>',
             '<table class="axw-table axw-beamcands"><tr><th>from beam</th><th>token</th><th>score</th>'
             '<th>with length penalty</th>' + ("<th>key</th>" if has_key else "") + "<th></th></tr>"]
    for i, token in enumerate(tree["token"]):
        if not tree["possible"][i]:
            continue
        kept_as = f"kept as beam {tree['kept_as'][i] + 1}"
        status, cls = {"ended": ("finished before: carried over", "axw-gone"), "pruned": ("pruned", "axw-gone"),
                       "finished": (f"{kept_as}: finished (EOS)", "axw-kept"),
                       "kept": (kept_as, "axw-kept")}[candidate_status(tree, i)]
        parent = tree["parent"][i]
        source = f"{parent + 1}"
        if before is not None and parent < len(before):
            source += f' <span class="axw-beam">…{_esc(tokenizer.decode(before[parent])[-18:])}</span>'
        key = f'<td>{show_number(tree["key"][i], ".3f")}</td>' if has_key else ""
        parts.append(f'<tr class="{cls}"><td>{source}</td><td><code>{_esc(show_token(tokenizer, token))}</code></td>'
                     f'<td>{show_number(tree["score"][i], ".3f")}</td>'
                     f'<td>{show_number(tree["ranked_score"][i], ".3f")}</td>{key}<td>{status}</td></tr>')
    parts.append("</table>")
    return "".join(parts)


# --- speculative decoding: rounds of drafts, accepted and rejected ---


# where a copied draft came from (the trace's `sources`): its chip's class and title
COPIED = {TEXT: ("axw-chip-copy", "copied by prompt lookup"),
          DATASTORE: ("axw-chip-store", "copied from the n-gram datastore")}


def _chip(tokenizer, token: int, kind: str, title: str, source: int = 0) -> str:
    if source in COPIED:  # proposed by prompt lookup or the datastore, not by the draft model
        kind, title = f"{kind} {COPIED[source][0]}", f"{COPIED[source][1]}; {title}"
    return f'<span class="axw-chip axw-chip-{kind}" title="{_esc(title)}">{_esc(show_token(tokenizer, token))}</span>'


def round_html(r: dict, tokenizer, selected: int | None = None) -> str:
    """One round: the drafted tokens, accepted (green) up to the first rejection (red), the ones after it never
    used (grey), then the model's own token; each with the draft's and the model's probability."""
    n = r["n_accepted"]
    sources = r["sources"]
    chips = []
    for j, token in enumerate(r["drafted"]):
        q, p = r["draft_probs"][j], r["model_probs"][j]
        probs = f"draft q = {show_number(q, '.3f')}, model p = {show_number(p, '.3f')}"
        if j < n:
            chips.append(_chip(tokenizer, token, "ok", f"accepted: {probs}", sources[j]))
        elif j == n:
            chips.append(_chip(tokenizer, token, "no", f"rejected: {probs} (kept with probability min(1, p/q))",
                               sources[j]))
        else:
            chips.append(_chip(tokenizer, token, "off", f"after the rejection, never used: {probs}", sources[j]))
    why = "in place of the rejected draft" if n < len(r["drafted"]) else "after every draft was accepted"
    chips.append(_chip(tokenizer, r["replacement"], "model", f"the model's own token, {why}"))
    steps = r["steps"]
    mark = " axw-round-sel" if selected is not None and selected in steps else ""
    first, last = (steps[0], steps[-1]) if steps else (0, 0)
    return (f'<div class="axw-round{mark}" data-step="{first}" data-last="{last}"><span class="axw-round-n">'
            f'round {r["round"] + 1}</span>{"".join(chips)}<span class="axw-round-sum">{n} of {len(r["drafted"])} '
            f'accepted, {len(steps)} token{"s" * (len(steps) != 1)} for one model forward</span></div>')


def speculative_html(rows: list[dict], tokenizer, selected: int | None = None, drafter: str | None = None) -> str:
    """Every round of a speculative run, with the acceptance rate and the tokens per model forward."""
    rounds = speculative_rounds(rows)
    if not rounds:
        return '<p class="axw-note">Generate with speculative decoding to see its rounds.</p>'
    last = rounds[-1]
    drafted = sum(len(r["drafted"]) for r in rounds)
    head = (f'<p class="axw-spec-head">drafter: <b>{_esc(drafter or last["drafter"])}</b> · {len(rounds)} '
            'rounds (model '
            f'forwards) for {sum(len(r["steps"]) for r in rounds)} tokens · acceptance rate '
            f'<b>{show_number(100 * last["acceptance_rate"], ".0f")}%</b> of {drafted} drafted · '
            f'<b>{show_number(last["tokens_per_forward"])}'
            '</b> tokens per model forward · <span class="axw-chip axw-chip-ok">accepted</span> '
            '<span class="axw-chip axw-chip-no">rejected</span> <span class="axw-chip axw-chip-off">never used'
            '</span> <span class="axw-chip axw-chip-model">the model\'s own</span>'
            + "".join(f' <span class="axw-chip {css}">{label}</span>' for source, (css, label) in COPIED.items()
                      if any(source in r["sources"] for r in rounds))
            + ' · hover a token for its probabilities, click a round to open its step</p>')
    return '<div class="axw-spec">' + head + "".join(round_html(r, tokenizer, selected) for r in rounds) + "</div>"


def speculative_panel(row: dict, tokenizer, settings=None, previous=None) -> str:
    spec = row.get("speculative")
    if spec is None:
        return ""
    j, n = spec["position"], spec["n_accepted"]
    if j < n:
        source = (f"{COPIED[kind][1]} (q = 1)" if (kind := spec["sources"][j]) in COPIED
                  else f"the draft gave it q = {show_number(spec['draft_probs'][j], '.3f')}")
        how = f"drafted and accepted: {source}, the model p = {show_number(spec['model_probs'][j], '.3f')}"
    elif j < len(spec["drafted"]):
        how = (f"the model's own token, in place of the rejected draft "
               f"<code>{_esc(show_token(tokenizer, spec['drafted'][j]))}</code> "
               f"(q = {show_number(spec['draft_probs'][j], '.3f')}, "
               f"p = {show_number(spec['model_probs'][j], '.3f')})")
    else:
        how = "the model's own token, after every draft of the round was accepted"
    r = dict(spec, steps=list(range(row["step"] - j, row["step"] - j + spec["emitted"])))
    return (f'<p>Speculative decoding, round {spec["round"] + 1} (drafter: {_esc(spec["drafter"])}): this token is '
            f'{how}. So far {show_number(100 * spec["acceptance_rate"], ".0f")}% of the drafts were accepted, '
            f'{show_number(spec["tokens_per_forward"])} tokens per model forward.</p>'
            + round_html(r, tokenizer, row["step"]))


# --- contrastive search: the scores as alpha moves ---

CHART_W, CHART_H, PAD = 460, 180, 44


def alpha_chart(row: dict, tokenizer, sweep: list[dict], alpha: float | None = None) -> str:
    """Each candidate's score (1 - alpha) confidence - alpha penalty as a line over alpha in [0, 1]: the top line
    at each alpha is the one chosen (`sweep`, the row's alpha_sweep); the run's alpha is marked."""
    c = row["contrastive"]
    lines = [(i, p, -d) for i, (p, d) in enumerate(zip(c["confidence"], c["degeneration_penalty"])) if p > 0]
    if not lines:
        return ""
    lo = min(min(a, b) for _, a, b in lines)
    hi = max(max(a, b) for _, a, b in lines)
    span = (hi - lo) or 1.0

    def px(a):
        return PAD + a * (CHART_W - 2 * PAD)

    def py(v):
        return 10 + (hi - v) / span * (CHART_H - 40)

    winners = {s["winner"] for s in sweep}
    out = [f'<svg class="axw-alpha" width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" '
           'xmlns="http://www.w3.org/2000/svg" font-size="10" font-family="ui-monospace, monospace">',
           f'<line x1="{PAD}" y1="{CHART_H - 28}" x2="{CHART_W - PAD}" y2="{CHART_H - 28}" class="axw-axis"/>']
    for a in (0, 0.5, 1):
        out.append(f'<text x="{px(a):.0f}" y="{CHART_H - 15}" text-anchor="middle">{show_number(a, "g")}</text>')
    out.append(f'<text x="{CHART_W / 2:.0f}" y="{CHART_H - 3}" text-anchor="middle">alpha</text>'
               f'<text x="4" y="12">score</text>')
    for i, start, end in lines:
        cls = "axw-line-win" if i in winners else "axw-line"
        name = _esc(show_token(tokenizer, c["tokens"][i]))
        out.append(f'<line x1="{px(0):.1f}" y1="{py(start):.1f}" x2="{px(1):.1f}" y2="{py(end):.1f}" class="{cls}">'
                   f'<title>{name}: confidence {show_number(start, ".3f")}, '
                   f'penalty {show_number(-end, ".3f")}</title></line>')
        out.append(f'<text x="{px(1) + 3:.0f}" y="{py(end) + 3:.1f}" class="{"axw-win" if i in winners else ""}">'
                   f'{name}</text>')
    if alpha is not None:
        out.append(f'<line x1="{px(alpha):.1f}" y1="6" x2="{px(alpha):.1f}" y2="{CHART_H - 28}" class="axw-now"/>')
    out.append("</svg>")
    return "".join(out)


def contrastive_panel(row: dict, tokenizer, settings=None, previous=None) -> str:
    """Contrastive search at this step: each candidate's confidence and degeneration penalty side by side, its
    score, and which candidate wins as alpha moves (recomputed from these numbers: no forward needed)."""
    if "contrastive" not in row:
        return ""
    c = row["contrastive"]
    best = max(range(len(c["score"])), key=lambda i: c["score"][i])
    parts = ['<p>Contrastive search scores each of the k most likely tokens by (1 - &alpha;) &middot; '
             'confidence - &alpha; &middot; degeneration penalty (its largest cosine similarity to the text so far) '
             'and takes the best.</p>',
             '<table class="axw-table axw-cs"><tr><th>token</th><th>confidence</th>'
             '<th>degeneration penalty</th><th>score</th></tr>']
    for i, token in enumerate(c["tokens"]):
        mark = ' class="axw-chosen"' if i == best else ""
        score = c["score"][i]
        parts.append(f'<tr{mark}><td><code>{_esc(show_token(tokenizer, token))}</code></td>'
                     f'<td>{bar_html(c["confidence"][i])}</td>'
                     f'<td>{bar_html(max(0.0, c["degeneration_penalty"][i]))}</td>'
                     f'<td>{show_number(score, ".3f")}</td></tr>' if math.isfinite(score) else
                     f'<tr{mark}><td><code>{_esc(show_token(tokenizer, token))}</code></td><td>{bar_html(0.0)}</td>'
                     f'<td>{show_number(c["degeneration_penalty"][i], ".3f")}</td><td>banned</td></tr>')
    parts.append("</table>")
    sweep = alpha_sweep(row)
    cells = "".join(f'<td><code>{_esc(show_token(tokenizer, s["token"]))}</code></td>' for s in sweep)
    parts.append('<p>Which candidate wins as alpha moves (the same step, the same candidates):</p>'
                 '<table class="axw-table axw-sweep"><tr><th>alpha</th>'
                 + "".join(f"<th>{show_number(s['alpha'], 'g')}</th>" for s in sweep)
                 + f"</tr><tr><th>wins</th>{cells}</tr></table>")
    parts.append(alpha_chart(row, tokenizer, sweep, settings.penalty_alpha if settings is not None else None))
    return "".join(parts)


# --- contrastive decoding: the expert and the amateur overlaid ---


def contrastive_decoding_panel(row: dict, tokenizer, settings=None, previous=None) -> str:
    """The expert's and the amateur's log-probability of each candidate, overlaid on one scale; the plausibility
    cut (tokens the expert gives less than alpha times its top probability are out); the score
    (1 + beta) expert - beta amateur the token is chosen by."""
    explained = row.get("contrastive_decoding")
    if not explained:
        return ""
    d = next(iter(explained.values()))
    alpha = settings.cd_alpha if settings is not None else None
    top = max(d["expert"]) if d["expert"] else 0.0
    finite = [v for v in d["expert"] + d["amateur"] if math.isfinite(v)]
    low = math.floor(min(finite) - 0.5) if finite else -10.0

    def width(logp):
        return 0.0 if not math.isfinite(logp) else 100 * max(0.0, min(1.0, (logp - low) / -low))

    cut, line = "", ""
    if alpha is not None:
        cut_at = top + math.log(alpha)
        cut = (f" The cut: log p<sub>expert</sub> &ge; log &alpha; + max log p<sub>expert</sub> = "
               f"{show_number(cut_at)} (p &ge; {show_number(alpha, 'g')} &times; {show_number(math.exp(top), '.3f')}).")
        line = f'<i class="axw-cut-line" style="left:{width(cut_at):.1f}%" title="the plausibility cut"></i>'
    parts = [f"<p>Contrastive decoding: the expert's (blue) and the amateur's (orange) log-probability of each "
             f'candidate, on one scale from {low} to 0; the red line is the plausibility cut. Only the plausible '
             f'tokens may be chosen, by the score (1 + &beta;) expert - &beta; amateur logits.{cut}</p>',
             '<table class="axw-table axw-cd"><tr><th>token</th><th>log-probability: expert, amateur</th>'
             '<th>log p expert</th><th>log p amateur</th><th>plausible</th><th>score</th></tr>']
    scores = [s for s in d["score"] if math.isfinite(s)]
    best = d["score"].index(max(scores)) if scores else None
    for i, token in enumerate(row["candidates"]):
        bars = (f'<div class="axw-bar2"><div class="axw-e" style="width:{width(d["expert"][i]):.1f}%"></div>'
                f'<div class="axw-a" style="width:{width(d["amateur"][i]):.1f}%"></div>{line}</div>')
        ok = d["plausible"][i]
        score = show_number(d["score"][i]) if math.isfinite(d["score"][i]) else "cut"
        mark = ' class="axw-chosen"' if i == best else ("" if ok else ' class="axw-gone"')
        parts.append(f'<tr{mark}><td><code>{_esc(show_token(tokenizer, token))}</code></td><td>{bars}</td>'
                     f'<td>{show_number(d["expert"][i])}</td><td>{show_number(d["amateur"][i])}</td>'
                     f'<td>{"yes" if ok else "no"}</td><td>{score}</td></tr>')
    parts.append("</table>")
    return "".join(parts)


def install():
    """Put the panels in the step view, before the live beams (once, however often this runs)."""
    panels = render.STEP_PANELS
    for panel in (contrastive_panel, contrastive_decoding_panel, speculative_panel, beam_candidates_panel):
        if panel not in panels:
            panels.insert(panels.index(render.beams_panel), panel)


install()
