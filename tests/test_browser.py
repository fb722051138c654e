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


# --- the instrument: tokens, branches, the timeline, sampling, share links ---

FINISHED = "() => document.querySelector('#step-chart [data-step]') !== null"


def generated(page, url, prompt="JULIET:", n=24, query=""):
    """Open the page (with a share link's query), set a greedy run of n tokens unless the link sets them, press
    Generate and wait for the step view."""
    page.goto(url + query)
    if not query:
        page.locator("#prompt textarea").fill(prompt)
        page.get_by_label("temperature").first.fill("0")
        page.get_by_label("number input for max new tokens").fill(str(n))
        page.get_by_label("number input for max new tokens").press("Enter")
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=30000)


def token_at_least(page, i: int) -> int:
    """The first generated token from step i on that shows some text (random weights write partial characters,
    which show nothing until the token that completes them)."""
    return page.evaluate("(i) => Number([...document.querySelectorAll('#output .axw-tok')].find("
                         "(t) => Number(t.dataset.i) >= i && t.textContent.trim()).dataset.i)", i)


def open_step(page, i: int):
    token = page.locator(f"#output .axw-tok[data-i='{i}']")
    if token.inner_text().strip():
        token.click()
    else:
        page.get_by_label("number input for step").fill(str(i + 1))
        page.get_by_label("number input for step").press("Enter")
    page.wait_for_selector(f"#step-chart [data-step='{i}']", timeout=10000)


def shown_text(page, selector="#output .axw-out") -> str:
    return page.locator(selector).inner_text().replace("\n", "")


@pytest.fixture(scope="module")
def expert(served_app):
    from axw import AutoregressiveWrapper

    return AutoregressiveWrapper.from_pretrained(served_app[1].playground.model_name)


def greedy_ids(model, prefix: list[int], n: int) -> list[int]:
    from test_instrument import continuation

    return continuation(model, prefix, n, temperature=0.0)


def test_click_a_token_and_its_step_opens(served_app, page, expert):
    import playground as pg

    generated(page, served_app[0])
    prompt_ids = expert.tokenizer.encode("JULIET:").ids
    new = greedy_ids(expert, prompt_ids, 24)
    i = token_at_least(page, 5)
    open_step(page, i)
    assert "axw-sel" in page.locator(f"#output .axw-tok[data-i='{i}']").get_attribute("class")  # stays highlighted
    assert page.get_by_label("number input for step").input_value() == str(i + 1)  # the slider follows
    header = page.locator("#step-chart .axw-step").inner_text()
    assert header.startswith(f"step {i + 1}") and f"chose {pg.show_token(expert.tokenizer, new[i])}" in header
    # the keyboard path: the slider opens a step too, and the highlight follows it
    page.get_by_label("number input for step").fill("3")
    page.get_by_label("number input for step").press("Enter")
    page.wait_for_selector("#step-chart [data-step='2']", timeout=10000)
    assert "axw-sel" in page.locator("#output .axw-tok[data-i='2']").get_attribute("class")


def test_click_a_candidate_and_a_branch_starts_with_it(served_app, page, expert):
    generated(page, served_app[0])
    i = token_at_least(page, 3)
    open_step(page, i)
    row = page.locator("#step-chart tr[data-token]").nth(2)
    forced = int(row.get_attribute("data-token"))
    row.click()
    page.wait_for_selector(f"#output .axw-forced[data-i='{i}']", state="attached", timeout=30000)
    page.wait_for_selector("#forks td", timeout=30000)
    prompt_ids = expert.tokenizer.encode("JULIET:").ids
    root = greedy_ids(expert, prompt_ids, 24)
    branch = root[:i] + [forced] + greedy_ids(expert, prompt_ids + root[:i] + [forced], 24 - i - 1)
    assert shown_text(page) == ("JULIET:" + expert.tokenizer.decode(branch)).replace("\n", "")
    assert page.locator("#output .axw-forced").count() == 1
    # the branch point is listed: where, what was taken, what was forced
    cells = page.locator("#forks tr").nth(1).locator("td").all_inner_texts()
    assert cells[:3] == ["1", "text", str(i + 1)]
    # the branch and the text it left, side by side
    assert shown_text(page, "#side-a .axw-out") == ("JULIET:" + expert.tokenizer.decode(root)).replace("\n", "")
    assert shown_text(page, "#side-b .axw-out") == shown_text(page)


