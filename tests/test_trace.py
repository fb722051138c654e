"""The teaching trace: each stage's kept tokens against the pipeline applied by hand to a full forward, what
`row()` shows, and `generate` pointing to `stream` for a trace."""

import math

import pytest
import torch
from conftest import tiny_model

from axw import GenerationConfig, StepTrace

SETTINGS = dict(repetition_penalty=1.3, filter_logits_fn=["top_k", "min_p", "top_p"],
                filter_kwargs=[dict(k=30), dict(min_p=0.2), dict(thres=0.7)], temperature=0.7)


def by_hand(logits, seen):
    """The stages of SETTINGS written out: repetition penalty, top-k, min-p, top-p, temperature (each step's
    kept set, as a boolean mask, after each stage)."""
    logits = logits.clone()
    for token in set(seen):
        logits[token] = logits[token] / 1.3 if logits[token] > 0 else logits[token] * 1.3
    masks = [torch.ones_like(logits, dtype=torch.bool), torch.ones_like(logits, dtype=torch.bool)]
    keep = logits >= logits.sort(descending=True).values[29]  # top-k, ties with the 30th kept
    masks.append(keep.clone())
    probs = torch.where(keep, logits, -math.inf).softmax(dim=-1)
    keep &= probs >= 0.2 * probs.max()
    masks.append(keep.clone())
    probs = torch.where(keep, logits, -math.inf).softmax(dim=-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(dim=0) - probs[order]  # mass strictly before each token
    nucleus = torch.zeros_like(keep)
    nucleus[order[before < 0.7]] = True
    keep &= nucleus
    masks.append(keep.clone())
    masks.append(keep.clone())  # temperature keeps what it is given
    return masks


def test_kept_ids_are_what_each_stage_left_recomputed_by_hand():
    model = tiny_model(num_tokens=97).eval()
    with torch.no_grad():
        model.net.to_logits.weight.mul_(12)  # a peaked distribution, so that every filter cuts
    prompt = torch.tensor([[5, 9, 5, 40, 2, 9]])
    steps = list(model.stream(prompt, 6, trace=True, seed=0, **SETTINGS))
    out = torch.cat([prompt[0], torch.stack([s.tokens[0] for s in steps])])
    for step in steps:
        t, n = step.trace, prompt.shape[1] + step.step
        assert t.stages == ["model", "repetition_penalty", "top_k", "min_p", "top_p", "temperature"]
        assert 97 > int(t.kept[2][0]) > int(t.kept[3][0]) > int(t.kept[4][0]) or int(t.kept[3][0]) == 1
        with torch.no_grad():
            logits = model.net(out[None, :n])[0, -1]
        model_probs = logits.softmax(dim=-1)
        row = t.row(0, kept_ids=True)
        for j, (stage, mask) in enumerate(zip(t.stages, by_hand(logits, out[:n].tolist()))):
            ids = t.kept_ids(stage)
            assert sorted(ids) == mask.nonzero()[:, 0].tolist(), (step.step, stage)
            assert ids == t.kept_ids(j) == row["kept_ids"][stage]
            assert len(ids) == row["kept"][stage] == int(t.kept[j][0])
            # most likely under the model first
            assert all(model_probs[a] >= model_probs[b] for a, b in zip(ids, ids[1:]))
            assert row["mass"][stage] == pytest.approx(min(1.0, float(model_probs[mask].sum())), abs=1e-6)
        assert int(step.tokens[0]) in t.kept_ids("temperature")
        # a stage that removed nothing shares the mask before it rather than copying it
        assert t.kept_mask[1] is t.kept_mask[0] and t.kept_mask[-1] is t.kept_mask[-2]


def test_kept_ids_by_row_and_bad_stages():
    model = tiny_model(num_tokens=97).eval()
    prompts = torch.tensor([[1, 2, 3], [50, 60, 70]])
    step = next(iter(model.stream(prompts, 1, trace=True, seed=0, filter_logits_fn="top_k",
                                  filter_kwargs=dict(k=5))))
    with torch.no_grad():
        logits = model.net(prompts)[:, -1]
    for i in range(2):
        assert step.trace.kept_ids("top_k", i) == logits[i].topk(5).indices.tolist()
        assert step.trace.kept_ids("model", i) == logits[i].argsort(descending=True, stable=True).tolist()
    assert "kept_ids" not in step.trace.row(0)
    for bad in ("top_p", 3, -4, 1.0, True):
        with pytest.raises(ValueError, match="stage"):
            step.trace.kept_ids(bad)


def test_row_shows_masses_at_most_one_and_no_negative_zero():
    trace = StepTrace(step=0, candidates=torch.tensor([[0, 1]]))
    trace.record("model", torch.tensor([[0.0, -math.inf, -math.inf]]))  # one token: entropy -0.0 in float
    assert math.copysign(1.0, float(trace.entropy[0][0])) == -1.0  # what the row must not show
    trace.mass[0] = torch.tensor([1.0000018])  # float rounding of a sum of probabilities
    trace.probs[0] = torch.tensor([[1.0000002, 0.0]])
    trace.chosen, trace.chosen_rank, trace.chosen_prob = torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0000001])
    row = trace.row(0)
    assert row["mass"]["model"] == 1.0 and row["probs"]["model"] == [1.0, 0.0] and row["chosen_prob"] == 1.0
    assert row["entropy"]["model"] == 0.0 and math.copysign(1.0, row["entropy"]["model"]) == 1.0
    # on a real run too
    model = tiny_model(num_tokens=97).eval()
    for step in model.stream(torch.tensor([[1, 2, 3]]), 4, trace=True, seed=0, filter_logits_fn="top_k",
                             filter_kwargs=dict(k=1)):
        row = step.trace.row(0)
        assert all(0.0 <= m <= 1.0 for m in row["mass"].values())
        assert all(math.copysign(1.0, h) == 1.0 for h in row["entropy"].values())
        assert row["entropy"]["top_k"] == 0.0


