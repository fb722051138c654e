"""The training loop: it learns, resumes bit-exactly, stops on request, keeps
the held-out split out of training, follows its LR formula and refuses bad
arguments before any compute."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from axw import AutoregressiveWrapper
from axw.data import EOS_TOKEN, encode_split, load_split, split_text, train_tokenizer
from axw.train import TrainConfig, evaluate, lr_at, main, train

ROOT = Path(__file__).resolve().parent.parent


def periodic_ids(period=17, length=3000, vocab=97, seed=0):
    """A random block of `period` tokens repeated: learnable by attending back."""
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(0, vocab, (period,), generator=g)
    return block.repeat(length // period + 1)[:length]


def quick_config(**kwargs):
    base = dict(steps=60, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, eval_every=0)
    return TrainConfig(**{**base, **kwargs})


def test_loss_goes_down():
    model = tiny_model()
    ids = periodic_ids()
    before, count = evaluate(model, ids[:600], seq_len=32)
    # an untrained net is near uniform: ln(97) nats per token, by hand
    assert before / count == pytest.approx(math.log(97), abs=0.1)
    result = train(model, ids, ids[:600], quick_config())
    assert result.heldout_loss < 0.25 * math.log(97)
    assert result.step == 60 and not result.stopped


def test_evaluate_matches_the_wrappers_loss():
    model = tiny_model().eval()
    ids = torch.randint(0, 97, (100,), generator=torch.Generator().manual_seed(1))
    total, count = evaluate(model, ids, seq_len=32, batch_size=2)
    # recompute: windows [0:33], [32:65], [64:97], [96:100], each scored by the wrapper's mean loss
    with torch.no_grad():
        expect = sum(float(model(ids[s:s + 33][None])) * (min(s + 33, 100) - s - 1) for s in (0, 32, 64, 96))
    assert count == 99
    assert total == pytest.approx(expect, rel=1e-5)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    # dropout and masking both draw random numbers: the resumed run must draw the same ones
    kwargs = dict(attn_dropout=0.1, ff_dropout=0.1)
    config = dict(steps=20, eval_every=5, mask_prob=0.2, weight_decay=0.1)
    ids, held = periodic_ids(), periodic_ids(seed=1, length=200)

    torch.manual_seed(123)
    straight = tiny_model(seed=0, **kwargs)
    train(straight, ids, held, quick_config(**config))

    torch.manual_seed(123)
    first = tiny_model(seed=0, **kwargs)
    calls = iter(range(100))
    out = tmp_path / "ckpt"
    half = train(first, ids, held, quick_config(**config, out_dir=str(out)), should_stop=lambda: next(calls) >= 10)
    assert half.step == 10 and half.stopped

    torch.manual_seed(999)  # the checkpoint, not the caller's RNG, decides what comes next
    resumed = AutoregressiveWrapper.from_pretrained(out)
    assert not torch.equal(resumed.net.token_emb.weight, straight.net.token_emb.weight)
    result = train(resumed, ids, held, quick_config(**config), resume=out)
    assert result.step == 20
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name


def test_stop_hook_stops_and_saves(tmp_path):
    model = tiny_model()
    records = []
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 3

    result = train(model, periodic_ids(), periodic_ids(length=100), quick_config(out_dir=str(tmp_path / "m")),
                   callback=records.append, should_stop=should_stop)
    assert result.stopped and result.step == 3
    assert [r["step"] for r in records] == [1, 2, 3, 3]  # three steps, then the held-out score at the stop
    assert "heldout_loss" in records[-1]
    assert json.loads((tmp_path / "m" / "training" / "state.json").read_text())["step"] == 3
    AutoregressiveWrapper.from_pretrained(tmp_path / "m")


def test_callback_reports_progress():
    records = []
    train(tiny_model(), periodic_ids(), periodic_ids(length=100), quick_config(steps=6, eval_every=3),
          callback=records.append)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [("heldout_loss" in r) for r in records] == [False, False, True, False, False, True]
    for r in records:
        assert r["loss"] > 0 and r["tokens_per_s"] > 0 and r["steps"] == 6


def test_lr_schedule_matches_its_formula():
    config = TrainConfig(steps=111, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    # warmup: lr * (step + 1) / 10
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(4, config) == pytest.approx(5e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    # cosine over steps 10..110: peak, halfway (mean of the ends), floor
    assert lr_at(10, config) == pytest.approx(1e-3)
    assert lr_at(60, config) == pytest.approx(5.5e-4)
    assert lr_at(35, config) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr_at(110, config) == pytest.approx(1e-4)
    assert TrainConfig(lr=2e-3).resolved_min_lr() == pytest.approx(2e-4)


def test_the_optimizer_gets_the_scheduled_lr():
    config = quick_config(steps=8, warmup_steps=4, min_lr=0.0)
    seen = []
    model = tiny_model()
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        train(model, periodic_ids(), None, config)
    finally:
        torch.optim.AdamW.step = original
    assert seen == pytest.approx([lr_at(s, config) for s in range(8)])
    assert seen[3] == pytest.approx(3e-3) and seen[-1] == pytest.approx(0.0)


def test_split_is_the_last_tenth():
    assert split_text("abcdefghij") == ("abcdefghi", "j")
    assert split_text("a" * 25) == ("a" * 23, "a" * 2)  # int(2.5) characters held out
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")
    train_text, heldout = split_text(text)
    assert train_text + heldout == text
    assert len(heldout) == len(text) // 10


def test_load_split_encodes_exactly_the_split(tmp_path):
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    train_text, heldout = split_text(text)
    tokenizer = train_tokenizer(train_text, 300)
    train_ids, heldout_ids, heldout_text = load_split(path, tokenizer)
    assert heldout_text == heldout
    same = encode_split(text, tokenizer)  # pasted text splits like a file
    assert torch.equal(same[0], train_ids) and torch.equal(same[1], heldout_ids)
    assert tokenizer.decode(train_ids.tolist()) == train_text
    # held-out ids: end-of-text, then the held-out characters and nothing else
    assert heldout_ids[0] == tokenizer.token_to_id(EOS_TOKEN)
    assert tokenizer.decode(heldout_ids[1:].tolist()) == heldout


class Recorder(AutoregressiveWrapper):
    """Remembers every batch the trainer feeds it."""

    def forward(self, x, **kwargs):
        self.batches = getattr(self, "batches", []) + [x.clone()]
        return super().forward(x, **kwargs)


def test_training_never_sees_heldout_tokens():
    torch.manual_seed(0)
    model = Recorder(tiny_model().net)
    # train on ids < 50, hold out ids >= 50: any held-out token in a batch would show
    train_ids = torch.randint(0, 50, (500,))
    heldout_ids = torch.randint(50, 97, (200,))
    train(model, train_ids, heldout_ids, quick_config(steps=15, eval_every=5))
    seen = torch.cat([b.flatten() for b in model.batches])
    assert len(model.batches) == 15 and seen.numel() == 15 * 8 * 33
    assert seen.max() < 50


def test_cli_trains_its_tokenizer_on_the_training_split_only(tmp_path):
    # the held-out tail repeats a word the training part never has; a
    # tokenizer that saw it would learn a token for it
    text = "the king and the queen went to the tower.\n" * 200 + "zyxwq " * 150
    assert "zyxwq" in split_text(text)[1] and "z" not in split_text(text)[0]
    data = tmp_path / "t.txt"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "m"
    result = main(["--data", str(data), "--out", str(out), "--vocab-size", "300", "--dim", "32", "--depth", "1",
                   "--heads", "2", "--max-seq-len", "32", "--steps", "5", "--warmup-steps", "1",
                   "--batch-size", "4", "--threads", "1"])
    assert result.step == 5 and result.heldout_nats_per_char > 0
    model = AutoregressiveWrapper.from_pretrained(out)
    vocab = model.tokenizer.get_vocab()
    assert not any("zy" in token or "xw" in token or "wq" in token for token in vocab)
    assert any("king" in token for token in vocab)
    assert model.eos_token_id == model.tokenizer.token_to_id(EOS_TOKEN)
    assert model.net.config["use_abs_pos_emb"] is False and model.net.attn_layers.config["rotary_pos_emb"]
    card = (out / "README.md").read_text()
    assert "--vocab-size 300" in card and "nats per character" in card


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(min_lr=1.0), "min_lr"),
    (dict(warmup_steps=100, steps=10), "warmup_steps"),
    (dict(mask_prob=1.0), "mask_prob"),
    (dict(grad_clip=-1.0), "grad_clip"),
    (dict(beta2=1.0), "beta2"),
    (dict(device="tpu"), "device"),
    (dict(seq_len=65), "max_seq_len"),
])
def test_bad_config_raises_before_training(kwargs, match):
    model = tiny_model()
    before = model.net.token_emb.weight.clone()
    with pytest.raises(ValueError, match=match):
        train(model, periodic_ids(), None, quick_config(**kwargs))
    assert torch.equal(model.net.token_emb.weight, before)


def test_bad_data_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="train_ids has 20 tokens"):
        train(model, periodic_ids(length=20), None, quick_config())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        train(model, periodic_ids() + 97, None, quick_config())
    with pytest.raises(ValueError, match="1-D long"):
        train(model, periodic_ids().float(), None, quick_config())


def test_bad_cli_arguments_raise_before_any_work(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("some text " * 100, encoding="utf-8")
    out = tmp_path / "m"
    for argv, match in [
        (["--data", str(tmp_path / "missing.txt")], "not a file"),
        (["--data", str(data), "--steps", "0"], "steps"),
        (["--data", str(data), "--vocab-size", "100"], "vocab_size"),
        (["--data", str(data), "--dim", "30", "--heads", "4"], "divisible"),
        (["--data", str(data), "--dropout", "1.5"], "dropout"),
        (["--data", str(data), "--resume"], "not a training checkpoint"),
    ]:
        with pytest.raises(ValueError, match=match):
            main([*argv, "--out", str(out)])
        assert not out.exists()


def test_cli_resume_goes_on_from_the_checkpoint(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("to be or not to be, that is the question.\n" * 100, encoding="utf-8")
    out = tmp_path / "m"
    common = ["--data", str(data), "--out", str(out), "--threads", "1"]
    main([*common, "--vocab-size", "280", "--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "16",
          "--steps", "4", "--warmup-steps", "1", "--batch-size", "2", "--lr", "1e-3"])
    result = main([*common, "--resume", "--steps", "7"])
    assert result.step == 7
    state = json.loads((out / "training" / "state.json").read_text())
    # the saved settings carry over; only the flag given again changed
    assert state["step"] == 7 and state["config"]["steps"] == 7 and state["config"]["lr"] == 1e-3
    assert len(state["commands"]) == 2 and "--resume" in state["commands"][1]
    card = (out / "README.md").read_text()
    assert "--dim 32" in card and "--resume --steps 7" in card


# --- the trainer never destroys what it did not write ---


def cli_args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--vocab-size", "280", "--dim", "32", "--depth", "1",
            "--heads", "2", "--max-seq-len", "16", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2",
            "--threads", "1", *extra]


def small_data(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("to be or not to be, that is the question.\n" * 100, encoding="utf-8")
    return data


def forbid_tokenizer_training(monkeypatch, why: str):
    """Make training a tokenizer fail with `why`."""
    import axw.data

    def no_tokenizer_training(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(axw.data, "train_tokenizer", no_tokenizer_training)


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_cli_refuses_an_out_folder_it_did_not_write(tmp_path, monkeypatch):
    forbid_tokenizer_training(monkeypatch, "the tokenizer was trained before the folder was checked")
    data = small_data(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a year of notes", encoding="utf-8")
    # a model folder (no training state) is not a checkpoint either
    model_folder = tiny_model().save_pretrained(tmp_path / "model")
    for out in (mine, model_folder):
        before = snapshot(out)
        with pytest.raises(ValueError, match="not empty and is not an axw training checkpoint"):
            main(cli_args(data, out))
        assert snapshot(out) == before
    # a file, not a folder
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="not a folder"):
        main(cli_args(data, tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "x"


def test_train_refuses_an_out_folder_it_did_not_write_before_its_first_step(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a year of notes", encoding="utf-8")
    model = tiny_model()
    weights = model.net.token_emb.weight.clone()
    steps = []
    with pytest.raises(ValueError, match="not empty and is not an axw training checkpoint"):
        train(model, periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(mine)),
              callback=steps.append)
    assert steps == [] and torch.equal(model.net.token_emb.weight, weights)
    assert snapshot(mine) == {"notes.txt": b"a year of notes"}


def test_a_checkpoint_holding_other_files_is_refused(tmp_path):
    out = tmp_path / "m"
    train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(out)))
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "training" / "plot.png").write_bytes(b"png")
    before = snapshot(out)
    with pytest.raises(ValueError, match="notes.txt, training/plot.png, which axw.train did not write"):
        train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(out)))
    assert snapshot(out) == before


def test_an_empty_out_folder_and_a_checkpoint_are_accepted(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(out)))
    assert json.loads((out / "training" / "state.json").read_text())["step"] == 2
    # a fresh run may replace a checkpoint (something the trainer wrote)
    train(tiny_model(seed=1), periodic_ids(), None, quick_config(steps=3, warmup_steps=1, out_dir=str(out)))
    assert json.loads((out / "training" / "state.json").read_text())["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old folder left behind


def test_a_sibling_named_like_the_temp_folder_is_not_the_trainers(tmp_path):
    out = tmp_path / "m"
    for name in ("m.tmp", "m.old"):
        side = tmp_path / name
        side.mkdir()
        (side / "data.csv").write_text("1,2,3", encoding="utf-8")
        with pytest.raises(ValueError, match=f"{name} exists and was not written by axw.train"):
            train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(out)))
        assert snapshot(side) == {"data.csv": b"1,2,3"} and not out.exists()
        side.rename(tmp_path / (name + "-kept"))
    # another run's checkpoint that happens to be called m.tmp is not m's temp folder either
    train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(tmp_path / "m.tmp")))
    before = snapshot(tmp_path / "m.tmp")
    with pytest.raises(ValueError, match="m.tmp exists and was not written by axw.train for"):
        train(tiny_model(), periodic_ids(), None, quick_config(steps=2, warmup_steps=1, out_dir=str(out)))
    assert snapshot(tmp_path / "m.tmp") == before


def test_resume_reads_only_checkpoints(tmp_path):
    data = small_data(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes", encoding="utf-8")
    model_folder = tiny_model().save_pretrained(tmp_path / "model")
    for folder in (mine, model_folder, tmp_path / "missing"):
        before = snapshot(folder) if folder.exists() else None
        with pytest.raises(ValueError, match="not a training checkpoint"):
            main(cli_args(data, folder, "--resume"))
        with pytest.raises(ValueError, match="not a training checkpoint"):
            train(tiny_model(), periodic_ids(), None, quick_config(), resume=folder)
        assert (snapshot(folder) if folder.exists() else None) == before


def test_resume_of_a_finished_run_says_so(tmp_path):
    data = small_data(tmp_path)
    out = tmp_path / "m"
    main(cli_args(data, out))
    before = snapshot(out)
    with pytest.raises(ValueError, match="already finished 2 of 2 steps; raise --steps to train further"):
        main(["--data", str(data), "--out", str(out), "--resume"])
    with pytest.raises(ValueError, match="already finished 2 of 1 steps"):
        main(["--data", str(data), "--out", str(out), "--resume", "--steps", "1"])
    model = AutoregressiveWrapper.from_pretrained(out)
    with pytest.raises(ValueError, match="already finished 2 of 2 steps"):
        train(model, periodic_ids(vocab=280), None, quick_config(steps=2, warmup_steps=1, seq_len=16), resume=out)
    assert snapshot(out) == before
    assert main(["--data", str(data), "--out", str(out), "--resume", "--steps", "3"]).step == 3


class Killed(BaseException):
    """A kill: no `except Exception` in the code under test catches it."""


def kill_at(monkeypatch, k):
    """From here on, count every file-system change (make a folder, open a
    file for writing, write a safetensors file, rename, remove) and die at
    the k-th: before a rename or removal, after a file was created empty.
    Returns the counter list, one name per change seen."""
    import builtins
    import io
    import os
    import shutil

    import axw.hub
    import axw.train_checkpoint

    seen = []

    def tick(name):
        seen.append(name)
        return len(seen) - 1 == k

    def before(name, fn):
        def wrapped(*args, **kwargs):
            if tick(name):
                raise Killed(name)
            return fn(*args, **kwargs)
        return wrapped

    def opening(fn):
        def wrapped(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                if tick(f"open {Path(file).name}"):
                    fn(file, mode, *args, **kwargs).close()  # created or truncated, nothing written
                    raise Killed("open")
            return fn(file, mode, *args, **kwargs)
        return wrapped

    def saving(fn):
        def wrapped(tensors, filename, *args, **kwargs):
            if tick(f"save_file {Path(filename).name}"):
                Path(filename).write_bytes(b"\0" * 10)  # a torn write
                raise Killed("save_file")
            return fn(tensors, filename, *args, **kwargs)
        return wrapped

    for module, name in ((os, "mkdir"), (os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"),
                         (os, "rmdir"), (shutil, "rmtree")):
        monkeypatch.setattr(module, name, before(name, getattr(module, name)))
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", opening(real_open))
    monkeypatch.setattr(io, "open", opening(real_open))
    monkeypatch.setattr(axw.hub, "save_file", saving(axw.hub.save_file))
    monkeypatch.setattr(axw.train_checkpoint, "save_file", saving(axw.train_checkpoint.save_file))
    return seen


@pytest.mark.parametrize("old_has_marker", [True, False])
def test_a_save_killed_at_any_change_leaves_a_whole_checkpoint(tmp_path, old_has_marker):
    import shutil

    from axw.train import load_checkpoint, make_optimizer, read_trainer_state, save_checkpoint

    config = quick_config()

    def stepped(model, optimizer, steps):
        for s in range(steps):
            loss = model(periodic_ids(length=40, seed=s)[None])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    def state_of(model, optimizer):
        moments = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.net.parameters()]
        return {k: v.clone() for k, v in model.net.state_dict().items()}, moments

    model = tiny_model()
    optimizer = make_optimizer(model, config)
    stepped(model, optimizer, 1)
    template = tmp_path / "template" / "ckpt"
    save_checkpoint(template, model, optimizer, 1, config, [{"step": 1}])
    if not old_has_marker:  # as checkpoints written before the marker existed
        (template / "training" / "checkpoint.json").unlink()
    expect = {1: state_of(model, optimizer)}
    stepped(model, optimizer, 1)
    expect[2] = state_of(model, optimizer)

    def check(folder):
        fresh = tiny_model(seed=5)
        fresh_optimizer = make_optimizer(fresh, config)
        state = load_checkpoint(folder, fresh, fresh_optimizer)
        weights, moments = expect[state["step"]]
        for name, value in fresh.net.state_dict().items():
            assert torch.equal(value, weights[name]), name
        for p, m in zip(fresh.net.parameters(), moments):
            assert set(fresh_optimizer.state[p]) == set(m)
            assert all(torch.equal(fresh_optimizer.state[p][k], v) for k, v in m.items())
        assert state["history"] == [{"step": s} for s in range(1, state["step"] + 1)]
        return state["step"]

    k, outcomes = 0, []
    while True:
        case = tmp_path / f"case{k}"
        folder = case / "ckpt"
        shutil.copytree(template.parent, case)
        with pytest.MonkeyPatch.context() as mp:
            seen = kill_at(mp, k)
            try:
                save_checkpoint(folder, model, optimizer, 2, config, [{"step": 1}, {"step": 2}])
                finished = True
            except Killed:
                finished = False
        # a kill while recovering from the kill must not lose it either
        j = 0
        while True:
            with pytest.MonkeyPatch.context() as mp:
                kill_at(mp, j)
                try:
                    read_trainer_state(folder)
                    break
                except Killed:
                    j += 1
        outcomes.append(check(folder))
        assert sorted(p.name for p in case.iterdir()) == ["ckpt"], seen
        if finished:
            break
        k += 1
    # every change was a place to die; the old checkpoint survives the early ones, the new one the late ones
    assert k == len(seen) >= 10
    assert outcomes[0] == 1 and outcomes[-1] == 2 and outcomes == sorted(outcomes)
    assert any(name.startswith("save_file") for name in seen) and seen.count("replace") >= 2


def test_a_checkpoint_of_a_model_with_generation_settings_is_replaced(tmp_path):
    """save_pretrained writes generation_config.json when the model carries
    one: the trainer's own file, which the next save replaces."""
    from axw import GenerationConfig

    model = tiny_model(rotary=True)
    model.generation_config = GenerationConfig(temperature=0.5)
    config = quick_config(steps=2, batch_size=2, seq_len=16, warmup_steps=1, checkpoint_every=1,
                          out_dir=str(tmp_path / "run"))
    train(model, periodic_ids(length=400), None, config)
    assert (tmp_path / "run" / "generation_config.json").is_file()
    assert AutoregressiveWrapper.from_pretrained(tmp_path / "run").generation_config == model.generation_config
