"""The layers, drawn: the layer view (what each layer would have predicted at a step: the logit lens, from
`numbers.layers`) and DoLa's panel in the step view (each candidate layer's guess and its divergence from the
last layer; the one contrasted marked). Pure functions of the numbers, escaped throughout."""

from __future__ import annotations

import html

from . import render
from .render import bar_html, show_number, show_token


def _token(tokenizer, token: int) -> str:
    return f"<code>{html.escape(show_token(tokenizer, token))}</code>"


def layer_name(layer: int, last: int) -> str:
    if layer == 0:
        return "0 · embeddings"
    return f"{layer} · last" if layer == last else str(layer)


def layers_html(lens: dict | None, tokenizer) -> str:
    """The layer view of one step: per layer (the embeddings first, the last layer's being the model's own
    distribution) its most likely tokens, and the chosen token's rank and probability there; DoLa's two
    contrasted layers marked."""
    if not lens:
        return ('<p class="axw-note">Open a step (click a token or move the step slider) to see what each layer '
                "would have predicted there.</p>")
    last, chosen = lens["layers"][-1], lens.get("chosen")
    contrasted = lens.get("contrasted") or []
    parts = [f'<div class="axw-layers" data-step="{lens["step"]}"><p>Step {lens["step"] + 1}: each layer\'s hidden '
             "state read through the final norm and the head (the logit lens), as if the network stopped there."]
    if chosen is not None:
        formed = lens.get("formed")
        where = (f" It is the top guess from layer {formed} on." if formed is not None else
                 " The last layer does not rank it first: the strategy chose it, not the model's top guess.")
        parts.append(f" The chosen token {_token(tokenizer, chosen)}: its rank and probability after each layer."
                     + where)
    if contrasted:
        parts.append(f" DoLa contrasted layer {contrasted[0]} with the last layer here (marked).")
    parts.append('</p><table class="axw-table axw-layer-table"><tr><th>layer</th><th>top guesses</th>'
                 + ("<th>chosen: rank</th><th>chosen: p</th>" if chosen is not None else "") + "<th>entropy</th></tr>")
    for layer in reversed(lens["layers"]):
        guesses = " ".join(f'{_token(tokenizer, t)} <small>{show_number(p, ".3f")}</small>'
                           for t, p in zip(lens["top"][layer], lens["top_probs"][layer]))
        mark = ' class="axw-contrasted"' if layer in contrasted else ""
        note = (" <small>(DoLa: contrasted)</small>" if layer == contrasted[0] else " <small>(DoLa: mature)</small>"
                ) if layer in contrasted else ""
        chosen_cells = (f'<td>{lens["chosen_rank"][layer] + 1}</td><td>{bar_html(lens["chosen_prob"][layer])}</td>'
                        if chosen is not None else "")
        parts.append(f'<tr{mark} data-layer="{layer}"><td>{layer_name(layer, last)}{note}</td><td>{guesses}</td>'
                     f'{chosen_cells}<td>{show_number(lens["entropy"][layer], ".2f")} bits</td></tr>')
    parts.append("</table></div>")
    return "".join(parts)


def dola_panel(row: dict, tokenizer, settings=None, previous=None) -> str:
    """DoLa at this step: each candidate early layer's divergence from the last layer and its top guesses; the
    most divergent one is contrasted (its log-probabilities subtracted from the last layer's, over the tokens the
    last layer finds plausible: the "dola" stage below)."""
    d = row.get("dola")
    if not d:
        return ""
    parts = ['<div class="axw-dola-panel"><p>DoLa: the candidate early layers, each read through the final norm '
             "and the head. The one whose "
             "distribution differs most from the last layer's (Jensen-Shannon divergence) is contrasted: the "
             "<i>dola</i> stage scores log p<sub>last</sub> - log p<sub>early</sub> over the tokens with "
             "p<sub>last</sub> &ge; 0.1 &times; its top.</p>",
             '<table class="axw-table axw-dola"><tr><th>layer</th><th>divergence</th><th>its top guesses</th></tr>']
    for layer, div, top, probs in zip(d["layers"], d["divergence"], d["top"], d["top_probs"]):
        mark = ' class="axw-chosen"' if layer == d["premature"] else ""
        guesses = " ".join(f'{_token(tokenizer, t)} <small>{show_number(p, ".3f")}</small>' for t, p in zip(top, probs))
        parts.append(f"<tr{mark}><td>{layer}{' (contrasted)' if mark else ''}</td><td>{show_number(div, '.4f')}</td>"
                     f"<td>{guesses}</td></tr>")
    parts.append("</table></div>")
    return "".join(parts)


def install():
    """Put DoLa's panel in the step view, before the candidates (once, however often this runs)."""
    if dola_panel not in render.STEP_PANELS:
        render.STEP_PANELS.append(dola_panel)


install()
