"""Screenshots of the playground's views for README.md and docs/app.md, taken in headless Chromium.

    python scripts/screenshots.py [--model assets/models/shakespeare] [--out assets/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import playground as pg  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1440
FINISHED = "() => document.querySelector('#step-chart [data-step]') !== null"


def region(page, path, top: str, bottom: str, pad: int = 12):
    """A full-width screenshot from the top of `top` to the bottom of `bottom` (CSS selectors)."""
    a, b = page.locator(top).first.bounding_box(), page.locator(bottom).first.bounding_box()
    scrolled = page.evaluate("window.scrollY")  # boxes are in the viewport, the clip in the page
    a, b = dict(a, y=a["y"] + scrolled), dict(b, y=b["y"] + scrolled)
    y0 = max(0, a["y"] - pad)
    height = b["y"] + b["height"] + pad - y0
    page.screenshot(path=path, full_page=True, clip=dict(x=0, y=y0, width=WIDTH, height=height))


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

    demo = app.build(args.model, args.amateur)
    app.launch(demo, prevent_thread_lock=True, server_port=args.port, quiet=True)
    url = f"http://127.0.0.1:{args.port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1500})

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

        # contrastive search: the step view shows confidence, penalty and score
        page.get_by_label("contrastive search").check()
        page.locator("#generate").click()
        page.wait_for_selector("#step-chart table >> text=degeneration penalty", timeout=60000)
        page.wait_for_timeout(1000)
        region(page, str(out / "generate-contrastive-search.png"), "#output", "#step-chart")

        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_timeout(2000)
        page.wait_for_function("() => [...document.querySelectorAll('textarea')].filter(t => t.value.length > 20)"
                               ".length >= 5", timeout=60000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "compare.png"), full_page=True)

        page.get_by_role("tab", name="Fine-tune").click()
        text = (ROOT / "assets/data/tinyshakespeare.txt").read_text()[:20000]
        page.get_by_label("training text").fill(text)
        page.get_by_role("button", name="Fine-tune", exact=True).click()
        page.wait_for_selector("text=done", timeout=180000)
        page.get_by_role("button", name="Generate from my model").click()
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "fine-tune.png"), full_page=True)

        page.set_viewport_size({"width": WIDTH, "height": 900})
        page.get_by_role("tab", name="API").click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "api.png"), full_page=True)
        browser.close()
    demo.close()
    print("saved", *sorted(p.name for p in out.glob("*.png")))


if __name__ == "__main__":
    main()
