"""Lessons for teachers: per strategy, a one-line explanation with its paper, and prepared lessons that show its
characteristic behaviour on the bundled model. A lesson runs where it is clicked: the Generate tab's controls
filled as its share link fills them, then Generate; a paired lesson opens the Compare tab with its columns beside
greedy's. Each says what to look for in what it shows on the bundled model (`tests/test_strategies.py` checks
the main claims there)."""

from __future__ import annotations

import html
from dataclasses import dataclass

from .settings import Settings, to_query
from .structure import CHARACTER

LOOP_PROMPT = "KING HENRY:\nMy lord,"
HOT_PROMPT = "ROMEO:\n"

EXPLAIN = {
    "sampling": "Draw each token at random from the filtered, tempered distribution; temperature 0 is greedy (always "
                "the most likely token). Nucleus sampling: Holtzman et al. 2019, arXiv:1904.09751.",
    "beam search": "Keep the few most likely sequences (beams) at every step and return the best: likely, often dull, "
                   "and prone to loops (Holtzman et al. 2019 show why). The beam tree below the text draws every "
                   "candidate it weighed.",
    "contrastive search": "Among the k likeliest tokens, take the one least similar to the text so far: "
                          "(1 - alpha) confidence - alpha degeneration penalty (Su et al. 2022, arXiv:2202.06417). "
                          "It fights loops.",
    "contrastive decoding": "Prefer tokens the model likes much more than a small amateur model does, among the "
                            "plausible ones (Li et al. 2022, arXiv:2210.15097): removes the amateur's generic "
                            "mistakes.",
    "speculative decoding": "A cheap drafter proposes a few tokens, the model checks them all in one forward and keeps "
                            "what it agrees with (Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023, "
                            "arXiv:2302.01318): the model's own text, in fewer model forwards.",
    "DoLa": "Contrast the last layer with an early one: each step, of the candidate layers, the one whose "
            "prediction differs most from the last layer's is subtracted (in log-probabilities) over the tokens the "
            "last layer finds plausible, favouring what the late layers added (Chuang et al. 2023, "
            "arXiv:2309.03883). The step view's layers show each layer's guess.",
}

GREEDY = "greedy"  # the Compare tab's first column, always shown


@dataclass(frozen=True)
class Lesson:
    """`prompt` through `settings` in the Generate tab; or, when `columns` is given (the Compare tab's column
    labels with the settings each runs), a paired lesson: the Compare tab with greedy and those columns, on
    `prompt` with the seed and length of `settings`. `look_for`: what it shows on the bundled model."""

    title: str
    prompt: str
    settings: Settings
    look_for: str
    columns: tuple[tuple[str, Settings], ...] = ()

    def runs(self) -> list[tuple[str, Settings]]:
        """(name, settings) of each text it shows: its own, or each Compare column's, greedy first."""
        if not self.columns:
            return [(self.title, self.settings)]
        greedy = Settings(temperature=0.0, seed=self.settings.seed, max_new_tokens=self.settings.max_new_tokens)
        return [(GREEDY, greedy), *self.columns]


TOP_P_HOT = Settings(temperature=2.0, top_p=0.9, sampler_order="temperature_first", max_new_tokens=60)
MIN_P_HOT = Settings(temperature=2.0, min_p=0.1, sampler_order="temperature_first", max_new_tokens=60)
SPECULATIVE = Settings(strategy="speculative decoding", temperature=0.0, max_new_tokens=60)
JSON_CHARACTER = Settings(temperature=0.0, max_new_tokens=40, json_schema=CHARACTER)
ASK_PROMPT = "ROMEO:\nWho art thou, and how old?\nJULIET:\n"

