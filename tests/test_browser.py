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


def idle(page):
    """Once the page has run everything it had queued."""
    page.evaluate("() => new Promise(done => requestIdleCallback(() => requestIdleCallback(done)))")


def typed_and_kept(page, selector: str, value: str, tries: int = 5):
    """Type `value` into the input at `selector` and commit it (Tab), again until the page keeps it: on a busy
    machine a group just opened can draw its input once more after the typing, back at its first value (a full
    run under load sampled the default N so, or never showed the typed one)."""
    field = page.locator(selector)
    for _ in range(tries):
        field.fill(value)
        field.press("Tab")
        idle(page)
        if field.input_value() == value:
            page.wait_for_timeout(300)
            idle(page)
            if field.input_value() == value:
                return
    raise AssertionError(f"{selector} did not keep {value!r} after {tries} tries")


def shown_text(page, selector="#output .axw-out") -> str:
    return page.locator(selector).inner_text().replace("\n", "")


@pytest.fixture(scope="module")
def expert(models):
    return models[0]


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
    page.locator("#draws input").wait_for(state="visible")
    typed_and_kept(page, "#draws input", "2000")
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


# --- the strategies' own views ---


@pytest.fixture(scope="module")
def amateur(models):
    return models[1]


def linked(page, url, **settings):
    """Open the page with a share link holding `settings`, press Generate, wait for the step view."""
    import urllib.parse

    page.goto(url + "?" + urllib.parse.urlencode(settings))
    page.wait_for_function("(p) => document.querySelector('#prompt textarea')?.value === p", arg=settings["prompt"],
                           timeout=10000)
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=30000)


def test_the_beam_tree_draws_every_candidate_and_the_returned_path(served_app, page, expert):
    from test_instrument import continuation, until_eos

    n, beams = 8, 3
    linked(page, served_app[0], prompt="JULIET:", strategy="beam search", beams=beams, max_new_tokens=n)
    page.wait_for_selector("#beam-tree svg .axw-node", timeout=10000)
    assert page.locator("#beam-tree-box").is_visible()
    prompt = expert.tokenizer.encode("JULIET:").ids
    best = continuation(expert, prompt, n, beams=beams)
    assert shown_text(page) == ("JULIET:" + expert.tokenizer.decode(best)).replace("\n", "")
    returned = page.locator("#beam-tree .axw-node-returned")
    path = [int(returned.nth(i).get_attribute("data-token")) for i in range(returned.count())]
    assert until_eos(expert, path) == best and page.locator("#beam-tree .axw-edge-path").count() == len(path)
    for t in range(len(path)):  # each step: the live beams kept, the rest pruned and faded
        nodes = page.locator(f"#beam-tree .axw-node[data-step='{t}']")
        classes = [nodes.nth(i).get_attribute("class") for i in range(nodes.count())]
        assert sum("axw-node-pruned" not in c for c in classes) == beams
        assert sum("axw-node-pruned" in c for c in classes) >= 1
    pruned = page.locator("#beam-tree .axw-node-pruned text").first
    assert float(pruned.evaluate("(e) => getComputedStyle(e).opacity")) < 0.5
    # an attribute the server never draws: a tree drawn again (replaced or patched to the server's HTML) loses it
    page.evaluate("document.querySelector('#beam-tree svg').setAttribute('data-probe', '1')")
    page.locator("#beam-tree .axw-node[data-step='3'] text").first.click()  # a node opens its step
    page.wait_for_selector("#step-chart [data-step='3']", timeout=10000)
    assert "every candidate this step expanded" in page.locator("#step-chart").inner_text().lower()
    marked = "(want) => [...document.querySelectorAll('#beam-tree .axw-tree-sel')].map((e) => e.textContent)" \
             ".join() === want"
    page.wait_for_function(marked, arg="step 4", timeout=10000)
    assert page.locator("#beam-tree .axw-tree-sel").text_content() == "step 4"
    # a token of the text opens its step too, and the tree's mark follows; the tree itself is not drawn again
    page.locator("#output .axw-tok[data-i='5']").click()
    page.wait_for_selector("#step-chart [data-step='5']", timeout=10000)
    page.wait_for_function(marked, arg="step 6", timeout=10000)
    assert page.evaluate("document.querySelector('#beam-tree svg').getAttribute('data-probe')") == "1"


