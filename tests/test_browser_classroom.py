"""A class on one Space, in a real headless Chromium: visitors behind the Space's proxy are told apart on the
Generate tab's own events, by address and by browser session."""

import os
import tempfile

import pytest

from test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")

SHARE_REFUSED = "the share each visitor gets"
SHOT = os.path.join(tempfile.gettempdir(), "axw-workers-branch.png")  # a branch of a run a worker generated


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    """The playground behind one trusted proxy, with a small share per session (0.4 s a window)."""
    import app
    from conftest import free_port, playground_models

    expert, amateur = playground_models(tmp_path_factory.mktemp("class-browser-models"))
    demo = app.build(expert, amateur, visitor_budget_s=0.4, address_budget_s=30, trusted_proxies=1)
    port = free_port()
    app.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def visitor(browser, url, address):
    """A new browser session whose requests reach the app through the proxy as coming from `address`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  extra_http_headers={"X-Forwarded-For": address})
    page = context.new_page()
    page.goto(url)
    page.locator("#prompt textarea").fill("ROMEO:")
    page.get_by_label("temperature").first.fill("0")
    return page


def press_generate(page) -> str:
    """Press Generate; 'served' once the step view of the new run is drawn, else the refusal's text."""
    page.evaluate("() => document.querySelectorAll('#step-chart [data-step]').forEach((e) => e.remove())")
    page.locator("#generate").click()
    page.wait_for_function(
        "(refused) => document.querySelector('#step-chart [data-step]') !== null"
        " || document.body.innerText.includes(refused)", arg=SHARE_REFUSED, timeout=30000)
    return "refused" if SHARE_REFUSED in page.locator("body").inner_text() else "served"


def test_one_visitor_over_its_share_and_the_others_are_still_served_on_the_generate_tab(shared_app, browser):
    url, demo = shared_app
    heavy = visitor(browser, url, "203.0.113.5")
    heavy.get_by_label("number input for max new tokens").fill("256")
    outcomes = []
    for i in range(40):
        # a new prompt each press: a run whose step view equals the last one's would leave the page's step chart
        # as it was (gradio does not redraw an unchanged value), and the press would never be seen served
        heavy.locator("#prompt textarea").fill(f"ROMEO {i}:")
        outcomes.append(press_generate(heavy))
        if outcomes[-1] == "refused":
            break
    assert outcomes[-1] == "refused" and "served" in outcomes  # its first runs were served, then its share ran out
    # another visitor at another address: served on the same tab's event
    elsewhere = visitor(browser, url, "198.51.100.7")
    assert press_generate(elsewhere) == "served"
    assert len(elsewhere.locator("#output .axw-tok").all()) > 0
    # a classmate behind the same school address, in their own browser session: served too
    classmate = visitor(browser, url, "203.0.113.5")
    assert press_generate(classmate) == "served"
    # and the server counted three visitors apart: two sessions behind the school's address, one elsewhere
    share = demo.playground.share
    addresses = sorted(key.split(" ")[0] for key in share.sessions.spans)
    assert addresses == ["198.51.100.7", "203.0.113.5", "203.0.113.5"]
    for page in (heavy, elsewhere, classmate):
        page.context.close()


BADGES = "() => [...document.querySelectorAll('.block .error')].map((e) => e.closest('.block').id)"


def test_a_refusal_leaves_no_error_badge_and_keeps_what_was_shown(served_app, browser):
    url, _ = served_app
    page = visitor(browser, url, "203.0.113.9")
    assert press_generate(page) == "served"
    text = page.locator("#output .axw-out").inner_text()
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=15000)
    page.wait_for_timeout(1500)  # the badges gradio draws on a failed event's outputs would be there by now
    assert page.evaluate(BADGES) == []
    assert page.locator("#output .axw-out").inner_text() == text

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-columns").get_by_label("beam search (4 beams)").uncheck()
    page.locator("#compare-new input[type=number]").fill("8")
    page.locator("#compare-go").click()
    page.wait_for_function("() => document.querySelectorAll('#compare-grid .axw-metrics').length >= 5",
                           timeout=60000)
    rows = "() => Number(document.querySelector('#compare-metrics [role=grid]')?.getAttribute('aria-rowcount'))"
    page.wait_for_function(f"({rows})() >= 6", timeout=10000)  # the header and a row per column
    columns, numbers = page.locator("#compare-grid").inner_text(), page.evaluate(rows)
    page.locator("#compare-prompt textarea").fill("")
    page.locator("#compare-go").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=15000)
    page.wait_for_timeout(1500)
    assert page.evaluate(BADGES) == []
    assert page.locator("#compare-grid").inner_text() == columns
    assert page.evaluate(rows) == numbers
    assert page.locator("#compare-metrics").get_by_text("contrastive search (alpha 0.6, k 4)").count() == 1
    page.context.close()


