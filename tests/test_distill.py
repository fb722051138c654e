"""Distillation in the trainer: the KL loss against a hand computation, the
loss the loop optimises, the teacher's vocabulary check, generated windows in
the batch, the teacher left as it was, and bit-exact resume with a teacher."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_train import Recorder, forbid_tokenizer_training, periodic_ids, quick_config, snapshot

from axw import AutoregressiveWrapper
from axw.data import eos_id, train_tokenizer
from axw.loss import distillation_loss
from axw.train import main, random_windows, step_generator, train

ROOT = Path(__file__).resolve().parent.parent


def hand_kl(student, teacher, temperature):
    """T^2 * mean over positions of sum_v p(v) (log p(v) - log q(v)), p and q
    the softmaxes of teacher and student logits / T, in plain Python floats."""
    total, count = 0.0, 0
    for s_row, t_row in zip(student.reshape(-1, student.shape[-1]).tolist(),
                            teacher.reshape(-1, teacher.shape[-1]).tolist()):
        zs = sum(math.exp(x / temperature) for x in s_row)
        zt = sum(math.exp(x / temperature) for x in t_row)
        for s, t in zip(s_row, t_row):
            p, q = math.exp(t / temperature) / zt, math.exp(s / temperature) / zs
            total += p * (math.log(p) - math.log(q))
        count += 1
    return temperature ** 2 * total / count


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
def test_distillation_loss_matches_a_hand_computation(temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 7, generator=g) * 2, torch.randn(2, 3, 7, generator=g) * 2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(
        hand_kl(student, teacher, temperature), rel=1e-5)
    assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # KL(teacher || student), not the reverse: the two differ on these logits
    assert hand_kl(teacher, student, temperature) != pytest.approx(hand_kl(student, teacher, temperature), rel=1e-3)


def test_the_loop_optimises_alpha_kl_plus_the_rest_cross_entropy():
    student, teacher = tiny_model(seed=0), tiny_model(seed=1, depth=1)
    ids = periodic_ids()
    config = quick_config(steps=1, warmup_steps=1, batch_size=4, seq_len=16, distill_alpha=0.3,
                          distill_temperature=2.0)
    # recompute the first step's loss from the batch the trainer draws, before it changes the weights
    batch = random_windows(ids, 4, 17, step_generator(config.seed, 0, 0))
    with torch.no_grad():
        logits, teacher_logits = student.net(batch[:, :-1]), teacher.net(batch[:, :-1])
    kl = hand_kl(logits, teacher_logits, 2.0)
    ce = F.cross_entropy(logits.reshape(-1, 97), batch[:, 1:].reshape(-1)).item()
    records = []
    train(student, ids, None, config, callback=records.append, teacher=teacher)
    assert records[0]["kl"] == pytest.approx(kl, rel=1e-4)
    assert records[0]["loss"] == pytest.approx(0.3 * kl + 0.7 * ce, rel=1e-4)


def test_distillation_pulls_the_student_to_the_teacher():
    ids, held = periodic_ids(), periodic_ids(seed=0, length=33)
    teacher = tiny_model(seed=1)
    train(teacher, ids, None, quick_config())  # learns the period
    student = tiny_model(seed=2, depth=1)

    def agreement():
        with torch.no_grad():
            return (student.net(held[None, :-1]).argmax(-1) == teacher.net(held[None, :-1]).argmax(-1)).float().mean()

    before = agreement().item()
    result = train(student, ids, held, quick_config(steps=80), teacher=teacher)
    # the trainer's figure is the share of held-out positions where the two argmaxes agree, recomputed here
    assert result.heldout_agreement == pytest.approx(agreement().item())
    assert before < 0.3 and result.heldout_agreement > 0.9


def test_the_teacher_runs_in_eval_mode_without_gradients_and_is_left_as_it_was():
    teacher = tiny_model(seed=1, attn_dropout=0.5, ff_dropout=0.5)  # dropout would make its logits random
    teacher.train()
    weights = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    modes = []
    teacher.net.register_forward_hook(lambda net, args, out: modes.append((net.training, torch.is_grad_enabled())))
    train(tiny_model(), periodic_ids(), None, quick_config(steps=3, warmup_steps=1), teacher=teacher)
    assert modes == [(False, False)] * 3
    assert teacher.training and all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in teacher.net.state_dict().items())


def small_tokenizer(text_seed=0):
    text = (ROOT / "assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")[text_seed * 30000:][:30000]
    return train_tokenizer(text, 300)


def test_a_teacher_on_another_vocabulary_is_refused_before_any_compute():
    first = student = tiny_model()
    weights = student.net.token_emb.weight.clone()
    cases = [
        (dict(), tiny_model(num_tokens=98), "vocabulary \\(98 tokens\\) differs"),
        (dict(), tiny_model(max_seq_len=16), "exceeds the teacher's max_seq_len \\(16\\)"),
        (dict(), "a path", "teacher must be an AutoregressiveWrapper"),
        (dict(distill_temperature=0.0), tiny_model(), "distill_temperature"),
        (dict(distill_alpha=1.5), tiny_model(), "distill_alpha"),
        (dict(distill_alpha=0.5), None, "need a teacher"),
    ]
    for kwargs, teacher, match in cases:
        with pytest.raises(ValueError, match=match):
            train(student, periodic_ids(), None, quick_config(**kwargs), teacher=teacher)
    # the same vocabulary size but another tokenizer: other token ids
    student, teacher = tiny_model(num_tokens=300), tiny_model(num_tokens=300)
    student.tokenizer, teacher.tokenizer = small_tokenizer(0), small_tokenizer(1)
    assert student.tokenizer.get_vocab_size() == teacher.tokenizer.get_vocab_size() == 300
    with pytest.raises(ValueError, match="tokenizer differs from the teacher's"):
        train(student, periodic_ids(vocab=300), None, quick_config(), teacher=teacher)
    assert torch.equal(first.net.token_emb.weight, weights)


def test_generated_windows_make_up_their_share_of_each_batch():
    torch.manual_seed(0)
    model = Recorder(tiny_model().net)
    train_ids = torch.randint(0, 50, (500,))
    generated = torch.randint(50, 97, (10, 40))
    train(model, train_ids, None, quick_config(steps=5, warmup_steps=1, batch_size=8, generated_fraction=0.25),
          generated=generated)
    rows = {tuple(generated[r, o:o + 33].tolist()) for r in range(10) for o in range(8)}
    for batch in model.batches:
        assert batch.shape == (8, 33) and batch[:6].max() < 50
        assert all(tuple(window.tolist()) in rows for window in batch[6:])
    for kwargs, windows, match in [
        (dict(generated_fraction=0.5), None, "go together"),
        (dict(), generated, "go together"),
        (dict(generated_fraction=0.5), generated[:, :32], "at least seq_len \\+ 1 = 33"),
        (dict(generated_fraction=0.5), generated + 50, "outside the vocabulary"),
        (dict(generated_fraction=0.5), generated[0], "2-D long"),
    ]:
        with pytest.raises(ValueError, match=match):
            train(tiny_model(), train_ids, None, quick_config(**kwargs), generated=windows)


def test_resume_with_a_teacher_continues_exactly(tmp_path):
    kwargs = dict(attn_dropout=0.1, ff_dropout=0.1)
    config = dict(steps=12, eval_every=4, distill_alpha=0.5, distill_temperature=2.0, generated_fraction=0.25)
    ids, held = periodic_ids(), periodic_ids(seed=1, length=200)
    generated = periodic_ids(seed=2, length=400).reshape(10, 40)
    teacher = tiny_model(seed=7, depth=1)

    straight = tiny_model(seed=0, **kwargs)
    train(straight, ids, held, quick_config(**config), teacher=teacher, generated=generated)

    first = tiny_model(seed=0, **kwargs)
    calls = iter(range(100))
    out = tmp_path / "ckpt"
    half = train(first, ids, held, quick_config(**config, out_dir=str(out)), should_stop=lambda: next(calls) >= 5,
                 teacher=teacher, generated=generated)
    assert half.step == 5
    resumed = AutoregressiveWrapper.from_pretrained(out)
    result = train(resumed, ids, held, quick_config(**config), resume=out, teacher=teacher, generated=generated)
    assert result.step == 12
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name


def teacher_folder(tmp_path):
    tokenizer = small_tokenizer()
    teacher = tiny_model(num_tokens=300, max_seq_len=32, rotary=True, depth=1)
    teacher.tokenizer, teacher.eos_token_id = tokenizer, eos_id(tokenizer)
    return teacher.save_pretrained(tmp_path / "teacher")


def test_cli_distils_with_the_teachers_tokenizer_and_resumes_with_the_same_teacher(tmp_path, monkeypatch):
    forbid_tokenizer_training(monkeypatch, "with --teacher the teacher's tokenizer is used")
    teacher = teacher_folder(tmp_path)
    data = tmp_path / "t.txt"
    data.write_text((ROOT / "assets/data/tinyshakespeare.txt").read_text(encoding="utf-8")[:20000], encoding="utf-8")
    out = tmp_path / "m"
    common = ["--data", str(data), "--out", str(out), "--threads", "1"]
    model_args = ["--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "16", "--steps", "3",
                  "--warmup-steps", "1", "--batch-size", "2", "--eval-tokens", "200"]
    main([*common, *model_args, "--teacher", str(teacher), "--distill-alpha", "0.5", "--distill-temperature", "2"])
    assert (out / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    state = json.loads((out / "training" / "state.json").read_text())
    assert state["teacher"] == str(teacher) and state["config"]["distill_alpha"] == 0.5
    assert "kl" in state["history"][-1] and "heldout_agreement" in state["history"][-1]
    assert f"Distilled from `{teacher}`" in (out / "README.md").read_text()

    # the resumed run reads the teacher again from the recorded path
    result = main([*common, "--resume", "--steps", "5"])
    state = json.loads((out / "training" / "state.json").read_text())
    assert result.step == 5 and state["teacher"] == str(teacher) and "kl" in state["history"][-1]
    assert result.heldout_agreement == state["history"][-1]["heldout_agreement"]

    # mismatches are refused before any work, and nothing is written
    other = tmp_path / "other.json"
    small_tokenizer(1).save(str(other))
    fresh = tmp_path / "fresh"
    before = snapshot(out)
    for extra, match in [
        (["--teacher", str(teacher), "--vocab-size", "400"], "differs from the teacher's vocabulary \\(300\\)"),
        (["--teacher", str(teacher), "--tokenizer", str(other)], "differs from the teacher's tokenizer"),
        (["--teacher", str(tmp_path / "nowhere")], "is not a model folder"),
        (["--distill-alpha", "0.5"], "need a --teacher"),
        (["--teacher", str(teacher), "--generated-fraction", "0.5"], "go together"),
    ]:
        with pytest.raises(ValueError, match=match):
            main(["--data", str(data), "--out", str(fresh), *model_args, *extra])
        assert not fresh.exists()
    assert snapshot(out) == before