LESSONS = {
    "beam search": [
        Lesson("beam search's repetition loop", LOOP_PROMPT,
               Settings(strategy="beam search", beams=4, max_new_tokens=60),
               "the text: after one line it repeats “KING HENRY VI:” to the end. The beam tree below it: all four "
               "beams end in that same loop and differ only in their last token or two: repeating is what "
               "scores highest."),
    ],
    "contrastive search": [
        Lesson("contrastive search leaves the loop (same prompt as beam search's)", LOOP_PROMPT,
               Settings(strategy="contrastive search", penalty_alpha=0.6, contrastive_k=4, max_new_tokens=60),
               "the text: a new speaker and new lines where beam search looped, and no 4-gram repeated. Click "
               "its tokens: about two in five are not the model's likeliest, and the step view's chart of each "
               "candidate's score as alpha moves shows the penalty passing over a likelier token too like the "
               "text so far."),
    ],
    "sampling": [
        Lesson("top-p against min-p at temperature 2, temperature first", HOT_PROMPT, Settings(max_new_tokens=60),
               "the top-p column breaks up into made-up words: at temperature 2 its nucleus swells to hundreds of "
               "tokens a step. The min-p column, drawn with the same random numbers, keeps mostly to words: its "
               "cut follows the top token (tens of tokens a step), and its mean log p is far higher. Their share "
               "links open each in the Generate tab, whose step view counts the tokens kept.",
               columns=(("top-p 0.9 (T 2, temperature first)", TOP_P_HOT),
                        ("min-p 0.1 (T 2, temperature first)", MIN_P_HOT))),
        Lesson("a grammar makes any model answer in JSON, at what cost", ASK_PROMPT, JSON_CHARACTER,
               "the JSON column is JSON that fits the character schema, {\"age\":3,\"name\":\"…\"}, from a model "
               "that has only read plays; greedy answers in verse. Open the JSON column's share link and pick the "
               "timeline's “probability the constraint removed”: at every brace, quote, key and colon the grammar "
               "allowed a token or a few holding under 1% of the model's probability, often a millionth of it. "
               "Inside the name the model writes its own words and the grammar removes little, until the name's "
               "20 characters (maxLength) are spent and the closing quote is forced. The cost: the form is the "
               "grammar's, the content a guess (age 3: the likeliest digit, not an answer).",
               columns=(("JSON schema: a character (greedy)", JSON_CHARACTER),)),
    ],
    "speculative decoding": [
        Lesson("speculative decoding against greedy: the same text", LOOP_PROMPT, Settings(max_new_tokens=60),
               "under the speculative column: “the same text as greedy”, token for token, though the draft model "
               "proposed almost every token and the model only checked them, five at a time. Its share link, "
               "generated in the Generate tab, shows the rounds: about a dozen model forwards for 60 tokens.",
               columns=(("speculative decoding (greedy, draft model)", SPECULATIVE),)),
        Lesson("drafts that cost nothing: the draft model with its n-gram datastore", LOOP_PROMPT,
               Settings(strategy="speculative decoding", temperature=0.0, max_new_tokens=60,
                        drafter="draft model + datastore"),
               "the rounds view: every draft is a copy from the datastore (underlined in blue), at no cost. The "
               "first rounds are mostly rejected; once the text loops, whole rounds of ten copied tokens are "
               "accepted: about ten model forwards for 60 tokens, and still greedy's text."),
    ],
    "contrastive decoding": [
        Lesson("contrastive decoding at temperature 0 on the looping prompt", LOOP_PROMPT,
               Settings(strategy="contrastive decoding", temperature=0.0, max_new_tokens=60),
               "the text moves on to YORK's lines where greedy (the speculative lessons show it) repeats “KING "
               "HENRY VI:”, though it still echoes itself (“I hope …”). Click a token: the step view overlays "
               "the expert's and the amateur's log-probabilities; the token taken is the one the expert likes "
               "much more than the amateur, not always the expert's likeliest."),
    ],
}


def link(prompt: str, settings: Settings) -> str:
    """A share link relative to the page: its query."""
    return "?" + to_query(prompt, settings)


def find(strategy, index) -> Lesson:
    """The lesson `index` of `strategy` (as the page sends them); ValueError when there is none."""
    lessons = LESSONS.get(strategy) if isinstance(strategy, str) else None
    if not lessons or isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(lessons):
        raise ValueError(f"there is no lesson {index!r} of {strategy!r}")
    return lessons[index]


def _short(name: str) -> str:
    return name.split(" (")[0]


def explain(strategy: str) -> str:
    """The strategy's explanation and its lessons, as HTML: each lesson a button that runs it (the page's script
    reads its data-strategy and data-index, and data-tab: where it runs), its share links (a paired lesson: one
    per text it shows), and its look-for line, which the page shows once it is clicked."""
    out = [f'<p class="axw-explain">{html.escape(EXPLAIN.get(strategy, ""))}</p>']
    lessons = LESSONS.get(strategy, [])
    if lessons:
        out.append('<p class="axw-lessons-head">Lesson' + "s" * (len(lessons) > 1) + ": click one and it runs</p>"
                   '<ul class="axw-lessons">')
        for i, lesson in enumerate(lessons):
            tab = "compare" if lesson.columns else "generate"
            links = [(_short(name) if lesson.columns else "share link", link(lesson.prompt, settings))
                     for name, settings in lesson.runs()]
            out.append(
                f'<li class="axw-lesson-item" data-strategy="{html.escape(strategy)}" data-index="{i}" '
                f'data-tab="{tab}"><button type="button" class="axw-lesson-run">▶ {html.escape(lesson.title)}'
                '</button><span class="axw-lesson-links">'
                + ("runs in the Compare tab · share links: " if lesson.columns else "")
                + " · ".join(f'<a href="{html.escape(href)}" target="_blank" rel="noopener" '
                             f'title="these settings as a share link (opens a new tab)">{html.escape(name)}</a>'
                             for name, href in links)
                + f'</span><p class="axw-lesson-look"><b>Look for:</b> {html.escape(lesson.look_for)}</p></li>')
        out.append("</ul>")
    return "".join(out)


def look_for_html(lesson: Lesson) -> str:
    """The lesson's title and what to look for, as the Compare tab shows it above a paired lesson's columns."""
    return (f'<p class="axw-lesson-note"><b>Lesson: {html.escape(lesson.title)}.</b> <b>Look for:</b> '
            f'{html.escape(lesson.look_for)}</p>')