def test_speculative_rounds_show_the_drafts_accepted_and_rejected(served_app, page, expert, client):
    import playground as pg

    n = 20
    linked(page, served_app[0], prompt="JULIET:", strategy="speculative decoding", temperature=0, max_new_tokens=n,
           num_assistant_tokens=4)
    page.wait_for_selector("#speculative .axw-round", timeout=10000)
    greedy = greedy_ids(expert, expert.tokenizer.encode("JULIET:").ids, n)
    assert shown_text(page) == ("JULIET:" + expert.tokenizer.decode(greedy)).replace("\n", "")  # greedy's text
    _, _, trace = client.predict(prompt="JULIET:", strategy="speculative decoding", temperature=0.0, max_new_tokens=n,
                              num_assistant_tokens=4, api_name="/generate")
    rounds = pg.speculative_rounds(trace)
    shown = page.locator("#speculative .axw-round")
    assert shown.count() == len(rounds)
    for i, r in enumerate(rounds):
        line = shown.nth(i)
        assert line.locator(".axw-chip-ok").count() == r["n_accepted"]
        assert line.locator(".axw-chip-no").count() == (r["n_accepted"] < len(r["drafted"]))
        assert line.locator(".axw-chip-model").count() == 1
        if r["drafted"]:
            title = line.locator(".axw-chip").first.get_attribute("title")
            assert f"draft q = {r['draft_probs'][0]:.3f}, model p = {r['model_probs'][0]:.3f}" in title
    head = page.locator("#speculative .axw-spec-head").inner_text()
    assert f"{100 * rounds[-1]['acceptance_rate']:.0f}%" in head and f"{rounds[-1]['tokens_per_forward']:.2f}" in head
    page.evaluate("document.querySelector('#speculative .axw-spec').setAttribute('data-probe', '1')")
    shown.nth(1).click()  # a round opens its first step
    step = rounds[1]["steps"][0]
    page.wait_for_selector(f"#step-chart [data-step='{step}']", timeout=10000)
    assert "round 2" in page.locator("#step-chart").inner_text()
    # the rounds view marks the round holding the open step, whichever view opened it, without being drawn again
    marked = "(want) => [...document.querySelectorAll('#speculative .axw-round')].map((r, i) => " \
             "r.classList.contains('axw-round-sel') ? i : -1).filter((i) => i >= 0).join() === String(want)"
    page.wait_for_function(marked, arg=1, timeout=10000)
    last = rounds[-1]["steps"][-1]
    page.locator(f"#output .axw-tok[data-i='{last}']").click()
    page.wait_for_selector(f"#step-chart [data-step='{last}']", timeout=10000)
    page.wait_for_function(marked, arg=len(rounds) - 1, timeout=10000)
    assert page.evaluate("document.querySelector('#speculative .axw-spec').getAttribute('data-probe')") == "1"


@pytest.mark.parametrize("drafter, source, css, title", [
    ("draft model + prompt lookup", 1, "axw-chip-copy", "copied by prompt lookup"),
    ("draft model + datastore", 2, "axw-chip-store", "copied from the n-gram datastore")])
def test_speculative_rounds_mark_the_copies(served_app, page, expert, client, drafter, source, css, title):
    """The 'draft model + prompt lookup' and 'draft model + datastore' drafters from a share link: greedy's text,
    and in each round the chips of the copied drafts (as /generate's trace says) underlined, the legend saying
    so."""
    import playground as pg

    n = 50
    settings = dict(prompt="JULIET:", strategy="speculative decoding", temperature=0, max_new_tokens=n,
                    num_assistant_tokens=3, drafter=drafter)
    linked(page, served_app[0], **settings)
    page.wait_for_selector("#speculative .axw-round", timeout=10000)
    greedy = greedy_ids(expert, expert.tokenizer.encode("JULIET:").ids, n)
    assert shown_text(page) == ("JULIET:" + expert.tokenizer.decode(greedy)).replace("\n", "")
    settings["temperature"] = 0.0
    _, _, trace = client.predict(**settings, api_name="/generate")
    rounds = pg.speculative_rounds(trace)
    shown = page.locator("#speculative .axw-round")
    assert shown.count() == len(rounds) and sum(r["sources"].count(source) for r in rounds) > 0
    for i, r in enumerate(rounds):
        chips = shown.nth(i).locator(".axw-chip")
        for j, copied in enumerate(s == source for s in r["sources"]):
            assert (css in chips.nth(j).get_attribute("class")) == copied
            assert chips.nth(j).get_attribute("title").startswith(title) == copied
    assert title in page.locator("#speculative .axw-spec-head").inner_text()
    assert "+ " + drafter.split(" + ")[1] in page.locator("#speculative .axw-spec-head").inner_text()


