"""Lessons run where they are clicked. The list is the strategy's explanation (views.settings draws
`lessons.explain`); a click on a lesson fills the Generate tab's controls as its share link does and runs the
Generate button's own handler (views.generate chains it), and a paired lesson opens the Compare tab with its
prompt, seed, length and columns (greedy first) and runs the Compare button's handler. Either way its look-for
line shows beside it."""

from __future__ import annotations

import gradio as gr

from ..lessons import GREEDY, Lesson, find, look_for_html
from ..service import user_errors
from . import Triggered
from .settings import fill


def lesson_of(evt: Triggered) -> Lesson:
    """The lesson a click sent (its strategy and index), or gr.Error."""
    with user_errors():
        return find(evt.data.get("strategy"), evt.data.get("index"))


def open_in_generate(evt: Triggered, request: gr.Request = None) -> list:
    """The controls' updates (UI_INPUTS order) for a lesson of the Generate tab: its share link's."""
    lesson = lesson_of(evt)
    if lesson.columns:
        raise gr.Error(f"the lesson {lesson.title!r} runs in the Compare tab")
    return fill(lesson.prompt, lesson.settings)


def build(tabs: gr.Tabs, lessons: gr.HTML, compare):
    """A paired lesson (the list's 'submit' event) opens the Compare tab (`compare`: views.compare.Panel) set to
    its prompt, seed, length and columns with its look-for line, then runs the comparison."""

    def open_in_compare(evt: Triggered, request: gr.Request = None) -> list:
        lesson = lesson_of(evt)
        if not lesson.columns:
            raise gr.Error(f"the lesson {lesson.title!r} runs in the Generate tab")
        return [gr.Tabs(selected="compare"), lesson.prompt, lesson.settings.seed, lesson.settings.max_new_tokens,
                [GREEDY, *(label for label, _ in lesson.columns)], gr.HTML(look_for_html(lesson), visible=True)]

    opened = lessons.submit(open_in_compare, None,
                            [tabs, compare.prompt, compare.seed, compare.new, compare.columns, compare.note],
                            api_visibility="private", queue=False)
    compare.run(opened)