def test_generate_and_beam_search_point_to_stream_for_a_trace():
    model = tiny_model(num_tokens=97).eval()
    prompt = torch.tensor([[1, 2, 3]])
    for call in (lambda: model.generate(prompt, 3, trace=True),
                 lambda: model.generate(prompt, 3, GenerationConfig(trace=True)),
                 lambda: model.generate(prompt, 3, beams=2, trace=True),
                 lambda: model.beam_search(prompt, 3, trace=True)):
        with pytest.raises(ValueError, match=r"stream\(\.\.\., trace=True\)"):
            call()
    # the same settings without the trace run, and stream records it
    assert model.generate(prompt, 3, GenerationConfig(trace=True), trace=False).shape == (1, 6)
    assert next(iter(model.stream(prompt, 3, trace=True))).trace is not None


def test_a_row_taken_from_a_batch_shows_what_the_batch_shows_for_that_row():
    """`take_row` (runs drawing together, axw.sampling.Together): each taken row's `row(0)` equals the batch's
    `row(i)`, whether it reads the batch's lists converted once or its own numbers (after a property was read, or
    a stage recorded on the batch since), and its tensors are the batch's row."""
    from axw.trace import new_trace

    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    batch = new_trace(4, logits, 5)
    batch.record("temperature", logits / 0.7)
    cut = (logits / 0.7).masked_fill(logits < 0, -math.inf)
    batch.record("cut", cut)
    batch.choose(torch.tensor([3, 1, 4]), logits, cut)
    rows = [batch.take_row(i, 7) for i in range(3)]
    wanted = [dict(batch.row(i), step=7) for i in range(3)]
    assert [r.row(0) for r in rows] == wanted
    assert batch.plain() is not None and batch.plain()["candidates"] == batch.candidates.tolist()
    assert torch.equal(rows[1].probs[2], batch.probs[2][1:2]) and torch.equal(rows[2].candidates, batch.candidates[2:])
    assert rows[1].row(0) == wanted[1]  # its own numbers now (the property read above took them)
    batch.record("again", cut - 1.0)  # the batch's lists are made again for rows taken after this
    again = batch.take_row(0, 7).row(0)
    assert again == dict(batch.row(0), step=7) and again["stages"][-1] == "again" and len(again["kept"]) == 4
