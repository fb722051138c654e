"""Lessons for teachers: per strategy, a one-line explanation with its paper, and prepared share links that show
its characteristic behaviour on the bundled model (open one, press Generate)."""

from __future__ import annotations

from .settings import Settings, to_query

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
}

# (title, prompt, settings): what each lesson's link opens
LESSONS = {
    "beam search": [
        ("beam search's repetition loop", LOOP_PROMPT, Settings(strategy="beam search", beams=4, max_new_tokens=60)),
    ],
    "contrastive search": [
        ("contrastive search leaves the loop (same prompt as beam search's)", LOOP_PROMPT,
         Settings(strategy="contrastive search", penalty_alpha=0.6, contrastive_k=4, max_new_tokens=60)),
    ],
    "sampling": [
        ("top-p at temperature 2, temperature first: the nucleus swells and the text breaks up", HOT_PROMPT,
         Settings(temperature=2.0, top_p=0.9, sampler_order="temperature_first", max_new_tokens=60)),
        ("min-p at the same temperature: the cut follows the top token and the text holds", HOT_PROMPT,
         Settings(temperature=2.0, min_p=0.1, sampler_order="temperature_first", max_new_tokens=60)),
    ],
    "speculative decoding": [
        ("speculative decoding's identical text: greedy's, token for token", LOOP_PROMPT,
         Settings(strategy="speculative decoding", temperature=0.0, max_new_tokens=60)),
        ("greedy, to compare", LOOP_PROMPT, Settings(temperature=0.0, max_new_tokens=60)),
        ("drafts that cost nothing: the draft model with its n-gram datastore, whose copies are underlined in blue",
         LOOP_PROMPT, Settings(strategy="speculative decoding", temperature=0.0, max_new_tokens=60,
                               drafter="draft model + datastore")),
    ],
    "contrastive decoding": [
        ("contrastive decoding at temperature 0 on the looping prompt", LOOP_PROMPT,
         Settings(strategy="contrastive decoding", temperature=0.0, max_new_tokens=60)),
    ],
}


def link(prompt: str, settings: Settings) -> str:
    """A share link relative to the page: its query."""
    return "?" + to_query(prompt, settings)


def explain(strategy: str) -> str:
    """The strategy's explanation and its lessons' links, as Markdown."""
    lines = [EXPLAIN.get(strategy, "")]
    lessons = LESSONS.get(strategy, [])
    if lessons:
        lines.append("Lesson" + "s" * (len(lessons) > 1) + " (open, then Generate): " + " · ".join(
            f"[{title}]({link(prompt, settings)})" for title, prompt, settings in lessons))
    return "\n\n".join(lines)
