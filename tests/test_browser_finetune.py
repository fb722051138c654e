"""The Fine-tune tab end to end in headless Chromium: the loss curves draw while it trains (nothing covers them),
both curves with their legend, Stop keeps what it learned, and the Generate tab's "use my fine-tuned model"
writes the fine-tuned copy's text, not the base model's."""

import copy
import time
from pathlib import Path

import pytest
from test_browser import ARGS, CHROMIUM, page  # noqa: F401 (its page fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "JULIET:"

# while the status line still says it is training: the training curve's line, with its points, is drawn, and the
# point at the middle of the plot's drawing is the drawing itself (no progress overlay, nothing over it)
LIVE = """() => {
  const status = document.querySelector('#ft-status')?.innerText || '';
  const plot = document.querySelector('#ft-plot');
  const svg = plot?.querySelector('svg.marks');
  if (!svg || !status.includes('training: step')) return null;
  svg.scrollIntoView({block: 'center'});
  // each curve is one path, named in its aria-label by its first point's row
  const lines = [...svg.querySelectorAll('.mark-line path')].map(p => ({
    curve: ((p.getAttribute('aria-label') || '').match(/curve: ([\\w-]+)/) || [])[1],
    stroke: getComputedStyle(p).stroke, points: ((p.getAttribute('d') || '').match(/L/g) || []).length + 1}));
  const box = svg.getBoundingClientRect();
  const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
  const trackers = [...plot.querySelectorAll('[data-testid="status-tracker"]')].filter(
    t => !t.classList.contains('hide') && t.getBoundingClientRect().height > 0);
  return {status, lines, covered: !svg.contains(hit) || trackers.length > 0,
          legend: [...svg.querySelectorAll('.role-legend-label text')].map(t => t.textContent).sort()};
}"""




def watch(page, ready, timeout_s=240.0):
    """The LIVE reading once `ready(reading)` holds while it still trains (the plot redraws itself on each
    update: a reading taken mid-redraw is read again)."""
    seen, end = None, time.monotonic() + timeout_s
    while time.monotonic() < end:
        live = page.evaluate(LIVE)
        if live is not None:
            if ready(live):
                return live
            seen = live
        page.wait_for_timeout(250)
    status = page.locator("#ft-status").inner_text()
    raise AssertionError(f"not seen within {timeout_s:.0f} s while it trains; last seen {seen}; the status line: "
                         f"{status}")


def set_number(page, label, value):
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def test_the_curves_draw_while_it_trains_and_generate_uses_the_fine_tuned_copy(served_app, page):
    from test_app import reference

    from axw import AutoregressiveWrapper

    url, demo = served_app
    app = demo.playground
    page.goto(url)
    page.get_by_role("tab", name="Fine-tune").click()
    page.get_by_label("training text").fill((ROOT / "assets/data/tinyshakespeare.txt").read_text()[:20000])
    # the most steps, in big batches at the highest rate: long enough to watch, and a copy that writes otherwise
    for label, value in (("steps", 500), ("batch size", 32), ("context length", 128), ("learning rate", 0.01)):
        set_number(page, label, value)
    before = set(app.sessions.items)
    page.get_by_role("button", name="Fine-tune", exact=True).click()

    # live: the training curve has points while it still trains, and nothing covers it
    live = watch(page, lambda live: any(line["curve"] == "training" and line["points"] >= 5 for line in live["lines"]))
    assert not live["covered"] and "training: step" in live["status"], live
    # the held-out curve (scored before the first step, then every tenth of the run) draws its line once it has
    # a second point, in its own colour, both curves named in the legend
    live = watch(page, lambda live: any(line["curve"] == "held-out" and line["points"] >= 2 for line in live["lines"])
                 and live["legend"] == ["held-out", "training"])
    assert not live["covered"] and "training: step" in live["status"], live
    colours = {line["curve"]: line["stroke"] for line in live["lines"]}
    assert set(colours) == {"training", "held-out"} and colours["training"] != colours["held-out"], live
    assert "Held-out: the last tenth of your text" in live["status"]

    page.get_by_role("button", name="Stop").click()
    page.locator("#ft-status").get_by_text("stopped").wait_for(timeout=60000)
    status = page.locator("#ft-status").inner_text()
    assert "trained from the base model" in status and "held-out loss" in status
    (session,) = set(app.sessions.items) - before
    run = app.sessions.get(session)
    assert run.done.is_set() and run.result.stopped and 50 <= run.result.step < 500

    # the Generate tab with "use my fine-tuned model": the copy's greedy text, not the base model's
    tuned = copy.deepcopy(run.model)
    base = AutoregressiveWrapper.from_pretrained(app.model_name)
    expected = PROMPT + reference(tuned, PROMPT, 100, temperature=0.0)
    assert expected != PROMPT + reference(base, PROMPT, 100, temperature=0.0)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill(PROMPT)
    page.get_by_label("temperature").first.fill("0")
    page.get_by_label("use my fine-tuned model").check()
    page.locator("#generate").click()
    page.wait_for_selector("#step-chart table", timeout=60000)
    assert page.locator("#output .axw-out").inner_text().replace("\n", "") == expected.replace("\n", "")
