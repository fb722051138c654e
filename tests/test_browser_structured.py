"""Structured output in a real headless Chromium: the structure group's ready example fills its box, the text
obeys it, the step view shows the grammar stage with the numbers a brute-force count gives, and the timeline
draws the probability the constraint removed."""

import re

import pytest
import torch

from test_browser import CHROMIUM, FINISHED, page  # noqa: F401  (the module's browser page)

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")
CHOICES = ["yes", "no", "perhaps"]


def brute_first_step(model, prompt: str):
    """The tokens a choice can start with (each token's text a prefix of a choice, by brute force over the
    vocabulary) and the model's probability they hold, at the first step."""
    ids = model.tokenizer.encode(prompt).ids
    with torch.no_grad():
        probs = model.net(torch.tensor([ids]))[0, -1].softmax(-1)
    texts = model.tokenizer.decode_batch([[i] for i in range(model.net.num_tokens)])
    allowed = [i for i, t in enumerate(texts) if t and any(c.startswith(t) for c in CHOICES)]
    return len(allowed), float(probs[allowed].sum())


def test_the_structure_group_the_grammar_stage_and_the_timeline_series(served_app, page, models):  # noqa: F811
    url = served_app[0]
    page.goto(url)
    page.locator("#prompt textarea").fill("JULIET:")
    page.get_by_label("temperature").first.fill("0")
    page.get_by_label("number input for max new tokens").fill("8")
    page.get_by_label("number input for max new tokens").press("Enter")
    page.locator("#structure").get_by_text("structure").first.click()  # the accordion opens
    page.locator("#structure-example input").click()
    page.get_by_role("option", name="yes / no / perhaps (choices)").click()
    page.wait_for_function("() => document.querySelector('#structure-choices textarea').value === 'yes\\nno\\nperhaps'",
                           timeout=10000)
    page.locator("#generate").click()
    page.wait_for_function(FINISHED, timeout=30000)
    text = page.locator("#output .axw-out").inner_text().replace("\n", "")
    assert text.startswith("JULIET:") and text[len("JULIET:"):] in CHOICES

    # the first step's grammar stage: the tokens it allowed and their share of the model's probability
    page.get_by_label("number input for step").fill("1")
    page.get_by_label("number input for step").press("Enter")
    page.wait_for_selector("#step-chart [data-step='0']", timeout=10000)
    stages = page.locator("#step-chart .axw-stages").inner_text()
    found = re.search(r"grammar \(one of yes / no / perhaps\) allowed ([\d,]+) tokens? holding ([\d.]+)%", stages)
    assert found, stages
    n, mass = brute_first_step(models[0], "JULIET:")
    assert int(found.group(1).replace(",", "")) == n
    assert float(found.group(2)) == pytest.approx(100 * mass, abs=0.051)

    # the timeline's series: the probability the constraint removed, a point per step
    page.locator("#timeline-measure").get_by_text("probability the constraint removed").click()
    page.wait_for_function("() => [...document.querySelectorAll('#timeline .axw-timeline')].some((el) => "
                           "el.offsetParent !== null && el.querySelectorAll('svg path').length > 2)", timeout=10000)


def test_a_bad_constraint_is_an_error_on_the_page_and_the_api(served_app, page, client):  # noqa: F811
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="regex is not valid"):
        client.predict(prompt="JULIET:", regex="a(b", api_name="/generate")
    with pytest.raises(AppError, match="one constraint at a time"):
        client.predict(prompt="JULIET:", regex="a", choices="yes\nno", api_name="/generate")
    page.goto(served_app[0])
    page.locator("#structure").get_by_text("structure").first.click()
    page.locator("#structure-grammar textarea").fill("start: ((")
    page.locator("#generate").click()
    page.get_by_text("Lark grammar is not valid").first.wait_for(timeout=30000)


def test_a_what_if_branch_continues_the_constrained_text(served_app, client, models):
    """Forcing the first token of another answer at step 1 gives that answer; a token the constraint refuses
    there is an error, not an unconstrained text."""
    settings = dict(prompt="JULIET:", temperature=0.0, max_new_tokens=8, choices="\n".join(CHOICES))
    text, _, trace = client.predict(**settings, api_name="/generate")
    assert text in CHOICES
    tok = models[0].tokenizer
    other = next(c for c in CHOICES if c[0] != text[0])
    branch, _, _ = client.predict(**settings, force_step=1, force_token=tok.encode(other[0]).ids[0],
                                  api_name="/generate")
    assert branch == other
    refused = tok.encode("z").ids[0]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="does not allow the text"):
        client.predict(**settings, force_step=1, force_token=refused, api_name="/generate")
