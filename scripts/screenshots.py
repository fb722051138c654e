"""Screenshots of the playground's views for README.md and docs/app.md, taken in headless Chromium.

    python scripts/screenshots.py [--model assets/models/shakespeare] [--out assets/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import playground as pg  # noqa: E402
import playground.lessons  # noqa: E402,F401

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1440
FINISHED = "() => document.querySelector('#step-chart [data-step]') !== null"


def region(page, path, top: str, bottom: str, pad: int = 12, full_width: bool = True, page_width: int = WIDTH):
    """A screenshot from the top of `top` to the bottom of `bottom` (CSS selectors): the page's full width
    (`page_width`), or (`full_width=False`) only across the two."""
    a, b = page.locator(top).first.bounding_box(), page.locator(bottom).first.bounding_box()
    scrolled = page.evaluate("window.scrollY")  # boxes are in the viewport, the clip in the page
    a, b = dict(a, y=a["y"] + scrolled), dict(b, y=b["y"] + scrolled)
    y0 = max(0, a["y"] - pad)
    height = b["y"] + b["height"] + pad - y0
    x0, width = 0, page_width
    if not full_width:
        x0 = max(0, min(a["x"], b["x"]) - pad)
        width = min(page_width, max(a["x"] + a["width"], b["x"] + b["width"]) + pad) - x0
    page.screenshot(path=path, full_page=True, clip=dict(x=x0, y=y0, width=width, height=height))


def generate(page, url: str, **settings):
    """Open the share link of `settings` and run it."""
    page.goto(f"{url}?{urllib.parse.urlencode(settings)}")
    page.wait_for_function("(p) => document.querySelector('#prompt textarea')?.value === p", arg=settings["prompt"])
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=60000)
    page.wait_for_timeout(1200)


def open_step(page, i: int):
    page.get_by_label("number input for step").fill(str(i + 1))
    page.get_by_label("number input for step").press("Enter")
    page.wait_for_selector(f"#step-chart [data-step='{i}']", timeout=10000)
    page.wait_for_timeout(600)


def rounds(page, url: str, out: Path, name: str, nth: int, **settings):
    """Speculative decoding's rounds from ROMEO:, greedy, with round `nth` opened."""
    generate(page, url, prompt="ROMEO:", strategy="speculative decoding", temperature=0, **settings)
    page.locator("#speculative .axw-round").nth(nth).click()
    page.mouse.move(5, 5)
    page.wait_for_timeout(1000)
    region(page, str(out / name), "#output", "#speculative", full_width=False)


def first_screens(browser, url: str, out: Path):
    """The page as a visitor first meets it."""
    # the page as a visitor first meets it: a laptop's first screen (1280 x 800), then a phone's (390 wide)
    # after a run, from the prompt to the text
    first = browser.new_page(viewport={"width": 1280, "height": 800})
    first.goto(url)
    first.locator("#generate").wait_for()
    first.wait_for_timeout(1500)
    first.screenshot(path=str(out / "first-screen.png"))
    first.close()
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(url)
    phone.locator("#generate").click()
    phone.wait_for_function(FINISHED, timeout=60000)
    phone.wait_for_timeout(1500)
    region(phone, str(out / "phone.png"), "#prompt", ".axw-legend", page_width=390)
    phone.close()


def generate_views(page, url: str, out: Path) -> str:
    """The Generate tab's views from a share link; the share link of the branch it opens."""
    # generate from a share link (sampling with top-k and top-p), then click a token: its step opens
    query = urllib.parse.urlencode(dict(prompt="ROMEO:\nBut soft, what light", temperature=0.8, top_k=6,
                                        top_p=0.9, seed=0, max_new_tokens=100))
    page.goto(f"{url}?{query}")
    page.wait_for_function("() => document.querySelector('#prompt textarea')?.value.includes('soft')")
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=60000)
    page.locator("#output .axw-tok[data-i='2']").click()
    page.wait_for_selector("#step-chart [data-step='2']", timeout=10000)
    page.locator("#share").click()
    page.wait_for_function("() => document.querySelector('#share-link textarea, #share-link input')?.value"
                           ".startsWith('http')", timeout=10000)
    page.wait_for_timeout(1500)
    region(page, str(out / "generate.png"), "h1", "#step-chart")

    # the timeline on its own: hover a point for its numbers
    plot = page.locator("#timeline svg").first
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.3)
    page.wait_for_timeout(800)
    page.locator("#timeline").screenshot(path=str(out / "timeline.png"))

    # sample the step 1,000 times
    page.locator("#sample").click()
    page.locator("#sample-go").click()
    page.wait_for_selector("#sample-table table", timeout=30000)
    page.wait_for_timeout(1500)
    region(page, str(out / "sample.png"), "#step-chart", "#sample-table")

    # what if: force another candidate at that step; the branch, the list of branch points, side by side
    page.locator("#step-chart tr[data-token]").nth(3).click()
    page.wait_for_selector("#forks td", timeout=60000)
    page.wait_for_timeout(1500)
    region(page, str(out / "branch.png"), "#forks-title", "#side-b")

    # a share link that carries that branch opens it after its text (the link box holds it)
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    return link