def stages(page) -> list[tuple[str, int]]:
    """The step view's stages as shown: (label, tokens kept), in order."""
    import re

    items = page.locator("#step-chart .axw-stages li").all_inner_texts()
    return [(re.match(r"(.+?) (?:has|kept) ([\d,]+) token", s).group(1),
             int(re.match(r".+? (?:has|kept) ([\d,]+) token", s).group(1).replace(",", ""))) for s in items]


def test_switching_to_temperature_first_moves_the_top_p_cut(served_app, page, client):
    settings = dict(prompt="JULIET:", temperature=2, top_p=0.8, max_new_tokens=3, seed=1)
    linked(page, served_app[0], **settings)
    first = stages(page)
    assert [s for s, _ in first] == ["model", "top_p 0.8", "temperature 2"]
    page.locator("#more-samplers").click()
    page.locator("#sampler-order").get_by_label("temperature_first").check()
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#step-chart .axw-stages li:nth-child(2)')?.innerText"
                           ".startsWith('temperature')", timeout=30000)
    then = stages(page)
    assert [s for s, _ in then] == ["model", "temperature 2", "top_p 0.8"]
    assert dict(then)["top_p 0.8"] > dict(first)["top_p 0.8"]  # the cut moved: a hotter distribution, more kept
    for order, shown in (("filters_first", first), ("temperature_first", then)):
        _, _, trace = client.predict(sampler_order=order, api_name="/generate", **settings)
        assert [k for _, k in shown] == [trace[0]["kept"][s] for s in trace[0]["stages"]]


def test_the_controls_shown_follow_the_strategy(served_app, page):
    page.goto(served_app[0])
    page.wait_for_selector("#more-samplers", timeout=10000)
    visible = lambda sel: page.locator(sel).first.is_visible()  # noqa: E731
    assert visible("#more-samplers") and not visible("#drafter")
    page.get_by_label("beam search").check()
    page.wait_for_function("() => !document.querySelector('#more-samplers')?.offsetParent", timeout=5000)
    assert not visible("#more-samplers") and visible("#stochastic")
    assert "repetition loop" in page.locator("#lesson").inner_text()
    page.locator("#stochastic input").check()  # stochastic beams sample: temperature and filters come back
    page.wait_for_function("() => !!document.querySelector('#more-samplers')?.offsetParent", timeout=5000)
    page.get_by_label("speculative decoding").check()
    page.wait_for_function("() => !!document.querySelector('#drafter')?.offsetParent", timeout=5000)
    page.locator("#more-samplers").click()
    page.get_by_label("dynamic temperature range").first.wait_for(state="visible", timeout=5000)
    assert not page.get_by_label("XTC probability").first.is_visible()  # XTC and mirostat: sampling only


def test_contrastive_search_shows_which_candidate_wins_as_alpha_moves(served_app, page, expert):
    import torch

    linked(page, served_app[0], prompt="JULIET:", strategy="contrastive search", penalty_alpha=0.6,
           contrastive_k=5, max_new_tokens=6)
    open_step(page, 2)
    cells = page.locator("#step-chart .axw-sweep tr").nth(1).locator("td").all_inner_texts()
    header = page.locator("#step-chart .axw-step").inner_text()
    assert len(cells) == 11 and f"chose {cells[6]}" in header  # alpha 0.6 is the run's own
    # alpha 0 is the model's most likely token after the text (one forward over it)
    import playground as pg

    seq = expert.tokenizer.encode("JULIET:").ids + greedy_cs(expert, 2)
    with torch.no_grad():
        top = int(expert.net(torch.tensor([seq]))[0, -1].argmax())
    assert cells[0] == pg.show_token(expert.tokenizer, top)
    assert page.locator("#step-chart svg.axw-alpha line.axw-line-win").count() >= 1


def greedy_cs(model, n):
    import torch

    prompt = model.tokenizer.encode("JULIET:").ids
    return model.generate(torch.tensor(prompt), n, penalty_alpha=0.6, contrastive_k=5)[len(prompt):].tolist()


