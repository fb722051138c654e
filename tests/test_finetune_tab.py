"""The Fine-tune tab's training: the held-out slice of the visitor's text and its curve (scored by the training
loop's own evaluation), continuing a fine-tuned copy or starting over, and the refusals before any compute."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402

import playground as pg  # noqa: E402
from axw.train import random_windows, step_generator  # noqa: E402
from playground.finetune import CONTINUE, START_OVER, FineTune, split_heldout  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 30
QUIET = dict(progress=lambda *a, **k: None)


def finetune(app, session, steps, start_from=START_OVER, seed=0, context=32, lr=3e-3, text=TEXT):
    """The Fine-tune button's handler run to its end: (its last plot frame, its last status)."""
    *_, (frame, status) = app.finetune_ui("", text, None, steps, lr, 4, context, 0.0, seed,
                                          SimpleNamespace(session_hash=session), start_from=start_from, **QUIET)
    return frame.dropna(), status  # a curve with no point yet has a row without a loss


def test_the_last_tenth_is_held_out_when_it_holds_a_window():
    ids = torch.arange(1000)
    train_ids, heldout, why = split_heldout(ids, 64)
    assert why is None and torch.equal(train_ids, ids[:900]) and torch.equal(heldout, ids[900:])
    # 650 tokens: the last 65 are exactly one window of 64 + 1
    train_ids, heldout, why = split_heldout(torch.arange(650), 64)
    assert (train_ids.numel(), heldout.numel(), why) == (585, 65, None)
    assert torch.equal(heldout, torch.arange(585, 650))
    # 649 tokens: the last tenth (64) is one short of a window: all of it trains, and the visitor is told why
    train_ids, heldout, why = split_heldout(torch.arange(649), 64)
    assert heldout is None and torch.equal(train_ids, torch.arange(649))
    assert "no held-out curve" in why and "64 tokens" in why and "65" in why and "650" in why


