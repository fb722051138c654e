"""The sample tree and branch files in a real headless Chromium: sample the prompt N times and see the tree beside
the one with a setting changed (their numbers those /sample_tree gives), open a node's step; download the run
with its branches and load the file back into a fresh page."""

import json
import os

import pytest

from test_browser import CHROMIUM, FINISHED, generated, open_step, shown_text, sized_page, token_at_least

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")
SHOTS = os.environ.get("AXW_SHOTS")  # a folder to save screenshots in, to look at the views


@pytest.fixture(scope="module")
def page():
    yield from sized_page(1400, 1100)


def shot(page, name: str, selector: str | None = None):
    if SHOTS:
        (page.locator(selector) if selector else page).screenshot(path=os.path.join(SHOTS, name))


def test_the_sample_tree_and_its_comparison(served_app, page):
    url, demo = served_app
    page.goto(url)
    page.locator("#prompt textarea").fill("ROMEO:")
    page.get_by_label("temperature").first.fill("1")
    page.get_by_label("number input for max new tokens").fill("8")
    page.get_by_label("number input for max new tokens").press("Enter")
    page.locator("#sample-tree").get_by_text("sample the prompt N times").first.click()
    page.locator("#tree-change input").click()
    page.get_by_role("option", name="temperature", exact=True).click()
    page.locator("#tree-value textarea, #tree-value input").first.fill("0.3")
    # N last, once the group has opened and drawn its controls (a value typed while it draws can be lost)
    page.get_by_label("N (at most 200)").fill("12")
    page.get_by_label("N (at most 200)").press("Tab")
    page.wait_for_function("() => [...document.querySelectorAll('#sample-tree input')]"
                           ".some((e) => e.getAttribute('aria-label') === 'N (at most 200)' && e.value === '12')")
    page.locator("#tree-go").click()
    page.wait_for_selector("#tree-b svg .axw-st-node", timeout=60000)
    app = demo.playground
    for side, temperature in (("a", 1.0), ("b", 0.3)):
        expected = app.sample_tree_api("ROMEO:", 12, 4, dict(temperature=temperature, max_new_tokens=8))
        nodes = page.locator(f"#tree-{side} svg .axw-st-node")
        counts = [int(n.get_attribute("data-count")) for n in nodes.all()]
        ends = [int(n.get_attribute("data-ends")) for n in nodes.all()]
        assert counts[0] == 12 and sum(ends) == 12  # the prompt: every text; each text ends at one node
        assert sum(e > 0 for e in ends) == expected["distinct"]
        assert f"{expected['distinct']} of 12" in page.locator("#tree-numbers").inner_text()
    assert "temperature = 0.3" in page.locator("#tree-numbers").inner_text()
    shot(page, "sample-tree.png", "#sample-tree")
    page.locator("#tree-a svg .axw-st-node").nth(1).click()
    page.wait_for_selector("#tree-step .axw-step", timeout=30000)
    assert "The run of seed" in page.locator("#tree-step").inner_text()
    shot(page, "sample-tree-step.png", "#tree-step")


def test_download_the_branches_and_load_them_back(served_app, page, tmp_path):
    url, _ = served_app
    generated(page, url, n=16)
    i = token_at_least(page, 3)
    open_step(page, i)
    page.locator("#step-chart tr[data-token]").nth(2).click()
    page.wait_for_selector("#forks td", timeout=30000)
    branch_text = shown_text(page)
    download = page.locator("#branches-download")
    page.wait_for_function("() => !document.querySelector('#branches-download').disabled", timeout=30000)
    with page.expect_download() as info:
        download.click()
    path = tmp_path / "branches.json"
    info.value.save_as(path)
    content = json.loads(path.read_text())
    assert content["format"] == "axw-branches" and len(content["runs"]) == 2
    assert content["runs"][1]["text"] == branch_text.removeprefix("JULIET:") or content["runs"][1]["step"] == i
    # a fresh page: load the file, and the text and its branch come back
    page.goto(url)
    with page.expect_file_chooser() as chooser:
        page.locator("#branches-upload").click()
    chooser.value.set_files(str(path))
    page.get_by_text("all 2 runs regenerated").first.wait_for(timeout=60000)
    page.wait_for_function(FINISHED, timeout=30000)
    assert page.locator("#forks td").count() > 0
    page.locator("#open-run input").click()
    page.get_by_role("option").nth(1).click()
    page.wait_for_function("(want) => (document.querySelector('#output .axw-out')?.innerText || '')"
                           ".replace(/\\n/g, '') === want", arg=branch_text, timeout=30000)
    shot(page, "branches-loaded.png")
    # a foreign file is refused with a message; the page goes on
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": "something-else", "runs": []}))
    with page.expect_file_chooser() as chooser:
        page.locator("#branches-upload").click()
    chooser.value.set_files(str(foreign))
    page.get_by_text("not a branches file").first.wait_for(timeout=30000)
