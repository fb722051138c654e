"""HTML the views show: the text coloured by probability (each token clickable), one step of the trace (the
numbers after each stage, the candidates a what-if branch can force, a panel per strategy), the branches.

Pure functions of the data, escaped throughout: the views only place them.
"""

from __future__ import annotations

import bisect
import functools
import html
import re

from axw.specs import FILTER_SPECS

from .settings import Settings


# The colour scale: bins on log probability. The probabilities the bundled model's tokens were chosen with
# (assets/models/shakespeare, 5 prompts x 120 tokens, seeds 0-4; beam search: the model's probability of each
# token of the returned beam), as quantiles:
#                              5%      10%     25%     50%     75%     90%
#   temperature 0.8, top-p 0.9 0.003   0.006   0.037   0.206   0.599   1.000
#   greedy                     0.070   0.094   0.148   0.302   0.621   0.990
#   temperature 1.0            0.0005  0.002   0.011   0.068   0.375   0.933
#   beam search, 4 beams       0.096   0.135   0.291   0.597   0.983   1.000
# A hue linear in p drew half of a T 0.8 text (p < 0.2) red to orange. With edges at 0.001, 0.01, 0.05, 0.2,
# 0.5 and 0.9 the quartiles of each row fall in three different colours, and a T 0.8, top-p 0.9 text spreads
# over all seven (2%, 12%, 16%, 20%, 20%, 14%, 16% of its tokens, least likely first).
PROB_STOPS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.9)
# one colour per bin (below the first stop, between two, from the last on): red (unlikely) through yellow to
# green (likely), light enough to read dark text on
PROB_COLOURS = ("hsl(0, 80%, 75%)", "hsl(17, 88%, 74%)", "hsl(36, 95%, 68%)", "hsl(53, 92%, 66%)",
                "hsl(75, 65%, 67%)", "hsl(100, 50%, 73%)", "hsl(140, 45%, 74%)")


def prob_bin(p: float) -> int:
    """Which of the colour scale's bins p falls in: 0 below PROB_STOPS[0], i from PROB_STOPS[i - 1] on."""
    p = float(p)
    return 0 if p != p else bisect.bisect_right(PROB_STOPS, p)  # NaN (no probability): the first bin


def prob_colour(p: float) -> str:
    """The colour of a token chosen with probability p: its bin's (see PROB_STOPS)."""
    return PROB_COLOURS[prob_bin(p)]


def show_number(value: float, spec: str = ".2f") -> str:
    """`value` as `format(value, spec)` writes it, but never a negative zero: a value that rounds to zero prints
    unsigned (-0.0001 at ".2f" is "0.00", -0.0 at "g" is "0"), as a reader would write it. Every number the page
    prints goes through here."""
    text = format(value, spec)
    digits = [c for c in text if c.isdigit()]
    if text.startswith("-") and digits and set(digits) == {"0"}:
        return text[1:]
    return text


def rounded(value: float | None, digits: int) -> float | None:
    """`round(value, digits)` without a negative zero, for numbers a plot or a table formats itself."""
    return None if value is None else round(value, digits) + 0  # -0.0 + 0 is 0.0


def show_p(p: float) -> str:
    """A probability for a hover title: three decimals, or two significant digits below 0.001 (the first bin)."""
    return show_number(p, ".3f") if p >= 0.001 or p == 0 else show_number(p, ".2g")


def _text(s: str) -> str:
    return html.escape(s).replace("\n", "<br>")


BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece's byte tokens, as Llama and Gemma write them


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in its vocabulary."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(extra))]
    return {chr(c): b for c, b in zip(chars, printable + extra)}


BYTE_LEVEL = _byte_level_table()


def token_text(tokenizer, token_id: int) -> str:
    """What one token reads as in a text: its decoded text, with the space a SentencePiece token (`▁the`) starts
    with kept (decoding it alone drops it), and a token that holds only part of a character (a byte-fallback
    `<0xE2>`, or a byte-level piece of one) as its bytes, `‹E2›`, since alone it decodes to nothing readable."""
    raw = tokenizer.id_to_token(token_id) or ""
    byte = BYTE_FALLBACK.match(raw)
    if byte:
        value = int(byte.group(1), 16)
        return chr(value) if value < 0x80 else f"‹{value:02X}›"
    text = tokenizer.decode([token_id])
    if "\ufffd" in text and raw and all(c in BYTE_LEVEL for c in raw):
        data = bytes(BYTE_LEVEL[c] for c in raw)
        text = data.decode("utf-8", errors="replace")
        if "\ufffd" in text:
            return "".join(f"‹{b:02X}›" for b in data)
    if raw.startswith("▁") and not text.startswith(" "):
        text = " " + text
    return text


