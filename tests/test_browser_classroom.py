"""A class on one Space, in a real headless Chromium: visitors behind the Space's proxy are told apart on the
Generate tab's own events, by address and by browser session."""

import os

import pytest

from test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")

SHARE_REFUSED = "the share each visitor gets"


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
    for _ in range(40):
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