def test_the_timeline_renders_and_a_click_opens_a_step(served_app, page):
    generated(page, served_app[0])
    plot = page.locator("#timeline svg").first
    plot.wait_for(timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('#timeline svg path').length > 2", timeout=10000)
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    x, y = box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.45
    page.mouse.move(x, y)
    page.wait_for_selector("#vg-tooltip-element.visible", timeout=5000)
    tip = page.locator("#vg-tooltip-element").inner_text().split()
    step = int(tip[tip.index("step") + 1])
    page.mouse.click(x, y)
    page.wait_for_selector(f"#step-chart [data-step='{step - 1}']", timeout=10000)
    assert page.get_by_label("number input for step").input_value() == str(step)


def test_sample_a_step_and_the_histogram_appears(served_app, page, expert):
    import torch

    generated(page, served_app[0])
    open_step(page, 3)  # opened by the slider's path if the token shows no text
    page.locator("#sample").click()
    page.locator("#draws input").fill("2000")
    page.locator("#sample-go").click()
    page.wait_for_selector("#sample-table table", timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('#sample-drawn svg path').length > 3", timeout=10000)
    rows = [r.split("\t") for r in page.locator("#sample-table table").inner_text().splitlines()[1:]]
    assert sum(int(r[2].replace(",", "")) for r in rows) == 2000 and rows[-1][0].endswith("all others")
    # the exact column is the model's distribution at that step (greedy: the model's own), recomputed here
    prompt_ids = expert.tokenizer.encode("JULIET:").ids
    seq = prompt_ids + greedy_ids(expert, prompt_ids, 24)[:3]
    with torch.no_grad():
        probs = expert.net(torch.tensor([seq]))[0, -1].softmax(-1)
    top = probs.topk(10).values.tolist()
    assert [float(r[1]) for r in rows[:-1]] == pytest.approx(top, abs=1e-4)


def test_a_share_link_fills_the_controls_and_reproduces_generate(served_app, page):
    import urllib.parse

    import gradio_client

    import playground as pg

    url, _ = served_app
    query = "?" + urllib.parse.urlencode(dict(prompt="JULIET:\nO Romeo", temperature="0.73", top_k="7", seed="3",
                                              max_new_tokens="20", repetition_penalty="1.3"))
    page.goto(url + query)
    page.wait_for_function("() => document.querySelector('#prompt textarea')?.value.includes('O Romeo')",
                           timeout=10000)
    assert page.get_by_label("number input for temperature").input_value() == "0.73"
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=30000)
    client = gradio_client.Client(url, verbose=False)
    text, *_ = client.predict(prompt="JULIET:\nO Romeo", temperature=0.73, top_k=7, seed=3, max_new_tokens=20,
                              repetition_penalty=1.3, api_name="/generate")
    assert shown_text(page) == ("JULIET:\nO Romeo" + text).replace("\n", "")
    # the button gives the link of what the controls hold: the same settings
    page.locator("#share").click()
    page.wait_for_function("() => document.querySelector('#share-link textarea, #share-link input')?.value"
                           ".startsWith('http')", timeout=10000)
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    shared = pg.from_query(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query)))
    assert shared == pg.from_query(dict(urllib.parse.parse_qsl(query[1:])))
    # a bad link is refused with a message, and the page keeps working
    page.goto(url + "?prompt=x&beams=100")
    page.get_by_text("beams must be").first.wait_for(timeout=10000)
