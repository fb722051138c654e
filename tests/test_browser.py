"""End to end in a real headless Chromium: type a prompt, press Generate, see
the continuation appear."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def test_type_a_prompt_press_generate_and_see_text(served_app, page):
    from test_app import reference

    from axw import AutoregressiveWrapper

    url, demo = served_app
    page.goto(url)
    prompt = page.locator("#prompt textarea")
    prompt.fill("JULIET:")
    page.get_by_label("temperature").first.fill("0")
    page.locator("#generate").click()
    output = page.locator("#output .axw-out")
    model = AutoregressiveWrapper.from_pretrained(demo.playground.model_name)
    expected = "JULIET:" + reference(model, "JULIET:", 100, temperature=0.0)
    # the continuation streams in; wait for all of it (newlines are drawn as line breaks)
    page.wait_for_function(
        "([sel, want]) => { const el = document.querySelector(sel); return el && el.innerText.length >= want; }",
        arg=["#output .axw-out", len(expected.strip())], timeout=30000)
    assert output.inner_text().replace("\n", "") == expected.replace("\n", "")
    # the step view fills in once generation ends
    page.wait_for_selector("#step-chart table", timeout=10000)
    assert "kept" in page.locator("#step-chart").inner_text()


def test_an_empty_prompt_shows_an_error_and_the_page_keeps_working(served_app, page):
    url, _ = served_app
    page.goto(url)
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=15000)
    page.locator("#prompt textarea").fill("ROMEO:")
    page.locator("#generate").click()
    page.wait_for_function("() => (document.querySelector('#output .axw-out')?.innerText || '').length > 8",
                           timeout=30000)
