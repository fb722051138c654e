"""HTML the views show: the text coloured by probability (each token clickable), one step of the trace (the
numbers after each stage, the candidates a what-if branch can force, a panel per strategy), the branches.

Pure functions of the data, escaped throughout: the views only place them.
"""

from __future__ import annotations

import html

from .settings import Settings


def prob_colour(p: float) -> str:
    """Red (unlikely) through yellow to green (likely), light enough to read text on."""
    p = min(max(float(p), 0.0), 1.0)
    return f"hsl({120 * p:.0f}, 75%, 80%)"


def _text(s: str) -> str:
    return html.escape(s).replace("\n", "<br>")


def show_token(tokenizer, token_id: int) -> str:
    """A token as a label: whitespace made visible."""
    text = tokenizer.decode([token_id])
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or f"#{token_id}"


def tokens_html(prompt: str, pieces: list[str], probs: list, selected: int | None = None,
                forced: int | None = None, shared: int = 0) -> str:
    """The prompt, then each generated token as a span (`data-i` = its step, 0-based) coloured by the
    probability it was chosen with; `selected` is highlighted, `forced` (a branch's forced token) outlined, the
    first `shared` tokens (a prefix two branches share) dimmed."""
    out = [f'<div class="axw-out"><span class="axw-prompt">{_text(prompt)}</span>']
    for i, (piece, p) in enumerate(zip(pieces, probs)):
        classes = ["axw-tok"] + (["axw-sel"] if i == selected else []) + (["axw-forced"] if i == forced else []) \
            + (["axw-shared"] if i < shared else [])
        style = f' style="background:{prob_colour(p)}"' if p is not None else ""
        title = f"step {i + 1}" + (f": p = {p:.3f}" if p is not None else "") + (" (forced)" if i == forced else "")
        out.append(f'<span class="{" ".join(classes)}" data-i="{i}"{style} title="{title}">{_text(piece)}</span>')
    out.append("</div>")
    return "".join(out)


def legend() -> str:
    return ('<div class="axw-legend">colour = probability the token was chosen with (beam search: the model\'s '
            'probability of it): '
            + " ".join(f'<span style="background:{prob_colour(p)}">{p:.2f}</span>' for p in (0.05, 0.25, 0.5, 0.75, 1))
            + ' &middot; click a token to open its step</div>')


# --- one step ---


def stage_setting(stage: str, settings: Settings | None) -> str:
    """The setting a stage ran with, e.g. 'top_p 0.9', for its label."""
    if settings is None:
        return stage
    s = settings
    values = dict(top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, top_a=s.top_a, typical_p=s.typical_p,
                  epsilon_cutoff=s.epsilon_cutoff, eta_cutoff=s.eta_cutoff, top_h=s.top_h, top_n_sigma=s.top_n_sigma,
                  temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                  no_repeat_ngram=s.no_repeat_ngram_size)
    described = dict(xtc=f"xtc (probability {s.xtc_probability:g}, threshold {s.xtc_threshold:g})",
                     dynamic_temperature=f"dynamic temperature {s.temperature:g} ± {s.dynatemp_range:g}",
                     mirostat=f"mirostat (tau {s.mirostat_tau:g} bits)",
                     dry=f"dry (x{s.dry_multiplier:g}, base {s.dry_base:g}, allowed {s.dry_allowed_length})",
                     contrastive_decoding=f"contrastive decoding (alpha {s.cd_alpha:g}, beta {s.cd_beta:g})")
    if stage in described:
        return described[stage]
    value = values.get(stage)
    return f"{stage} {value:g}" if isinstance(value, (int, float)) else stage


def stage_numbers(row: dict, settings: Settings | None = None) -> list[dict]:
    """After each stage: the tokens kept, the share of the model's probability they hold, the entropy (bits)."""
    return [dict(stage=s, label=stage_setting(s, settings), kept=row["kept"][s], mass=row["mass"][s],
                 entropy=row["entropy"][s]) for s in row["stages"] if s in row.get("mass", {})]


def stages_html(row: dict, settings: Settings | None = None) -> str:
    items = []
    for n in stage_numbers(row, settings):
        verb = "has" if n["stage"] == "model" else "kept"
        items.append(f'<li><b>{html.escape(n["label"])}</b> {verb} <b>{n["kept"]:,}</b> token'
                     f'{"s" * (n["kept"] != 1)} holding <b>{100 * n["mass"]:.1f}%</b> of the model\'s probability; '
                     f'entropy <b>{n["entropy"]:.2f}</b> bits</li>')
    return f'<ol class="axw-stages">{"".join(items)}</ol>' if items else ""


def step_table(row: dict, tokenizer) -> list[dict]:
    """The chart data of one step: a record per candidate (the model's top
    tokens, most likely first) with its probability after each stage and
    whether that stage cut it."""
    records = []
    for rank, token in enumerate(row["candidates"]):
        probs = {stage: row["probs"][stage][rank] for stage in row["stages"]}
        records.append(dict(rank=rank, id=token, token=show_token(tokenizer, token), probs=probs,
                            cut={stage: p == 0.0 for stage, p in probs.items()},
                            chosen=token == row.get("chosen")))
    return records


def _bar(p: float) -> str:
    width = max(0.0, min(1.0, p)) * 100
    return (f'<div class="axw-bar"><div style="width:{width:.1f}%"></div>'
            f'<span>{p:.3f}</span></div>')


