"""The playground on a phone's screen (390 x 844) in a real headless Chromium: the step view's tables, the beam
tree and Compare's numbers are wider than the screen, and each scrolls sideways in its own box, nothing cut, the
page itself no wider than the screen."""

import os

import pytest
from test_browser import CHROMIUM, linked, open_step, sized_page

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")

WIDTH, HEIGHT = 390, 844

# Scroll the box that holds the i-th element matching a selector (its nearest ancestor that scrolls sideways) so
# the element shows, and say where both are: {box: the box's visible left and right, cell: the element's left and
# right, scroll_width, client_width, scrolled: the box's scrollLeft, page: no box but the page's, named: the box's
# id or class}.
REACH = """([sel, i]) => {
  const cell = document.querySelectorAll(sel)[i];
  let box = cell.parentElement;
  while (box !== document.body && !/(auto|scroll)/.test(getComputedStyle(box).overflowX)) box = box.parentElement;
  const r = () => cell.getBoundingClientRect(), b = () => box.getBoundingClientRect();
  const right = () => b().left + box.clientLeft + box.clientWidth;
  if (r().right > right()) box.scrollLeft += r().right - right();
  if (r().left < b().left + box.clientLeft) box.scrollLeft -= b().left + box.clientLeft - r().left;
  return {box: [b().left + box.clientLeft, right()], cell: [r().left, r().right], scroll_width: box.scrollWidth,
          client_width: box.clientWidth, scrolled: box.scrollLeft, page: box === document.body,
          named: box.id || String(box.className)};
}"""
PAGE_WIDTH = "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"


@pytest.fixture(scope="module")
def phone():
    yield from sized_page(WIDTH, HEIGHT)


def reach(page, selector: str, i: int = 0) -> dict:
    """Scroll the i-th `selector` into view within its own scrolling box; assert it then shows whole in that box,
    the box on the screen, and the page no wider than the screen."""
    seen = page.evaluate(REACH, [selector, i])
    (left, right), (cell_left, cell_right) = seen["box"], seen["cell"]
    assert not seen["page"], f"{selector} scrolls with the page, not in a box of its own"
    assert left - 1 <= cell_left and cell_right <= right + 1, (selector, i, seen)
    assert 0 <= left and right <= WIDTH + 1, (selector, seen)
    assert page.evaluate(PAGE_WIDTH) <= WIDTH + 2
    return seen


def test_the_step_tables_and_the_beam_tree_scroll_in_their_own_boxes(served_app, phone):
    url = served_app[0]
    linked(phone, url, prompt="JULIET:", strategy="beam search", beams=3, max_new_tokens=16)
    open_step(phone, 4)
    # the step's candidates: the last column (what if?) can be reached, as can the beam's own table
    phone.wait_for_selector("#step-chart .axw-cands td.axw-whatif", timeout=10000)
    reach(phone, "#step-chart .axw-cands tr:last-child > td:last-child")
    reach(phone, "#step-chart .axw-cands tr:first-child > th:last-child")
    # the beam tree: many steps wide, in a box the width of the card that scrolls to its last step
    phone.wait_for_selector("#beam-tree svg .axw-node", timeout=10000)
    heads = phone.locator("#beam-tree .axw-tree-head")
    first = reach(phone, "#beam-tree .axw-tree-head", 1)
    last = reach(phone, "#beam-tree .axw-tree-head", heads.count() - 1)
    assert "axw-tree-scroll" in last["named"] and last["scroll_width"] > last["client_width"]
    assert last["scrolled"] > first["scrolled"]
    assert last["client_width"] >= WIDTH - 100  # most of the screen's width, not a small window
    # a sampling step with three filters and temperature: its table is wider than the screen, and scrolls
    linked(phone, url, prompt="JULIET:", temperature=0.8, top_k=40, top_p=0.95, min_p=0.01, max_new_tokens=12)
    open_step(phone, 2)
    phone.wait_for_selector("#step-chart .axw-cands td.axw-whatif", timeout=10000)
    assert phone.locator("#step-chart .axw-cands tr").first.locator("th").count() >= 6  # token, 5 stages, what if
    box = phone.locator("#step-chart .axw-cands").bounding_box()
    seen = reach(phone, "#step-chart .axw-cands tr:nth-child(2) > td:last-child")
    assert seen["scroll_width"] > seen["client_width"] and seen["scrolled"] > 0
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH
    assert phone.locator("#step-chart .axw-cands tr:nth-child(2) > td:last-child").inner_text().startswith("what if")


def test_compare_keeps_to_the_screen_and_its_numbers_scroll_in_their_box(served_app, phone):
    from playground.views.compare import DEFAULT_COLUMNS, METRICS

    phone.goto(served_app[0])
    phone.get_by_role("tab", name="Compare").click()
    phone.locator("#compare-prompt textarea").fill("JULIET:")
    phone.get_by_label("number input for max new tokens").last.fill("8")
    phone.get_by_label("number input for max new tokens").last.press("Enter")
    phone.locator("#compare-go").click()
    done = len(DEFAULT_COLUMNS)
    phone.wait_for_function(f"() => document.querySelectorAll('#compare-grid .axw-metrics').length >= {done}",
                            timeout=60000)
    phone.wait_for_selector("#compare-metrics thead th", timeout=10000)
    for i in range(phone.locator("#compare-grid .axw-col").count()):  # the columns stack within the screen
        col = phone.locator("#compare-grid .axw-col").nth(i).bounding_box()
        assert col["x"] >= 0 and col["x"] + col["width"] <= WIDTH
    headers = phone.locator("#compare-metrics thead th")
    assert [h.strip() for h in headers.all_inner_texts()] == METRICS
    seen = [reach(phone, "#compare-metrics thead th", i) for i in range(headers.count())]
    assert seen[-1]["scroll_width"] > seen[-1]["client_width"] and seen[-1]["scrolled"] > 0
    # the numbers beside the names: scrolled back, the first column leaves room for the second on the screen
    reach(phone, "#compare-metrics thead th", 0)
    assert headers.nth(1).bounding_box()["x"] < WIDTH - 60