def heldout_nll(model, ids, context):
    """Mean next-token NLL of `ids` cut into windows of context + 1 tokens that share one token (the last one
    shorter), recomputed here one window at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, context):
            window = ids[start:start + context + 1]
            logits = model.net(window[None, :-1])[0]
            total += F.cross_entropy(logits, window[1:], reduction="sum").item()
            count += window.numel() - 1
    return total / count


def test_the_heldout_curve_is_the_models_loss_on_the_heldout_tokens_every_tenth_of_the_run(app, monkeypatch):
    base = app.models.get(app.model_name)
    context, steps = 32, 20
    # each evaluation scores the first HELDOUT_EVAL_TOKENS held-out tokens: here 40, a window and a shorter one
    monkeypatch.setattr(pg.finetune, "HELDOUT_EVAL_TOKENS", 40)
    run, why = app._finetune_run("", TEXT, steps, 3e-3, 4, context, 0.0, 0, "curves")
    ids = torch.tensor(base.tokenizer.encode(TEXT).ids)
    held = ids.numel() // 10
    assert why is None and held >= context + 1
    assert torch.equal(run.heldout_ids, ids[-held:]) and torch.equal(run.train_ids, ids[:-held])
    # the weights at each evaluation, taken in the training thread when the loop reports that step
    snapshots, record = {}, FineTune._record

    def keep(self, r):
        if "heldout_loss" in r:
            snapshots[r["step"]] = copy.deepcopy(self.model).eval()
        record(self, r)

    monkeypatch.setattr(FineTune, "_record", keep)
    assert run.heldout_ids.numel() > 41
    heldout_ids = run.heldout_ids[:41]
    list(run.run(poll=0.01))
    train_curve, heldout_curve = pg.finetune.loss_curves(run.history)
    assert [s for s, _ in train_curve] == list(range(1, steps + 1))
    assert [s for s, _ in heldout_curve] == list(range(0, steps + 1, 2)) == sorted(snapshots)
    for step, loss in heldout_curve:
        assert loss == pytest.approx(heldout_nll(snapshots[step], heldout_ids, context), rel=1e-5)
    # it starts at the base model's loss, and it moved
    assert heldout_curve[0][1] == pytest.approx(heldout_nll(base, heldout_ids, context), rel=1e-5)
    assert heldout_curve[0][1] != pytest.approx(heldout_curve[-1][1], rel=1e-3)
    assert run.model.training is False


def test_the_api_reports_the_heldout_losses(app):
    report = app.finetune_api(TEXT, steps=10, learning_rate=3e-3, batch_size=4, context_length=32,
                              request=SimpleNamespace(session_hash="api-curves"))
    assert report["steps"] == 10 and len(report["losses"]) == 10 and report["loss"] == report["losses"][-1]
    assert [s for s, _ in report["val_losses"]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    short = app.finetune_api(TEXT[:300], steps=2, batch_size=2, context_length=32,
                             request=SimpleNamespace(session_hash="api-short"))
    assert short["val_losses"] == [] and len(short["losses"]) == 2


def test_continuing_trains_the_copy_further_and_starting_over_trains_the_base_model(app):
    base = app.models.get(app.model_name)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    frame, status = finetune(app, "again", 5)
    assert "**done**: trained from the base model, 5 steps" in status and "held-out loss" in status
    first = app.sessions.get("again")
    copy_before = {k: v.clone() for k, v in first.model.state_dict().items()}

    frame, status = finetune(app, "again", 3, CONTINUE, seed=1)
    assert "continued your fine-tuned copy: now 8 steps in all (3 more" in status
    run = app.sessions.get("again")
    assert run is not first and run.start_step == 5 and run.steps == 8
    training = frame[frame.curve == "training"]
    assert list(training.step) == list(range(1, 9))  # the curve numbers on from the earlier run
    assert set(frame[frame.curve == "held-out"].step) >= {5, 8}
    # its first step started from the copy's weights: recompute that step's loss (the batch the loop draws at
    # its step 0 with seed 1) on the copy as it was, and on the base model, which it is not
    train_ids = split_heldout(torch.tensor(base.tokenizer.encode(TEXT).ids), 32)[0]
    batch = random_windows(train_ids, 4, 33, step_generator(1, 0, 0))
    was = copy.deepcopy(first.model).train()
    with torch.no_grad():
        want = was(batch).item()
        other = copy.deepcopy(base).float().train()(batch).item()
    assert training.loss.iloc[5] == pytest.approx(want, rel=1e-5) and want != pytest.approx(other, rel=1e-3)
    # the copy it continued is untouched (it trained a copy of it), and so is the shared model
    assert all(torch.equal(copy_before[k], v) for k, v in first.model.state_dict().items())
    assert all(torch.equal(base_before[k], v) for k, v in base.state_dict().items())
    assert not all(torch.equal(copy_before[k], v) for k, v in run.model.state_dict().items())

    frame, status = finetune(app, "again", 2)
    assert "**done**: started over from the base model, 2 steps" in status
    assert list(frame[frame.curve == "training"].step) == [1, 2]
    assert app.sessions.get("again").start_step == 0


def test_continuing_without_a_copy_is_refused_before_any_compute_and_a_failed_continue_keeps_the_copy(
        app, monkeypatch):
    calls, real = [], pg.finetune.train
    monkeypatch.setattr(pg.finetune, "train", lambda *a, **k: calls.append(1))
    with pytest.raises(gr.Error, match="no fine-tuned copy to continue: you have not fine-tuned one yet"):
        finetune(app, "nobody", 3, CONTINUE)
    with pytest.raises(gr.Error, match="start from must be one of"):
        finetune(app, "nobody", 3, "the moon")
    with pytest.raises(ValueError, match="no fine-tuned copy to continue"):
        app._finetune_run("", TEXT, 3, 1e-3, 2, 16, 0.0, 0, "nobody", CONTINUE)
    assert calls == [] and app.sessions.get("nobody") is None

    monkeypatch.setattr(pg.finetune, "train", real)
    finetune(app, "keeper", 2)
    kept = app.sessions.get("keeper")

    def failing(*a, **k):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(pg.finetune, "train", failing)
    with pytest.raises(gr.Error, match="the disk caught fire; your fine-tuned copy is as it was before"):
        finetune(app, "keeper", 2, CONTINUE)
    assert app.sessions.get("keeper") is kept and app.model("", True, "keeper") is kept.model