def show_token(tokenizer, token_id: int) -> str:
    """A token as a label: what it reads as (token_text), whitespace made visible."""
    text = token_text(tokenizer, token_id)
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or f"#{token_id}"


def raw_token(tokenizer, token_id: int) -> str:
    """The token as its vocabulary writes it (`▁the`, `Ġthe`, `<0xE2>`) and its id: what a label's hover shows."""
    return f"{tokenizer.id_to_token(token_id)} (id {token_id})"


def prompt_html(prompt: str, specials: tuple[str, ...] = ()) -> str:
    """The prompt's text, each of the special tokens `specials` (a chat template's turn markers) marked."""
    if not specials:
        return _text(prompt)
    parts = re.split("(" + "|".join(re.escape(t) for t in specials) + ")", prompt)
    return "".join(f'<span class="axw-special" title="special token">{_text(part)}</span>' if i % 2 else _text(part)
                   for i, part in enumerate(parts))


def tokens_html(prompt: str, pieces: list[str], probs: list, selected: int | None = None,
                forced: int | None = None, shared: int = 0, specials: tuple[str, ...] = ()) -> str:
    """The prompt (its special tokens marked), then each generated token as a span (`data-i` = its step,
    0-based) coloured by the probability it was chosen with; `selected` is highlighted, `forced` (a branch's
    forced token) outlined, the first `shared` tokens (a prefix two branches share) dimmed."""
    out = [f'<div class="axw-out"><span class="axw-prompt">{prompt_html(prompt, specials)}</span>']
    out += [_token_span(i, piece, p, i == selected, i == forced, i < shared)
            for i, (piece, p) in enumerate(zip(pieces, probs))]
    out.append("</div>")
    return "".join(out)


@functools.lru_cache(maxsize=1 << 13)
def _token_span(i: int, piece: str, p: float | None, selected: bool, forced: bool, shared: bool) -> str:
    """Token i's span in `tokens_html`, kept once made: a streamed text is drawn again at every update with its
    tokens so far unchanged, so an update draws only its new tokens (a class's texts of 512 tokens fit)."""
    classes = ["axw-tok"] + ["axw-sel"] * selected + ["axw-forced"] * forced + ["axw-shared"] * shared
    style = f' style="background:{prob_colour(p)}"' if p is not None else ""
    title = f"step {i + 1}" + (f": p = {show_p(p)}" if p is not None else "") + (" (forced)" if forced else "")
    return f'<span class="{" ".join(classes)}" data-i="{i}"{style} title="{title}">{_text(piece)}</span>'


def legend() -> str:
    """The colour scale's bins, each in its colour, least likely first."""
    edges = [f"{p:g}" for p in PROB_STOPS]
    labels = [f"&lt; {edges[0]}"] + [f"{a}&ndash;{b}" for a, b in zip(edges, edges[1:])] + [f"&ge; {edges[-1]}"]
    return ('<div class="axw-legend">colour = probability the token was chosen with (beam search: the model\'s '
            'probability of it): '
            + " ".join(f'<span style="background:{c}">{label}</span>' for c, label in zip(PROB_COLOURS, labels))
            + ' &middot; hover a token for its p, click it to open its step</div>')


# --- one step ---


