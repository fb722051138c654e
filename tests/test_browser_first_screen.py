"""The page as a visitor first meets it, on a laptop's screen (1280 x 800) in a real headless Chromium: each tab's
run button is on the first screen, no plot draws empty axes before there is something to draw, and a run's
numbers print no negative zero."""

import os

import pytest
from test_browser import CHROMIUM, FINISHED, sized_page

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")

WIDTH, HEIGHT = 1280, 800

# the plots (Vega's drawings) the visitor can see: on the page, not hidden, with a size
SHOWN_PLOTS = """() => [...document.querySelectorAll('svg.marks')].filter((svg) => {
  const box = svg.getBoundingClientRect();
  return box.width > 0 && box.height > 0 && svg.checkVisibility();
}).length"""


@pytest.fixture(scope="module")
def laptop():
    yield from sized_page(WIDTH, HEIGHT)


def on_first_screen(page, locator):
    """Assert the element shows whole on the first screen, the page not scrolled."""
    assert page.evaluate("window.scrollY") == 0
    box = locator.bounding_box()
    assert box is not None, "not shown"
    assert box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT, box
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, box


def test_generate_is_on_the_first_screen_and_the_timeline_waits_for_a_run(served_app, laptop):
    url = served_app[0]
    laptop.goto(url)
    go = laptop.locator("#generate")
    go.wait_for(timeout=30000)
    laptop.wait_for_timeout(500)  # the page settles (the load event fills the controls)
    on_first_screen(laptop, go)
    on_first_screen(laptop, laptop.locator("#prompt textarea"))
    # before a run: no plot at all (the timeline's axes would read 0.000000 to 1.000000), a sentence instead
    assert laptop.evaluate(SHOWN_PLOTS) == 0
    assert not laptop.locator("#timeline").is_visible()
    assert "Generate some text" in laptop.locator("#step-chart").inner_text()
    assert "0.000000" not in laptop.locator("body").inner_text()

    go.click()
    laptop.wait_for_function("() => (document.querySelector('#output .axw-out')?.innerText || '').length > 10",
                             timeout=30000)
    laptop.wait_for_function(FINISHED, timeout=30000)
    # after it: the timeline draws the run's steps
    laptop.locator("#timeline svg.marks").first.wait_for(timeout=10000)
    laptop.wait_for_function("() => document.querySelectorAll('#timeline svg path').length > 2", timeout=10000)
    assert laptop.evaluate(SHOWN_PLOTS) >= 1


def test_a_one_token_step_prints_its_entropy_as_zero(served_app, laptop):
    # top-k 1 leaves one token: the entropy after it is -(1 * log 1), a negative zero in floating point
    laptop.goto(served_app[0] + "?prompt=JULIET%3A&temperature=0.8&top_k=1&max_new_tokens=8")
    laptop.wait_for_function("() => document.querySelector('#prompt textarea')?.value === 'JULIET:'")
    laptop.locator("#generate").click()
    laptop.wait_for_function(FINISHED, timeout=30000)
    step = laptop.locator("#step-chart .axw-stages").inner_text()
    assert "top_k 1 kept 1 token" in step and step.rstrip().endswith("entropy 0.00 bits"), step
    assert "-0.00" not in laptop.locator("body").inner_text()


@pytest.mark.parametrize("tab, button", [("Compare", "#compare-go"), ("Fine-tune", "#ft-go")])
def test_each_tabs_run_button_is_on_the_first_screen_and_no_plot_is_empty(served_app, laptop, tab, button):
    laptop.goto(served_app[0])
    laptop.locator("#generate").wait_for(timeout=30000)
    laptop.get_by_role("tab", name=tab).click()
    go = laptop.locator(button)
    go.wait_for(timeout=10000)
    laptop.wait_for_timeout(300)
    on_first_screen(laptop, go)
    assert laptop.evaluate(SHOWN_PLOTS) == 0  # Fine-tune's curves, Compare's numbers: not before a run
    assert not laptop.locator("#ft-plot").is_visible() and not laptop.locator("#compare-metrics").is_visible()
