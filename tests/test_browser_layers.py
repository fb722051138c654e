"""The layer view and DoLa in a real headless Chromium: open a step and each layer's guess shows, its numbers the
network cut after that layer (tests/test_dola.py's hand computation); DoLa's two contrasted layers marked."""

import pytest
import torch

from test_browser import CHROMIUM, expert, linked, open_step, page, pytestmark  # noqa: F401
from test_dola import cut_after

SHOT = "/tmp/axw-layer-view.png"


def guesses(model, ids: list[int]) -> list[int]:
    """Each layer's most likely token after `ids`, the last layer first (as the view lists them)."""
    depth = model.net.attn_layers.depth
    with torch.no_grad():
        return [int(cut_after(model.net, i)(torch.tensor([ids]))[0, -1].argmax()) for i in range(depth, -1, -1)]


def test_open_a_dola_step_and_the_layer_view_shows(served_app, page, expert):  # noqa: F811
    import playground as pg

    linked(page, served_app[0], prompt="JULIET:", strategy="DoLa", dola_layers="0", temperature=0,
           repetition_penalty=1.2, max_new_tokens=6)
    open_step(page, 2)
    page.wait_for_selector("#layer-view .axw-layers[data-step='2'] tr[data-layer]", timeout=15000)
    prompt = expert.tokenizer.encode("JULIET:").ids
    new = expert.generate(torch.tensor(prompt), 3, dola_layers=[0], temperature=0.0,
                          repetition_penalty=1.2)[len(prompt):].tolist()
    rows = page.locator("#layer-view tr[data-layer]")
    depth = expert.net.attn_layers.depth
    assert rows.count() == depth + 1
    for i, token in enumerate(guesses(expert, prompt + new[:2])):
        assert rows.nth(i).locator("code").first.inner_text() == pg.show_token(expert.tokenizer, token)
    marked = page.locator("#layer-view tr.axw-contrasted")
    assert [marked.nth(i).get_attribute("data-layer") for i in range(marked.count())] == [str(depth), "0"]
    assert page.locator("#step-chart .axw-dola tr").count() == 2  # DoLa's one candidate layer, in the step view
    page.locator("#layers").scroll_into_view_if_needed()
    page.screenshot(path=SHOT, full_page=True)


def test_the_layer_view_of_a_sampled_step(served_app, page, expert):  # noqa: F811
    linked(page, served_app[0], prompt="ROMEO:", temperature=1.0, seed=2, max_new_tokens=4)
    page.locator("#layers-go").click()  # the open step (the last), on request
    page.wait_for_selector("#layer-view tr[data-layer]", timeout=15000)
    assert page.locator("#layer-view tr.axw-contrasted").count() == 0
    assert "The chosen token" in page.locator("#layer-view").inner_text()