def stage_setting(stage: str, settings: Settings | None) -> str:
    """The setting a stage ran with, e.g. 'top_p 0.9', for its label."""
    if settings is None:
        return stage
    s = settings
    values = {f.name: getattr(s, f.name) for f in FILTER_SPECS} | dict(
        temperature=s.temperature, repetition_penalty=s.repetition_penalty, no_repeat_ngram=s.no_repeat_ngram_size)

    def g(value):
        return show_number(value, "g")

    described = dict(xtc=f"xtc (probability {g(s.xtc_probability)}, threshold {g(s.xtc_threshold)})",
                     dynamic_temperature=f"dynamic temperature {g(s.temperature)} ± {g(s.dynatemp_range)}",
                     mirostat=f"mirostat (tau {g(s.mirostat_tau)} bits)",
                     dry=f"dry (x{g(s.dry_multiplier)}, base {g(s.dry_base)}, allowed {s.dry_allowed_length})",
                     contrastive_decoding=f"contrastive decoding (alpha {g(s.cd_alpha)}, beta {g(s.cd_beta)})",
                     grammar=constraint_label(s))
    if stage in described:
        return described[stage]
    value = values.get(stage)
    return f"{stage} {g(value)}" if isinstance(value, (int, float)) and not isinstance(value, bool) else stage


def constraint_label(s: Settings) -> str:
    """The grammar stage's label: what the constraint is."""
    if s.choices.strip():
        return "grammar (one of " + " / ".join(line.strip() for line in s.choices.splitlines() if line.strip()) + ")"
    if s.regex:
        return f"grammar (regex {s.regex})"
    return "grammar (" + ("JSON schema" if s.json_schema else "Lark grammar") + ")"


def stage_numbers(row: dict, settings: Settings | None = None) -> list[dict]:
    """After each stage: the tokens kept, the share of the model's probability they hold, the entropy (bits)."""
    return [dict(stage=s, label=stage_setting(s, settings), kept=row["kept"][s], mass=row["mass"][s],
                 entropy=row["entropy"][s]) for s in row["stages"] if s in row.get("mass", {})]


def stages_html(row: dict, settings: Settings | None = None) -> str:
    items = []
    for n in stage_numbers(row, settings):
        verb = "has" if n["stage"] == "model" else "allowed" if n["stage"] == "grammar" else "kept"
        items.append(f'<li><b>{html.escape(n["label"])}</b> {verb} <b>{n["kept"]:,}</b> token'
                     f'{"s" * (n["kept"] != 1)} holding <b>{show_number(100 * n["mass"], ".1f")}%</b> of the '
                     f'model\'s probability; entropy <b>{show_number(n["entropy"])}</b> bits</li>')
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


def bar_html(p: float) -> str:
    """A probability as a bar with its number."""
    width = max(0.0, min(1.0, p)) * 100
    return (f'<div class="axw-bar"><div style="width:{width:.1f}%"></div>'
            f'<span>{show_number(p, ".3f")}</span></div>')


def beams_panel(row: dict, tokenizer, settings: Settings | None = None, previous: dict | None = None) -> str:
    if "beams" not in row:
        return ""
    parts = ["<p>The live beams after this step, best first (score = summed log-probability"
             ", divided by length<sup>length penalty</sup>).</p>",
             '<table class="axw-table"><tr><th>#</th><th>beam</th><th>score</th><th>ended</th></tr>']
    for i, (beam, score, done) in enumerate(zip(row["beams"], row["beam_scores"], row["beam_finished"])):
        text = html.escape(tokenizer.decode(beam)).replace("\n", "↵")
        parts.append(f'<tr><td>{i + 1}</td><td class="axw-beam">{text}</td><td>{show_number(score, ".3f")}</td>'
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
        raw = html.escape(raw_token(tokenizer, rec["id"]), quote=True)
        cells = "".join('<td class="axw-cut">cut</td>' if rec["cut"][s] else
                        f"<td>{bar_html(rec['probs'][s])}</td>" for s in stages)
        gone = ' class="axw-gone"' if any(rec["cut"].values()) else ""
        what_if = '<td class="axw-whatif">what if? ↳</td>' if branching else ""
        parts.append(f'<tr{mark}{data}><td{gone}><code title="{raw}">{html.escape(rec["token"])}</code></td>{cells}'
                     f"{what_if}</tr>")
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
        prob = (f', {"its probability" if row.get("forced") else "chosen with"} p = '
                f'{show_number(row["chosen_prob"], ".3f")}' if row.get("chosen_prob") is not None else "")
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
    return (tokens_html(a.prompt, a.pieces, a.probs, forced=shared, shared=shared, specials=a.specials),
            tokens_html(b.prompt, b.pieces, b.probs, forced=shared, shared=shared, specials=b.specials))
