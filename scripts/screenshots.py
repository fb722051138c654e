"""Screenshots of each playground tab for docs/app.md, taken in headless Chromium.

    python scripts/screenshots.py [--model assets/models/shakespeare] [--out assets/screenshots]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import playground as pg  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1500})
        page.goto(f"http://127.0.0.1:{args.port}/")

        # generate: sampling with top-k and top-p, then a step where the filters cut something
        page.locator("#prompt textarea").fill("ROMEO:\nBut soft, what light")
        page.get_by_label("top-k", exact=True).check()
        page.get_by_label("number input for k").fill("6")  # few enough that the chart shows cut candidates
        page.get_by_label("number input for k").press("Enter")
        page.locator("#generate").click()
        page.wait_for_selector("#step-chart table", timeout=60000)
        page.get_by_label("number input for step").fill("3")
        page.get_by_label("number input for step").press("Enter")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "generate.png"), full_page=True)

        # contrastive search: the step view shows confidence, penalty and score
        page.get_by_label("contrastive search").check()
        page.locator("#generate").click()
        page.wait_for_selector("#step-chart table >> text=degeneration penalty", timeout=60000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "generate-contrastive-search.png"), full_page=True)

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

        page.set_viewport_size({"width": 1440, "height": 900})
        page.get_by_role("tab", name="API").click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "api.png"))
        browser.close()
    demo.close()
    print("saved", *sorted(p.name for p in out.glob("*.png")))


if __name__ == "__main__":
    main()