def beams_panel(row: dict, tokenizer, settings: Settings | None = None, previous: dict | None = None) -> str:
    if "beams" not in row:
        return ""
    parts = ["<p>The live beams after this step, best first (score = summed log-probability"
             ", divided by length<sup>length penalty</sup>).</p>",
             '<table class="axw-table"><tr><th>#</th><th>beam</th><th>score</th><th>ended</th></tr>']
    for i, (beam, score, done) in enumerate(zip(row["beams"], row["beam_scores"], row["beam_finished"])):
        text = html.escape(tokenizer.decode(beam)).replace("\n", "↵")
        parts.append(f'<tr><td>{i + 1}</td><td class="axw-beam">{text}</td><td>{score:.3f}</td>'
                     f'<td>{"yes" if done else ""}</td></tr>')
    parts.append("</table>")
    return "".join(parts)


# strategy panels drawn above the candidates, in order: a strategy's own view adds its function here, called as
# panel(row, tokenizer, settings=the run's Settings or None, previous=the step before's trace row or None)
STEP_PANELS = [beams_panel]


def candidates_html(row: dict, tokenizer, branching: bool = True) -> str:
    stages = row["stages"]
    if "beams" in row:  # the trace holds the distribution of the beam that was first going into this step
        intro = "The model's top candidates for the leading beam going into this step."
    else:
        intro = ("The model's top candidates and their probability after each stage (penalties, filters in order, "
                 "temperature); <i>cut</i>: removed by that stage.")
    if branching:
        intro += " <b>Click a candidate</b> to force it here and see where the text goes (a what-if branch)."
    parts = [f"<p>{intro}</p>", '<table class="axw-table axw-cands"><tr><th>token</th>'
             + "".join(f'<th>{html.escape(s)}<br><small>{row["kept"][s]} kept</small></th>' for s in stages)
             + ("<th></th>" if branching else "") + "</tr>"]
    for rec in step_table(row, tokenizer):
        classes = (["axw-chosen"] if rec["chosen"] else []) + (["axw-cand"] if branching else [])
        mark = f' class="{" ".join(classes)}"' if classes else ""
        data = f' data-token="{rec["id"]}" title="force {html.escape(rec["token"])} here"' if branching else ""
        cells = "".join('<td class="axw-cut">cut</td>' if rec["cut"][s] else f"<td>{_bar(rec['probs'][s])}</td>"
                        for s in stages)
        gone = ' class="axw-gone"' if any(rec["cut"].values()) else ""
        what_if = '<td class="axw-whatif">what if? ↳</td>' if branching else ""
        parts.append(f"<tr{mark}{data}><td{gone}><code>{html.escape(rec['token'])}</code></td>{cells}{what_if}</tr>")
    parts.append("</table>")
    return "".join(parts)


def step_html(row: dict | None, tokenizer, settings: Settings | None = None, branching: bool = True,
              previous: dict | None = None) -> str:
    """One step of the trace: what was chosen, the numbers after each stage, the strategy's panels, and the
    candidates with their probability after each stage (each one a what-if branch when `branching`).
    `previous`: the step before's row (beam search: the beams the candidates extend)."""
    if not row:
        return '<p class="axw-note">Generate some text, then click a token or pick a step.</p>'
    parts = [f'<div class="axw-step" data-step="{row["step"]}"><b>step {row["step"] + 1}</b>']
    if "chosen" in row:
        token = html.escape(show_token(tokenizer, row["chosen"]))
        how = "forced" if row.get("forced") else "chose"
        rank = f'rank {row["chosen_rank"] + 1} under the model' if "chosen_rank" in row else "not among the traced"
        prob = f', {"its probability" if row.get("forced") else "chosen with"} p = {row["chosen_prob"]:.3f}' \
            if row.get("chosen_prob") is not None else ""
        parts.append(f" &middot; {how} <code>{token}</code> ({rank}{prob})")
        if row.get("forced"):
            parts.append(' &middot; <span class="axw-forced-note">a what-if branch: you forced this token</span>')
    parts.append(stages_html(row, settings))
    parts.extend(panel(row, tokenizer, settings=settings, previous=previous) for panel in STEP_PANELS)
    parts.append(candidates_html(row, tokenizer, branching))
    parts.append("</div>")
    return "".join(parts)


# --- branches ---


def forks_html(runs: list, tokenizer, current: int | None = None) -> str:
    """Each branch point: where it left which run, the token taken there and the one forced, how it goes on."""
    branches = [r for r in runs if r.parent is not None]
    if not branches:
        return ('<p class="axw-note">No branches yet: open a step (click a token) and click one of its candidates '
                'to see what the text would have been.</p>')
    rows = ['<table class="axw-table axw-forks"><tr><th>branch</th><th>from</th><th>at step</th><th>took</th>'
            '<th>forced</th><th>goes on</th></tr>']
    for r in branches:
        took = html.escape(show_token(tokenizer, r.taken)) if r.taken is not None else "<i>end</i>"
        after = html.escape("".join(r.pieces[r.step:r.step + 12])).replace("\n", "↵")
        mark = ' class="axw-chosen"' if r.id == current else ""
        parent = "text" if r.parent == 0 else f"branch {r.parent}"
        rows.append(f'<tr{mark}><td>{r.id}</td><td>{parent}</td><td>{r.step + 1}</td><td><code>{took}</code></td>'
                    f'<td><code>{html.escape(show_token(tokenizer, r.forced))}</code></td>'
                    f'<td class="axw-beam">{after}…</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def shared_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def side_by_side(a, b, tokenizer) -> tuple[str, str]:
    """Two runs' texts, the prefix they share dimmed, each from where it differs in full colour, the first token
    that differs underlined."""
    if a is None or b is None:
        empty = '<p class="axw-note">Pick two runs to compare.</p>'
        return empty, empty
    shared = shared_length(a.new_ids, b.new_ids)  # where they part: marked on both sides
    return (tokens_html(a.prompt, a.pieces, a.probs, forced=shared, shared=shared),
            tokens_html(b.prompt, b.pieces, b.probs, forced=shared, shared=shared))