def sample_tree_views(page, url: str, out: Path, tmp: Path):
    """The sample tree of 100 texts beside the one at temperature 0.5, a node's step; the branches file loaded."""
    page.goto(f"{url}?{urllib.parse.urlencode(dict(prompt='ROMEO:', temperature=1, max_new_tokens=24))}")
    page.wait_for_function("() => document.querySelector('#prompt textarea')?.value === 'ROMEO:'")
    page.locator("#sample-tree").get_by_text("sample the prompt N times").first.click()
    page.locator("#tree-change input").click()
    page.get_by_role("option", name="temperature", exact=True).click()
    page.locator("#tree-value textarea, #tree-value input").first.fill("0.5")
    page.locator("#tree-go").click()
    page.wait_for_selector("#tree-b svg .axw-st-node", timeout=120000)
    page.wait_for_timeout(1000)
    region(page, str(out / "sample-tree.png"), "#sample-tree", "#tree-a", full_width=False)
    page.locator("#tree-a svg .axw-st-node").nth(3).click()
    page.wait_for_selector("#tree-step .axw-step", timeout=60000)
    page.wait_for_timeout(800)
    region(page, str(out / "sample-tree-step.png"), "#tree-step", "#tree-step .axw-stages", full_width=False)
    # the branches as a file: a run and a branch downloaded, loaded back into a fresh page
    generate(page, url, prompt="ROMEO:", temperature=0.8, max_new_tokens=40, seed=3)
    open_step(page, 4)
    page.locator("#step-chart tr[data-token]").nth(2).click()
    page.wait_for_selector("#forks td", timeout=60000)
    page.wait_for_function("() => !document.querySelector('#branches-download').disabled", timeout=30000)
    with page.expect_download() as info:
        page.locator("#branches-download").click()
    path = tmp / "axw-branches.json"
    info.value.save_as(path)
    page.goto(url)
    with page.expect_file_chooser() as chooser:
        page.locator("#branches-upload").click()
    chooser.value.set_files(str(path))
    page.get_by_text("runs regenerated").first.wait_for(timeout=60000)
    page.wait_for_timeout(1500)
    region(page, str(out / "branches-file.png"), "#forks-title", "#branches-status")


def strategy_views(page, url: str, out: Path):
    """Beam search's tree and speculative decoding's rounds."""
    # beam search: the tree of every candidate, the returned path thick, pruned branches faded
    generate(page, url, prompt=pg.lessons.LOOP_PROMPT, strategy="beam search", beams=3, max_new_tokens=14)
    page.locator("#beam-tree .axw-node[data-step='3'] text").first.click()
    page.wait_for_selector("#step-chart [data-step='3']", timeout=10000)
    page.evaluate("document.querySelector('#beam-tree .axw-tree-scroll').scrollLeft = 0")
    page.mouse.move(5, 5)
    page.wait_for_timeout(800)
    region(page, str(out / "beam-tree.png"), "#output", "#beam-tree", full_width=False)
    region(page, str(out / "beam-step.png"), "#step-chart", "#step-chart .axw-beamcands", full_width=False)

    # speculative decoding: the rounds, accepted and rejected drafts
    rounds(page, url, out, "speculative.png", 2, max_new_tokens=40)
    # the draft model with prompt lookup: the copies underlined
    rounds(page, url, out, "speculative-lookup.png", 4, max_new_tokens=60, drafter="draft model + prompt lookup",
           num_assistant_tokens=3)
    # the draft model with its n-gram datastore: the datastore's copies underlined in blue
    rounds(page, url, out, "speculative-datastore.png", 4, max_new_tokens=60, drafter="draft model + datastore",
           num_assistant_tokens=3)