def test_visitors_pressing_generate_together_share_forwards_and_each_gets_its_own_text(served_app, browser,
                                                                                     monkeypatch):
    """Four visitors, each with their own seed, press Generate one after another without waiting: their runs
    decode in shared forwards, and each page shows the text it shows when its visitor presses Generate again
    alone."""
    from axw.shared import shared_forwards

    url, demo = served_app
    pages = seeded_visitors(browser, url, 20, 160)
    shared = shared_forwards(demo.playground.model("").net)
    # the app lets two runs in flight decode on their own (AXW_SHARED_ALONE) and runs two at a time: here every
    # run in flight shares, so the runs of the visitors' presses meet in forwards
    monkeypatch.setattr(shared, "alone", 0)
    press_together(pages)
    assert shared is not None and shared.stats.largest >= 2  # several visitors' steps in one forward
    together = [page.locator("#output .axw-out").inner_text() for page in pages]
    assert len(set(together)) == len(pages)  # each visitor its own text
    for page, text in zip(pages, together):  # again, alone: the output streams in anew, to the same text
        assert generate_again(page, text) == text
        page.context.close()


def seeded_visitors(browser, url, first: int, tokens: int) -> list:
    """Four visitors at addresses from 198.51.100.`first` on, each sampling `tokens` tokens with its own seed."""
    pages = []
    for i in range(4):
        page = visitor(browser, url, f"198.51.100.{first + i}")
        page.get_by_label("temperature").first.fill("0.9")
        page.get_by_label("number input for max new tokens").fill(str(tokens))
        page.get_by_label("seed", exact=True).first.fill(str(i + 1))
        page.evaluate("() => document.querySelectorAll('#step-chart [data-step]').forEach((e) => e.remove())")
        pages.append(page)
    return pages


def press_together(pages):
    """Press Generate on every page from the page's own script (the presses come within milliseconds), and wait
    for each one's step view."""
    for page in pages:
        page.evaluate("() => document.querySelector('#generate').click()")
    for page in pages:
        page.wait_for_function("() => document.querySelector('#step-chart [data-step]') !== null", timeout=60000)


def generate_again(page, text: str) -> str:
    """Press Generate again, alone, and wait until the output has streamed in anew to `text`'s length: the text
    shown then."""
    page.evaluate("() => { document.querySelector('#output .axw-out').innerText = ''; }")
    page.locator("#generate").click()
    page.wait_for_function(
        "(want) => (document.querySelector('#output .axw-out')?.innerText || '').length >= want",
        arg=len(text), timeout=60000)
    page.wait_for_timeout(300)  # the last update, if any, is in
    return page.locator("#output .axw-out").inner_text()


@pytest.fixture(scope="module")
def worker_app(tmp_path_factory):
    """The playground with two worker processes generating (AXW_WORKERS=2)."""
    import app
    from conftest import free_port, playground_models

    expert, amateur = playground_models(tmp_path_factory.mktemp("class-worker-models"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AXW_WORKERS", "2")
        demo = app.build(expert, amateur, trusted_proxies=1)
    playground = demo.playground
    assert len(playground.workers.workers) == 2 and playground.workers.wait_ready(180)
    port = free_port()
    app.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()
    playground.workers.close()


def test_with_worker_processes_each_visitor_gets_the_text_the_apps_own_process_gives(worker_app, browser,
                                                                                      monkeypatch):
    """Four visitors press Generate together while two worker processes generate: each page shows its own text,
    the one the app's own process gives that visitor's settings; a token of it opens its step, and a candidate
    clicked there branches from it."""
    url, demo = worker_app
    playground = demo.playground
    pages = seeded_visitors(browser, url, 40, 48)
    sent = []
    for worker in playground.workers.workers:  # every run the page starts is sent to a worker
        monkeypatch.setattr(worker, "submit", lambda *a, _submit=worker.submit: sent.append(a[0]) or _submit(*a))
    press_together(pages)
    assert len(sent) == 4
    together = [page.locator("#output .axw-out").inner_text() for page in pages]
    assert len(set(together)) == len(pages)
    monkeypatch.setattr(playground, "workers", None)  # from here on, the app's own process
    for page, text in zip(pages, together):
        assert generate_again(page, text) == text
    page, text = pages[0], together[0]
    monkeypatch.undo()  # workers back: the branch below continues a run a worker generated
    assert generate_again(page, text) == text
    i = page.evaluate("() => Number([...document.querySelectorAll('#output .axw-tok')].find("
                      "(t) => Number(t.dataset.i) >= 3 && t.textContent.trim()).dataset.i)")
    page.locator(f"#output .axw-tok[data-i='{i}']").click()
    page.wait_for_selector(f"#step-chart [data-step='{i}']", timeout=10000)
    page.locator("#step-chart tr[data-token]").nth(2).click()
    page.wait_for_selector(f"#output .axw-forced[data-i='{i}']", state="attached", timeout=30000)
    assert page.locator("#output .axw-forced").count() == 1
    page.screenshot(path=SHOT, full_page=True)
    for page in pages:
        page.context.close()
