"""Lessons run where they are clicked, in a real headless Chromium: a lesson fills the Generate tab's controls and
its text appears (the text /generate gives for its settings) with its look-for line beside it; a paired lesson
opens the Compare tab with greedy and its own columns, and they run. And every lesson says what to look for."""

import os
from dataclasses import asdict, replace

import pytest

from test_browser import ARGS, CHROMIUM

import playground as pg  # noqa: E402

browser = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")
PAIRED = [(strategy, i) for strategy, items in pg.lessons.LESSONS.items() for i, lesson in enumerate(items)
          if lesson.columns]


def test_every_lesson_says_what_to_look_for_and_pairs_name_compares_columns():
    pytest.importorskip("gradio")
    from playground.views import compare

    greedy = compare.COMPARE[0]
    assert pg.lessons.GREEDY == greedy[0]
    for strategy, items in pg.lessons.LESSONS.items():
        assert pg.lessons.EXPLAIN[strategy] and items
        for lesson in items:
            assert lesson.title.strip() and lesson.look_for.strip()
            runs = lesson.runs()
            if lesson.columns:  # greedy first, then its columns: each runs what Compare's column of that label runs
                assert runs[0][0] == greedy[0] and greedy[0] not in dict(lesson.columns)
            for label, settings in runs if lesson.columns else []:
                assert label in compare.LABELS
                _, strategy_of, values = next(c for c in compare.COLUMNS if c[0] == label)
                assert settings == replace(compare.settings_of(strategy_of, values), seed=lesson.settings.seed,
                                           max_new_tokens=lesson.settings.max_new_tokens)
    # the two pairs the lessons promise: top-p against min-p, greedy against speculative decoding
    pairs = [[label for label, _ in pg.lessons.find(s, i).runs()] for s, i in PAIRED]
    assert ["greedy", "top-p 0.9 (T 2, temperature first)", "min-p 0.1 (T 2, temperature first)"] in pairs
    assert ["greedy", "speculative decoding (greedy, draft model)"] in pairs


def test_a_lesson_that_is_not_there_is_refused():
    with pytest.raises(ValueError, match="no lesson"):
        pg.lessons.find("beam search", 7)
    with pytest.raises(ValueError, match="no lesson"):
        pg.lessons.find("<script>", 0)


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        chromium.close()


def pick(page, strategy: str):
    page.locator("#strategy").get_by_label(strategy, exact=True).check()
    page.wait_for_function("(s) => document.querySelector(`#lesson [data-strategy='${s}']`) !== null", arg=strategy,
                           timeout=10000)


def flat(text: str) -> str:
    """The text as compared: its visible characters. Newlines are drawn as line breaks, and the random test
    models write partial characters and control characters, which the page lays out as it can."""
    return "".join(c for c in text if c.isprintable() and not c.isspace() and c != "\ufffd")


@browser
def test_a_lesson_runs_in_the_same_tab_and_says_what_to_look_for(served_app, page, client):
    strategy = "contrastive search"
    lesson = pg.lessons.LESSONS[strategy][0]
    text, _, _ = client.predict(prompt=lesson.prompt, **asdict(lesson.settings), api_name="/generate")
    expected = flat(lesson.prompt + text)
    page.goto(served_app[0])
    pick(page, strategy)
    item = page.locator(f"#lesson [data-strategy='{strategy}'][data-index='0']")
    assert item.locator("a").get_attribute("href") == pg.lessons.link(lesson.prompt, lesson.settings)
    assert not item.locator(".axw-lesson-look").is_visible()
    pages = len(page.context.pages)
    item.locator(".axw-lesson-run").click()
    # the controls hold its settings, and its text streams into this page's output
    page.wait_for_function("(p) => document.querySelector('#prompt textarea')?.value === p", arg=lesson.prompt,
                           timeout=10000)
    page.wait_for_selector("#step-chart [data-step]", timeout=60000)  # the step view: the run has ended
    assert flat(page.locator("#output .axw-out").inner_text()) == expected
    assert page.locator("#strategy").get_by_label(strategy, exact=True).is_checked()
    assert page.get_by_label("number input for max new tokens").input_value() == str(lesson.settings.max_new_tokens)
    assert page.get_by_label("number input for penalty alpha").input_value() == str(lesson.settings.penalty_alpha)
    look = item.locator(".axw-lesson-look")
    assert look.is_visible() and lesson.look_for in look.inner_text()
    assert len(page.context.pages) == pages  # no new browser tab


@browser
@pytest.mark.parametrize("strategy, index", PAIRED)
def test_a_paired_lesson_opens_compare_with_its_columns_and_runs_them(served_app, page, client, strategy, index):
    lesson = pg.lessons.find(strategy, index)
    labels = [label for label, _ in lesson.runs()]
    page.goto(served_app[0])
    pick(page, strategy)
    page.locator(f"#lesson [data-strategy='{strategy}'][data-index='{index}'] .axw-lesson-run").click()
    page.get_by_role("tab", name="Compare", selected=True).wait_for(timeout=10000)
    # every column has run: its numbers are under its text
    page.wait_for_function("(n) => document.querySelectorAll('#compare-grid .axw-col .axw-metrics').length === n",
                           arg=len(labels), timeout=60000)
    checked = page.locator("#compare-columns input:checked")
    assert [checked.nth(i).locator("xpath=..").inner_text().strip() for i in range(checked.count())] == labels
    cols = page.locator("#compare-grid .axw-col")
    assert [cols.nth(i).get_attribute("data-label") for i in range(cols.count())] == labels
    assert page.locator("#compare-prompt textarea").input_value() == lesson.prompt
    assert page.locator("#compare-seed input").input_value() == str(lesson.settings.seed)
    assert page.locator("#compare-new input[type=number]").input_value() == str(lesson.settings.max_new_tokens)
    # each column's text is the one /generate gives for that column's settings
    for i, (label, settings) in enumerate(lesson.runs()):
        text, _, _ = client.predict(prompt=lesson.prompt, **asdict(settings), api_name="/generate")
        assert flat(cols.nth(i).locator(".axw-out").inner_text()) == flat(lesson.prompt + text), label
    note = page.locator("#compare-lesson")
    assert note.is_visible() and lesson.look_for in note.inner_text() and lesson.title in note.inner_text()
    page.locator("#compare-seed input").fill("3")  # the visitor's own comparison: the lesson's note goes
    note.wait_for(state="hidden", timeout=10000)