def step_views(page, url: str, out: Path, link: str):
    """Contrastive search's and decoding's steps, the sampler order, a branch from its link."""
    # contrastive search: confidence and penalty side by side, the winner as alpha moves (a step where it
    # changes)
    generate(page, url, prompt=pg.lessons.LOOP_PROMPT, strategy="contrastive search", max_new_tokens=40)
    for i in range(1, 40):
        open_step(page, i)
        winners = page.locator("#step-chart .axw-sweep tr").nth(1).locator("td").all_inner_texts()
        if len(set(winners)) >= 3:
            break
    region(page, str(out / "generate-contrastive-search.png"), "#step-chart", "#step-chart svg.axw-alpha",
           full_width=False)

    # contrastive decoding: the two models overlaid, the cut, the score
    generate(page, url, prompt=pg.lessons.LOOP_PROMPT, strategy="contrastive decoding", temperature=0,
             max_new_tokens=20)
    open_step(page, 2)
    region(page, str(out / "contrastive-decoding.png"), "#step-chart", "#step-chart .axw-cd", full_width=False)

    # the sampler order: temperature first, the top-p cut moves (the stages in the order chosen)
    generate(page, url, prompt="ROMEO:\n", temperature=2, top_p=0.9, sampler_order="temperature_first", seed=0,
             max_new_tokens=40)
    page.locator("#more-samplers").click()
    page.wait_for_timeout(800)
    open_step(page, 1)
    region(page, str(out / "samplers.png"), "#more-samplers", "#more-samplers", full_width=False)
    region(page, str(out / "sampler-order.png"), "#step-chart", "#step-chart .axw-stages", full_width=False)

    # the branch from its share link
    page.goto(link)
    page.wait_for_timeout(1500)
    page.locator("#generate").click()
    page.wait_for_selector("#forks td", timeout=60000)
    page.wait_for_timeout(1500)
    region(page, str(out / "branch-link.png"), "#output", "#output", full_width=False)


def dola_views(page, url: str, out: Path):
    """DoLa's candidate layers in the step view, and the layer view of that step (the logit lens)."""
    generate(page, url, prompt="ROMEO:", strategy="DoLa", dola_layers="0, 1, 2", temperature=0, repetition_penalty=1.2,
             max_new_tokens=20)
    open_step(page, 3)
    page.wait_for_selector("#layer-view .axw-layers[data-step='3']", timeout=30000)
    page.wait_for_timeout(600)
    region(page, str(out / "dola.png"), "#step-chart .axw-dola-panel", "#step-chart .axw-dola-panel",
           full_width=False)
    region(page, str(out / "layers.png"), "#layers", "#layers", full_width=False)


def other_tabs(page, url: str, out: Path):
    """Compare, Fine-tune and the API tab."""
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill(pg.lessons.LOOP_PROMPT)
    for label in ("min-p 0.1 (T 0.8)", "top-p 0.9 (T 2, temperature first)", "min-p 0.1 (T 2, temperature first)"):
        page.get_by_label(label).check()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#compare-grid .axw-metrics').length >= 9",
                           timeout=180000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "compare.png"), full_page=True)
    page.get_by_role("tab", name="Fine-tune").click()
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text()[:20000]
    page.get_by_label("training text").fill(text)
    # long enough at a high enough rate that the held-out curve rises while the training loss falls
    for label, value in (("steps", "150"), ("learning rate", "0.001")):
        page.get_by_label(f"number input for {label}").fill(value)
        page.get_by_label(f"number input for {label}").press("Enter")
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    page.locator("#ft-status").get_by_text("done").wait_for(timeout=300000)
    page.get_by_role("button", name="Generate from my model").click()
    page.wait_for_timeout(4000)
    page.screenshot(path=str(out / "fine-tune.png"), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    page.get_by_role("tab", name="API").click()
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "api.png"), full_page=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=pg.model_path("AXW_MODEL", pg.DEFAULT_MODEL))
    parser.add_argument("--amateur", default=pg.model_path("AXW_AMATEUR", pg.DEFAULT_AMATEUR))
    parser.add_argument("--out", default=str(ROOT / "assets/screenshots"))
    parser.add_argument("--port", type=int, default=7877)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import app
    from playwright.sync_api import sync_playwright

    # one browser takes every shot, a fine-tune among them: the per-visitor share would refuse the last ones
    demo = app.build(args.model, args.amateur, visitor_budget_s=0)
    app.launch(demo, prevent_thread_lock=True, server_port=args.port, quiet=True)
    url = f"http://127.0.0.1:{args.port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        first_screens(browser, url, out)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1500})
        link = generate_views(page, url, out)
        strategy_views(page, url, out)
        step_views(page, url, out, link)
        dola_views(page, url, out)
        other_tabs(page, url, out)
        with tempfile.TemporaryDirectory() as tmp:
            sample_tree_views(page, url, out, Path(tmp))
        browser.close()
    demo.close()
    print("saved", *sorted(p.name for p in out.glob("*.png")))


if __name__ == "__main__":
    main()
