"""The playground's structure settings: the boxes as the library takes them, checked before any compute; the
ready examples; the timeline's 'probability the constraint removed'; the JSON lesson's claims on the bundled
model."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from axw import AutoregressiveWrapper
from playground.lessons import LESSONS
from playground.numbers.timeline import timeline
from playground.settings import Settings
from playground.structure import BOXES, CHARACTER, EXAMPLES, example

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundled():
    model = AutoregressiveWrapper.from_pretrained(ROOT / "assets/models/shakespeare").eval()
    model.eos_token_id = 0
    return model


def test_the_boxes_become_the_librarys_settings_and_bad_ones_are_refused(bundled):
    config = Settings(choices="yes\n\nno\r\n perhaps ").config(bundled, trace=False)
    assert config.choices == ["yes", "no", " perhaps "] and config.constraint == "choices"
    assert Settings(json_schema=CHARACTER).config(bundled).json_schema == json.loads(CHARACTER)
    assert Settings().config(bundled).constraint is None
    for settings, message in [(Settings(regex="[0-9", grammar=""), "regex is not valid"),
                              (Settings(regex="a", choices="b"), "one constraint at a time"),
                              (Settings(json_schema="{nope"), "not valid JSON"),
                              (Settings(grammar="start: (("), "Lark grammar is not valid")]:
        with pytest.raises(ValueError, match=message):
            settings.check()
    for strategy in ("beam search", "contrastive search", "speculative decoding"):  # every strategy reads them
        assert "json_schema" in Settings(strategy=strategy).reads()


def test_each_ready_example_fills_one_box_and_runs(bundled):
    assert example("none") == ["", "", "", ""]
    ids = torch.tensor(bundled.tokenizer.encode("ROMEO:\n").ids)
    for name in list(EXAMPLES)[1:]:
        values = dict(zip(BOXES, example(name)))
        assert sum(bool(v) for v in values.values()) == 1
        config = Settings(temperature=0.0, **values).config(bundled, trace=False)
        out = bundled.generate(ids, 40, generation_config=config)
        assert (out[len(ids):] == 0).any()  # the example's text ends within 40 tokens
    with pytest.raises(ValueError, match="no structure example"):
        example("a sonnet")


def test_the_timeline_records_the_probability_the_constraint_removed(bundled):
    """1 - the model's probability of the tokens a choice can start with (brute force over the vocabulary)."""
    choices = ["yes", "no", "perhaps"]
    ids = bundled.tokenizer.encode("JULIET:").ids
    config = Settings(temperature=0.0, choices="\n".join(choices)).config(bundled)
    rows = [s.trace.row(0) for s in bundled.stream(torch.tensor(ids), 8, generation_config=config)]
    records = timeline(SimpleNamespace(rows=rows, probs=[], new_ids=[]))
    with torch.no_grad():
        probs = bundled.net(torch.tensor([ids]))[0, -1].softmax(-1)
    texts = bundled.tokenizer.decode_batch([[i] for i in range(bundled.net.num_tokens)])
    allowed = [i for i, t in enumerate(texts) if t and any(c.startswith(t) for c in choices)]
    assert records[0]["constraint_removed"] == pytest.approx(1 - float(probs[allowed].sum()), abs=1e-5)
    assert rows[0]["kept"]["grammar"] == len(allowed)
    free = Settings(temperature=0.0).config(bundled)
    rows = [s.trace.row(0) for s in bundled.stream(torch.tensor(ids), 2, generation_config=free)]
    assert timeline(SimpleNamespace(rows=rows, probs=[], new_ids=[]))[0]["constraint_removed"] is None


def test_the_json_lesson_shows_what_it_says(bundled):
    """JSON valid under the character schema where greedy answers in verse; under 1% of the model's
    probability allowed at each brace and quote; the name cut at its 20 characters."""
    lesson = next(item for item in LESSONS["sampling"] if item.title.startswith("a grammar makes any model"))
    (_, greedy), (_, constrained) = lesson.runs()
    ids = torch.tensor(bundled.tokenizer.encode(lesson.prompt).ids)
    free = bundled.generate(ids, 40, generation_config=greedy.config(bundled, trace=False))
    with pytest.raises(json.JSONDecodeError):
        json.loads(bundled.tokenizer.decode(free[len(ids):].tolist()))
    steps = list(bundled.stream(ids, 40, generation_config=constrained.config(bundled)))
    tokens = [int(s.tokens[0]) for s in steps]
    text = bundled.tokenizer.decode(tokens[:tokens.index(0)])
    value = json.loads(text)
    assert set(value) == {"name", "age"} and type(value["age"]) is int and 0 <= value["age"] <= 120
    assert len(value["name"]) == 20
    for s, token in zip(steps, tokens):
        if bundled.tokenizer.decode([token]) in ('{', '"', '}', ':'):  # the form: the grammar's, not the model's
            assert s.trace.row(0)["mass"]["grammar"] < 0.01