def test_contrastive_decoding_shows_both_models_and_the_cut(served_app, page, expert, amateur):
    import math

    import torch

    linked(page, served_app[0], prompt="JULIET:", strategy="contrastive decoding", temperature=0, cd_alpha=0.2,
           max_new_tokens=4)
    open_step(page, 0)
    rows = page.locator("#step-chart .axw-cd tr")
    seq = expert.tokenizer.encode("JULIET:").ids
    with torch.no_grad():
        e, a = (m.net(torch.tensor([seq]))[0, -1].float().log_softmax(-1) for m in (expert, amateur))
    top = e.topk(10).indices.tolist()
    assert rows.count() == 11
    for i, token in enumerate(top):
        cells = rows.nth(i + 1).locator("td").all_inner_texts()
        assert cells[2:5] == [f"{e[token].item():.2f}", f"{a[token].item():.2f}",
                              "yes" if e[token] >= e.max() + math.log(0.2) else "no"]


def test_compare_marks_where_each_column_departs_from_greedy(served_app, page, expert):
    from test_instrument import continuation

    page.goto(served_app[0])
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill("JULIET:")
    page.locator("#compare-seed input").fill("2")
    page.get_by_label("number input for max new tokens").last.fill("16")
    page.get_by_label("number input for max new tokens").last.press("Enter")
    page.get_by_label("min-p 0.1 (T 0.8)").check()
    page.locator("#compare-go").click()
    page.wait_for_function("() => document.querySelectorAll('#compare-grid .axw-metrics').length >= 7",
                           timeout=60000)
    prompt = expert.tokenizer.encode("JULIET:").ids
    greedy = greedy_ids(expert, prompt, 16)
    sampled = continuation(expert, prompt, 16, temperature=0.8, filter_logits_fn=["min_p"],
                           filter_kwargs=[dict(min_p=0.1)], seed=2)
    col = lambda label: page.locator(f"#compare-grid .axw-col[data-label='{label}']")  # noqa: E731
    spec = col("speculative decoding (greedy, draft model)")
    assert spec.get_attribute("data-departs") == "" and "the same text as greedy" in spec.inner_text()
    assert spec.locator(".axw-out").inner_text() == col("greedy").locator(".axw-out").inner_text()
    at = next(i for i, (x, y) in enumerate(zip(sampled, greedy)) if x != y)
    minp = col("min-p 0.1 (T 0.8)")
    assert minp.get_attribute("data-departs") == str(at)
    assert minp.locator(f".axw-tok.axw-forced[data-i='{at}']").count() == 1  # the first departing token, marked
    assert f"departs from greedy at step {at + 1}" in minp.inner_text()
    assert page.locator("#compare-metrics").get_by_text("contrastive search (alpha 0.6, k 4)").count() == 1


def test_a_lesson_link_opens_its_settings(served_app, page):
    import playground as pg

    page.goto(served_app[0])
    page.get_by_label("beam search").check()
    lesson = page.locator("#lesson .axw-lesson-run").first
    lesson.wait_for(timeout=5000)
    pages = len(page.context.pages)
    lesson.click()  # the lesson opens in this tab, and runs
    page.wait_for_function("(p) => document.querySelector('#prompt textarea')?.value === p",
                           arg=pg.lessons.LOOP_PROMPT, timeout=10000)
    assert page.get_by_label("beam search").is_checked()
    assert page.get_by_label("number input for max new tokens").input_value() == "60"
    page.wait_for_function(FINISHED, timeout=30000)
    assert len(page.context.pages) == pages


def test_a_share_link_carries_a_what_if_branch(served_app, page, expert, client):
    import urllib.parse

    n, step = 16, 5
    _, _, trace = client.predict(prompt="JULIET:", temperature=0.0, max_new_tokens=n, api_name="/generate")
    forced = trace[step - 1]["candidates"][2]
    linked(page, served_app[0], prompt="JULIET:", temperature=0, max_new_tokens=n, force_step=step,
           force_token=forced)
    page.wait_for_selector(f"#output .axw-forced[data-i='{step - 1}']", state="attached", timeout=30000)
    page.wait_for_selector("#forks td", timeout=30000)
    prompt = expert.tokenizer.encode("JULIET:").ids
    root = greedy_ids(expert, prompt, n)
    branch = root[: step - 1] + [forced] + greedy_ids(expert, prompt + root[: step - 1] + [forced], n - step)
    assert shown_text(page) == ("JULIET:" + expert.tokenizer.decode(branch)).replace("\n", "")
    page.wait_for_function("() => (document.querySelector('#share-link textarea, #share-link input')?.value || '')"
                           ".includes('force_step')", timeout=10000)
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
    assert query["force_step"] == str(step) and query["force_token"] == str(forced)


def sized_page(width: int, height: int):
    """A headless Chromium page of this viewport, for a module-scoped fixture to yield from."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser.new_page(viewport={"width": width, "height": height})
        browser.close()
