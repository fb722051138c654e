"""Chat mode in the playground: the prompt is the user's message, laid out with the model's chat template, and the
reply ends at the model's end-of-turn token; on a tiny ChatML model built here."""

import os

import pytest
import torch

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402

import playground as pg  # noqa: E402
from axw import AutoregressiveWrapper  # noqa: E402
from test_browser import ARGS, CHROMIUM  # noqa: E402
from test_chat_template import bpe_tokenizer, write_family  # noqa: E402

MESSAGE, SYSTEM, STOP_AT = "What is the capital of France?", "You are terse.", 4


def messages(system=SYSTEM):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": MESSAGE}]


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """(folder of a tiny ChatML model whose greedy reply to MESSAGE ends with <|im_end|> at step STOP_AT, folder of a
    base model without a template). The first is a random model with two rows of its output layer swapped: the
    token greedy took at step STOP_AT and <|im_end|>."""
    root = tmp_path_factory.mktemp("chat")
    folder = write_family(root / "chatml", "chatml", bpe_tokenizer())
    model = AutoregressiveWrapper.from_pretrained(folder)
    ids = torch.tensor(model.apply_chat_template(messages(), add_generation_prompt=True))
    free = model.generate(ids, 12, temperature=0.0)[len(ids):].tolist()
    end = model.tokenizer.token_to_id("<|im_end|>")
    token = free[STOP_AT - 1]
    assert end not in free and token not in free[:STOP_AT - 1], "pick another STOP_AT for this random model"
    weight = model.net.to_logits.weight.data
    weight[[token, end]] = weight[[end, token]]
    model.save_pretrained(folder)
    base = root / "base"
    AutoregressiveWrapper.from_pretrained(folder).save_pretrained(base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    (base / "tokenizer_config.json").unlink(missing_ok=True)
    return str(folder), str(base)


@pytest.fixture(scope="module")
def chat_app(chat_models):
    import app
    from conftest import free_port

    folder, base = chat_models
    demo = app.build(folder, base, visitor_budget_s=0)
    port = free_port()
    app.launch(demo, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


def test_chat_mode_lays_out_the_template_and_stops_at_the_end_of_turn(chat_app, chat_models):
    _, demo = chat_app
    model = AutoregressiveWrapper.from_pretrained(chat_models[0])
    assert model.tokenizer.token_to_id("<|im_end|>") in model.stop_token_ids
    ids = model.apply_chat_template(messages(), add_generation_prompt=True)
    reference = model.generate(torch.tensor(ids), 20, temperature=0.0, eos_token=model.stop_token_ids)[len(ids):]
    reply = reference.tolist()[:STOP_AT - 1]  # what comes before the end of turn

    text, tokens, trace = demo.playground.generate_api(MESSAGE, max_new_tokens=20, temperature=0.0, chat=True,
                                                       system=SYSTEM)
    assert text == model.tokenizer.decode(reply) and len(tokens) == STOP_AT - 1
    assert len(trace) == STOP_AT  # the step that took <|im_end|> ended the text
    # without chat mode the same message is plain text, and nothing stops it at 4 tokens
    plain, _, _ = demo.playground.generate_api(MESSAGE, max_new_tokens=20, temperature=0.0)
    assert plain != text


def test_a_run_in_chat_mode_keeps_the_rendered_prompt_and_branches(chat_app, chat_models):
    import playground.runs as R

    _, demo = chat_app
    app = demo.playground
    model = app.model(app.model_name)
    settings = pg.Settings(temperature=0.0, max_new_tokens=12, chat=True, system=SYSTEM)
    _, run, updates, cache = app.start(MESSAGE, settings, "s", keep_cache=True)
    for run in updates:
        pass
    assert run.prompt == model.apply_chat_template(messages(), add_generation_prompt=True, tokenize=False)
    assert run.prompt_ids == model.apply_chat_template(messages(), add_generation_prompt=True)
    assert "<|im_start|>" in run.specials and run.ended == "eos"
    # a what-if branch at step 1 keeps the chat prompt and is the model's own continuation of it
    token = run.rows[0]["candidates"][1]
    _, branch, steps, _ = app.branch(run, 0, token, "s", kept=cache)
    for branch in steps:
        pass
    assert branch.prompt_ids == run.prompt_ids and branch.new_ids[0] == token
    stops = R.stop_set(model, settings)
    full = model.generate(torch.tensor(run.prompt_ids + [token]), 11, temperature=0.0, eos_token=sorted(stops))
    expected = full[len(run.prompt_ids):].tolist()
    expected = expected[:R.cut_at_stop(expected, stops)]
    assert branch.new_ids == expected
    html = pg.tokens_html(run.prompt, run.pieces, run.probs, specials=run.specials)
    assert html.count('class="axw-special"') == run.prompt.count("<|im_start|>") + run.prompt.count("<|im_end|>")


def test_chat_mode_is_refused_for_a_model_without_a_template(chat_app, chat_models):
    _, demo = chat_app
    with pytest.raises(gr.Error, match="no chat template"):
        demo.playground.generate_api(MESSAGE, model=chat_models[1], chat=True)
    with pytest.raises(gr.Error, match="system must be"):
        demo.playground.generate_api(MESSAGE, chat=True, system="x" * (pg.MAX_PROMPT_CHARS + 1))


def test_a_share_link_carries_chat_mode():
    settings = pg.Settings(chat=True, system="Be brief & clear?")
    prompt, back = pg.from_query(dict(__import__("urllib.parse").parse.parse_qsl(pg.to_query(MESSAGE, settings))))
    assert prompt == MESSAGE and back.chat is True and back.system == "Be brief & clear?"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no browser at {CHROMIUM}")
def test_chat_mode_in_the_browser(chat_app, chat_models):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = chat_app
    model = AutoregressiveWrapper.from_pretrained(chat_models[0])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#prompt textarea").fill(MESSAGE)
        page.locator("#chat input[type=checkbox]").check()
        page.locator("#system textarea, #system input").first.fill(SYSTEM)
        page.get_by_label("temperature").first.fill("0")
        page.locator("#generate").click()
        page.wait_for_selector("#step-chart [data-step]", timeout=30000)
        shown = page.locator("#output .axw-out")
        # the template laid out, its special tokens marked, then the reply, which ended at <|im_end|>
        specials = shown.locator(".axw-special").all_inner_texts()
        assert specials[:2] == ["<|im_start|>", "<|im_end|>"] and "<|im_end|>" not in shown.inner_text()[-12:]
        prompt = model.apply_chat_template(messages(), add_generation_prompt=True, tokenize=False)
        assert shown.locator(".axw-prompt").inner_text().replace("\n", "") == prompt.replace("\n", "")
        assert shown.locator(".axw-tok").count() == STOP_AT - 1
        browser.close()


def test_compare_answers_the_chat_in_every_column(chat_app, chat_models):
    _, demo = chat_app
    app = demo.playground
    model = AutoregressiveWrapper.from_pretrained(chat_models[0])
    labels = ["greedy", "beam search (4 beams)"]
    for cols in app._compare(app.model_name, MESSAGE, 0, 12, "", labels, "s", chat=True, system=SYSTEM):
        pass
    prompt = model.apply_chat_template(messages(), add_generation_prompt=True, tokenize=False)
    greedy = next(c for c in cols if c["label"] == "greedy")["run"]
    assert [c["run"].prompt for c in cols] == [prompt, prompt]
    ids = model.apply_chat_template(messages(), add_generation_prompt=True)
    reply = model.generate(torch.tensor(ids), 12, temperature=0.0, eos_token=model.stop_token_ids)[len(ids):]
    assert greedy.new_ids == reply.tolist()[:STOP_AT - 1] and greedy.ended == "eos"
    with pytest.raises(gr.Error, match="no chat template"):
        list(app._compare(chat_models[1], MESSAGE, 0, 12, "", labels, "s", chat=True))
