"""Shared forwards (axw.shared): runs in flight decode together, each getting the bits it gets alone."""

import copy
import threading
import time
from dataclasses import replace

import pytest
import torch

import axw
import playground as pg
from axw import SharedForwards
from axw.shared import Lockstep
from conftest import tiny_model
from playground import runs as R

ARCHITECTURES = [
    dict(rotary=True),
    dict(rotary=True, attn_kv_heads=2),
    dict(rotary=True, ff_glu=True, ff_swish=True),
    dict(rotary=True, attn_qk_norm="head", attn_qkv_bias=True, use_rmsnorm=True),
    dict(rotary=True, attn_qk_norm="full", attn_bias=True),
    dict(rotary=True, attn_softcap=20.0, post_branch_norm=True, norm_unit_offset=True, use_rmsnorm=True),
    dict(rotary=True, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
         rotary_emb_base_local=500.0),
    dict(rotary=True, nope_layers=[1]),
    dict(rotary=False),  # absolute positions
]


@pytest.mark.parametrize("options", ARCHITECTURES, ids=lambda o: ",".join(o))
def test_decode_rows_gives_each_run_the_bits_of_its_own_decode(options):
    """Runs of different lengths (one left-padded, one with three rows like beams), stepped together and alone
    through copies of the same caches: every step's hidden states are equal bit for bit, for all the runs and
    for a few of them."""
    torch.manual_seed(0)
    net = tiny_model(dim=64, depth=2, heads=4, **options).net.eval()
    rows, lengths = [1, 1, 3, 1, 2], [3, 9, 5, 12, 4]
    alone = [net.new_cache(40) for _ in rows]
    together = [net.new_cache(40) for _ in rows]
    with torch.no_grad():
        for i, (b, n) in enumerate(zip(rows, lengths)):
            prompt = torch.randint(0, net.num_tokens, (b, n))
            if i == 4:  # left padding: the first row's prompt starts 2 tokens in
                alone[i].seq_start_pos, together[i].seq_start_pos = torch.tensor([2, 0]), torch.tensor([2, 0])
            net.decode(prompt, alone[i])
            net.decode(prompt, together[i])
        for step in range(10):  # past the sliding window
            runs = range(len(rows)) if step % 3 else [0, 2, 3]
            tokens = [torch.randint(0, net.num_tokens, (rows[i], 1)) for i in runs]
            expected = [net.decode(t, alone[i]) for t, i in zip(tokens, runs)]
            got = net.decode_rows(tokens, [together[i] for i in runs])
            for e, g in zip(expected, got):
                assert torch.equal(e, g)


def test_runs_of_several_rows_share_one_product_of_the_weights_and_keep_their_bits(bundled):
    """Beams of several runs (rows 2 to 4 each) through the bundled model, whose matrices take oneDNN's
    column-major copy for a few rows: each Linear computes every run's rows in one product where that gives each
    run its own bits (checked on the first call), and every step equals each run's decode alone, bit for bit."""
    from axw.kernels import Linear

    net = bundled[0].net
    rows = [2, 4, 3]
    alone, together = [net.new_cache(64) for _ in rows], [net.new_cache(64) for _ in rows]
    torch.manual_seed(1)
    with torch.no_grad():
        for i, b in enumerate(rows):
            prompt = torch.randint(0, net.num_tokens, (b, 5 + 2 * i))
            net.decode(prompt, alone[i])
            net.decode(prompt, together[i])
        for step in range(6):
            tokens = [torch.randint(0, net.num_tokens, (b, 1)) for b in rows]
            expected = [net.decode(t, cache) for t, cache in zip(tokens, alone)]
            for e, g in zip(expected, net.decode_rows(tokens, together)):
                assert torch.equal(e, g)
    checked = [m._batched_exact for m in net.modules() if isinstance(m, Linear) and m._batched_exact]
    assert checked and all(("column", tuple(rows), torch.float32, torch.device("cpu")) in c for c in checked)


@pytest.mark.parametrize("columns", [True, False])
def test_single_rows_from_the_column_major_copy_keep_their_bits_together(bundled, columns, monkeypatch):
    """Runs of one row each through the bundled model, whose widening matrices give one row from their
    column-major copy on AMD (`ONE_ROW_COLUMNS`, set here either way whatever this CPU is): stepped together,
    every step's hidden states equal each run's decode alone, bit for bit."""
    from axw import kernels

    monkeypatch.setattr(kernels, "ONE_ROW_COLUMNS", columns)
    net = copy.deepcopy(bundled[0].net)  # its own layers: their checks of the batched way start afresh
    alone, together = [net.new_cache(64) for _ in range(3)], [net.new_cache(64) for _ in range(3)]
    torch.manual_seed(2)
    with torch.no_grad():
        for i in range(3):
            prompt = torch.randint(0, net.num_tokens, (1, 4 + 3 * i))
            net.decode(prompt, alone[i])
            net.decode(prompt, together[i])
        for step in range(4):
            tokens = [torch.randint(0, net.num_tokens, (1, 1)) for _ in range(3)]
            expected = [net.decode(t, cache) for t, cache in zip(tokens, alone)]
            for e, g in zip(expected, net.decode_rows(tokens, together)):
                assert torch.equal(e, g)
    keys = [key for m in net.modules() if isinstance(m, kernels.Linear) for key in (m._batched_exact or {})]
    assert any("columns" in key for key in keys) == columns


def test_decode_rows_refuses_training_and_mixed_lengths():
    net = tiny_model(rotary=True).net
    caches = [net.new_cache(8), net.new_cache(8)]
    with pytest.raises(ValueError, match="eval"):
        net.decode_rows([torch.zeros(1, 1, dtype=torch.long)] * 2, caches)
    net.eval()
    with pytest.raises(ValueError, match="one number of new tokens"):
        net.decode_rows([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)], caches)


@pytest.fixture(scope="module")
def bundled():
    def load(name):
        return axw.AutoregressiveWrapper.from_pretrained(str(pg.ROOT / "assets" / "models" / name)).eval()

    return load("shakespeare"), load("shakespeare-tiny"), load("shakespeare-draft")


PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?", "First Citizen:\nBefore we proceed", "KING"]
SETTINGS = [
    pg.Settings(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=1),
    pg.Settings(max_new_tokens=12, temperature=0.0, seed=2),  # ends first
    pg.Settings(max_new_tokens=16, strategy="beam search", beams=3),
    pg.Settings(max_new_tokens=28, temperature=1.0, min_p=0.1, repetition_penalty=1.3, seed=5),
    pg.Settings(max_new_tokens=16, strategy="contrastive decoding", temperature=0.7, seed=3),
    pg.Settings(max_new_tokens=20, strategy="speculative decoding", drafter="draft model", temperature=0.9,
                seed=4, num_assistant_tokens=3),
    pg.Settings(max_new_tokens=12, strategy="contrastive search", penalty_alpha=0.6, contrastive_k=4),
]


def run_one(models, i, cache=None):
    model, amateur, draft = models
    settings = SETTINGS[i].check()
    helpers = dict(amateur=amateur) if settings.strategy == "contrastive decoding" else \
        dict(assistant=draft) if settings.strategy == "speculative decoding" else {}
    run, updates = R.start(model, PROMPTS[i % len(PROMPTS)], settings, settings.config(model), cache=cache,
                           **helpers)
    for run in updates:
        pass
    return run


def in_threads(jobs):
    """Run the jobs at once, each in a thread of its own; their results in order (an exception raised again)."""
    results, errors, start = [None] * len(jobs), [], threading.Barrier(len(jobs))

    def work(i):
        start.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def share(*nets, wait_s=0.05):
    return [SharedForwards(net, wait_s=wait_s) for net in nets]


def test_runs_together_get_their_tokens_probabilities_and_trace_alone(bundled):
    """Every strategy, prompts of different lengths, different settings and seeds, one run ending early: run
    at once with shared forwards (the expert's, the amateur's, the drafter's), each run's tokens, probabilities
    and whole trace equal the ones it gets alone; and the forwards were shared."""
    alone = [run_one(bundled, i) for i in range(len(SETTINGS))]
    shared = share(*(m.net for m in bundled))
    try:
        together = in_threads([lambda i=i: run_one(bundled, i) for i in range(len(SETTINGS))])
    finally:
        for s in shared:
            s.close()
    for a, t in zip(alone, together):
        assert (t.new_ids, t.probs, t.rows, t.ended) == (a.new_ids, a.probs, a.rows, a.ended)
    assert shared[0].stats.largest >= 3  # the expert's steps of several runs in one forward
    assert shared[2].stats.forwards > 0  # the drafter's forwards went through its own
    assert all(s.members == 0 for s in shared)  # every run left when it ended


def test_a_branch_joins_like_any_run(bundled):
    """A what-if branch (forked from its parent's kept cache) run beside two new runs: all three as alone."""
    model = bundled[0]
    settings = pg.Settings(max_new_tokens=20, temperature=0.8, seed=7).check()
    config = settings.config(model)

    def branched():
        cache = model.net.new_cache()
        run, updates = R.start(model, "ROMEO:", settings, config, cache=cache)
        for run in updates:
            pass
        _, updates, _ = pg.branch(model, run, 10, run.rows[10]["candidates"][3], config, kept=cache)
        for branch in updates:
            pass
        return branch

    alone = [branched(), run_one(bundled, 0), run_one(bundled, 3)]
    shared = share(model.net)
    try:
        together = in_threads([branched, lambda: run_one(bundled, 0), lambda: run_one(bundled, 3)])
    finally:
        shared[0].close()
    for a, t in zip(alone, together):
        assert (t.new_ids, t.probs, t.rows) == (a.new_ids, a.probs, a.rows)
    assert shared[0].stats.largest >= 2


def test_a_failing_forward_reaches_every_run_in_it_and_the_next_forwards_work(bundled, monkeypatch):
    model = bundled[0]
    shared = share(model.net)[0]
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (a test's)")

        monkeypatch.setattr(type(model.net), "decode_rows", broken)
        with pytest.raises(RuntimeError, match="a test's"):
            in_threads([lambda: run_one(bundled, 0), lambda: run_one(bundled, 1), lambda: run_one(bundled, 3)])
        monkeypatch.undo()
        expected = [run_one(bundled, 0).new_ids, run_one(bundled, 3).new_ids]
        got = in_threads([lambda: run_one(bundled, 0), lambda: run_one(bundled, 3)])
        assert [r.new_ids for r in got] == expected
    finally:
        shared.close()


def test_a_stopped_run_leaves_and_a_closed_share_is_gone(bundled):
    model = bundled[0]
    shared = share(model.net)[0]
    settings = SETTINGS[0].check()
    run, updates = R.start(model, "ROMEO:", settings, settings.config(model))
    for _ in range(5):
        next(updates)
    assert shared.members == 1  # the run is in flight: the next forward waits for it
    updates.close()  # the visitor stopped it
    assert shared.members == 0
    with pytest.raises(ValueError, match="shared already"):
        SharedForwards(model.net)
    shared.close()
    assert axw.shared.shared_forwards(model.net) is None


def test_a_run_whose_reader_pauses_does_not_hold_the_others_back(bundled):
    """One visitor's page reads every token at once, another's pauses 0.2 s after each: the first run's
    forwards stop waiting for the second once its pace is known (a few waits of wait_s, not one a token), and
    both runs' tokens are the ones they get alone."""
    model = bundled[0]
    settings = [pg.Settings(max_new_tokens=40, temperature=0.0), pg.Settings(max_new_tokens=4, temperature=0.0)]

    def run(i, pause=0.0):
        s = settings[i].check()
        run, updates = R.start(model, PROMPTS[i], s, s.config(model))
        for run in updates:
            time.sleep(pause)
        return run.new_ids

    alone = [run(0), run(1)]
    shared = share(model.net)[0]
    try:
        together = in_threads([lambda: run(0), lambda: run(1, pause=0.2)])
    finally:
        shared.close()
    assert together == alone
    assert shared.stats.steps == sum(len(ids) - 1 for ids in alone)  # the first token of each is its prompt's
    assert shared.stats.waited_s < 10 * shared.wait_s  # 40 tokens waiting wait_s each would be 40 of them


def test_a_step_interrupted_while_gathering_hands_the_next_forward_on(monkeypatch):
    """The thread that gathers a forward is interrupted while it waits: its step raises, and the next step
    still gets a forward (nobody is left waiting for a leader that is gone)."""
    torch.manual_seed(0)
    net = tiny_model(rotary=True).net.eval()
    shared = SharedForwards(net)
    gather = SharedForwards._gather

    def interrupted(self):
        monkeypatch.setattr(SharedForwards, "_gather", gather)
        raise KeyboardInterrupt

    monkeypatch.setattr(SharedForwards, "_gather", interrupted)
    alone, cache = net.new_cache(8), net.new_cache(8)
    token = torch.tensor([[3]])
    try:
        with torch.no_grad():
            with pytest.raises(KeyboardInterrupt):
                shared.decode(token, cache)
            expected = net.decode(token, alone)
        got = []
        second = threading.Thread(target=torch.no_grad()(lambda: got.append(shared.decode(token, cache))),
                                  daemon=True)
        second.start()
        second.join(timeout=60)
        assert not second.is_alive(), "the next step waits for a forward nobody runs"
    finally:
        shared.close()
    assert torch.equal(got[0], expected)


def test_a_few_runs_decode_on_their_own_and_more_share(bundled):
    """With alone=2, two runs at once each run their own forwards (one step a forward, every step counted);
    a class of four shares them. Every run's tokens, probabilities and trace are the ones it gets alone."""
    model = bundled[0]
    alone = [run_one(bundled, i) for i in (0, 1, 3)] + [run_one(bundled, 0)]
    for jobs, shares in [((0, 1), False), ((0, 1, 3, 0), True)]:
        shared = SharedForwards(model.net, wait_s=0.05, alone=2)
        try:
            together = in_threads([lambda i=i: run_one(bundled, i) for i in jobs])
        finally:
            shared.close()
        for a, t in zip(alone, together):
            assert (t.new_ids, t.probs, t.rows, t.ended) == (a.new_ids, a.probs, a.rows, a.ended)
        # each run's first token comes from its prompt's forward, the rest from one-token steps
        assert shared.stats.steps == sum(len(t.new_ids) - 1 for t in together)
        assert (shared.stats.largest >= 2) == shares
        assert shared.members == 0
    with pytest.raises(ValueError, match="alone"):
        SharedForwards(model.net, alone=-1)


def test_bad_settings_of_the_share_are_refused():
    net = tiny_model().net
    for kwargs, message in [(dict(max_rows=0), "max_rows"), (dict(wait_s=-1), "wait_s"), (dict(together=0), "together"),
                            (dict(turn_s=-1), "turn_s")]:
        with pytest.raises(ValueError, match=message):
            SharedForwards(net, **kwargs)


def test_the_app_shares_forwards_unless_told_not_to():
    assert pg.sessions.shared_forwards_on({}) and not pg.sessions.shared_forwards_on({"AXW_SHARED_FORWARDS": "0"})
    assert pg.sessions.concurrency({}) == pg.sessions.concurrency({"AXW_SHARED_FORWARDS": "0"}) == pg.CONCURRENCY
    assert pg.sessions.concurrency({"AXW_CONCURRENCY": "5"}) == 5
    for name, value in [("AXW_SHARED_FORWARDS", "yes"), ("AXW_CONCURRENCY", "0")]:
        with pytest.raises(ValueError, match=name):
            pg.sessions.concurrency({name: value})


def test_decode_rows_not_exact_reads_the_weights_once_and_agrees_within_float_error():
    """exact=False: one product over every run's rows (the Linear layers see all rows at once), each run's hidden
    states equal to its own decode within float error."""
    torch.manual_seed(0)
    net = tiny_model(dim=64, depth=2, heads=4, rotary=True).net.eval()
    alone, together = [net.new_cache(16) for _ in range(5)], [net.new_cache(16) for _ in range(5)]
    seen = []
    net.attn_layers.layers[0].ff.proj_in.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        for i, (a, t) in enumerate(zip(alone, together)):
            prompt = torch.randint(0, net.num_tokens, (1, 3 + i))
            net.decode(prompt, a)
            net.decode(prompt, t)
        tokens = [torch.randint(0, net.num_tokens, (1, 1)) for _ in range(5)]
        expected = [net.decode(x, c) for x, c in zip(tokens, alone)]
        seen.clear()
        got = net.decode_rows(tokens, together, exact=False)
    assert seen == [5]  # one call over the 5 runs' rows
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_the_app_lets_a_few_runs_decode_on_their_own(bundled):
    """AXW_SHARED_ALONE: how many runs in flight decode on their own before the app's shares begin (2 unless
    set); a bad value is refused by name; the app's model cache gives its shares that number."""
    assert pg.sessions.shared_alone({}) == pg.SHARED_ALONE == 2
    assert pg.sessions.shared_alone({"AXW_SHARED_ALONE": "0"}) == 0
    with pytest.raises(ValueError, match="AXW_SHARED_ALONE"):
        pg.sessions.concurrency({"AXW_SHARED_ALONE": "-1"})
    name = str(pg.ROOT / "assets" / "models" / "shakespeare-tiny")
    model = pg.ModelCache([name], shared=True, alone=3).get(name)
    shared = axw.shared.shared_forwards(model.net)
    try:
        assert shared is not None and shared.alone == 3
    finally:
        shared.close()


def taking_turns(lockstep, job):
    def member():
        with lockstep.member():
            return job()

    return member


def in_turns(lockstep, shared, jobs):
    """`in_threads` with each job taking turns in `lockstep`; the shared forwards `shared` (one or a list) are
    closed after."""
    try:
        return in_threads([taking_turns(lockstep, job) for job in jobs])
    finally:
        for s in shared if isinstance(shared, list) else [shared]:
            s.close()


def test_runs_taking_turns_get_their_tokens_probabilities_and_trace_alone(bundled):
    """Every strategy, prompts of different lengths, settings and seeds, one run ending early, taking turns
    (`Lockstep`) over the expert's, the amateur's and the drafter's shared forwards: each run's tokens,
    probabilities and whole trace equal the ones it gets alone, and nobody left the turns."""
    alone = [run_one(bundled, i) for i in range(len(SETTINGS))]
    shared, lockstep = share(*(m.net for m in bundled)), Lockstep()
    together = in_turns(lockstep, shared, [lambda i=i: run_one(bundled, i) for i in range(len(SETTINGS))])
    for a, t in zip(alone, together):
        assert (t.new_ids, t.probs, t.rows, t.ended) == (a.new_ids, a.probs, a.rows, a.ended)
    assert shared[0].stats.largest >= 4 and shared[2].stats.forwards > 0
    assert lockstep.stalls == 0 and lockstep.members == 0


def test_every_forward_of_runs_taking_turns_carries_every_run_in_flight(bundled):
    """Four sampling runs of 24 tokens each, taking turns: after each run's prompt, every one-token step of the
    four goes in one forward (one of the first may go before the last has read its prompt), and every run's tokens
    are the ones it gets alone."""
    model = bundled[0]
    settings = [replace(SETTINGS[0], seed=seed).check() for seed in range(4)]

    def run(i):
        s = settings[i]
        run, updates = R.start(model, PROMPTS[1], s, s.config(model))
        for run in updates:
            pass
        return run

    alone = [run(i) for i in range(4)]
    shared, lockstep = SharedForwards(model.net), Lockstep()
    together = in_turns(lockstep, shared, [lambda i=i: run(i) for i in range(4)])
    assert [t.new_ids for t in together] == [a.new_ids for a in alone]
    steps = sum(len(a.new_ids) - 1 for a in alone)  # each run's first token comes from its prompt's forward
    assert all(len(a.new_ids) == 24 for a in alone)
    assert shared.stats.steps == steps and shared.stats.largest == 4
    assert shared.stats.sizes[4] >= 23 - 3  # 23 steps each: at most the first few before all four are in


def test_a_run_waiting_on_another_outside_its_steps_leaves_the_turns_and_both_finish(bundled):
    """One run holds a lock through its whole text; another waits for that lock in its turn, so the first
    run's step waits for a forward nobody runs. After stall_s the first leaves the turns and goes on by itself;
    both texts are the ones they get alone."""
    model = bundled[0]
    held, started = threading.Lock(), threading.Event()
    s = pg.Settings(max_new_tokens=6, temperature=0.0).check()

    def run(prompt):
        run, updates = R.start(model, prompt, s, s.config(model))
        for run in updates:
            pass
        return run.new_ids

    def first():
        with held:
            started.set()
            return run(PROMPTS[0])

    def second():
        started.wait()
        with held:
            return run(PROMPTS[1])

    alone = [run(PROMPTS[0]), run(PROMPTS[1])]
    shared, lockstep = SharedForwards(model.net), Lockstep(stall_s=0.2)
    together = in_turns(lockstep, shared, [first, second])
    assert together == alone
    assert lockstep.stalls >= 1 and lockstep.members == 0


def test_a_run_leaving_the_turns_after_its_forward_ran_goes_on_with_that_step(bundled):
    """Both runs' steps go in one forward; then each, going on in its turn, takes longer than stall_s over its own
    work once, so the other, its step already computed, leaves the turns while waiting to go on. It goes on with
    that step rather than computing it again (which read its token into its cache twice, and its next step found
    nothing left to read), and both texts are the ones they get alone."""
    model = bundled[0]
    s = pg.Settings(max_new_tokens=8, temperature=0.0).check()

    def run(prompt, slow_at=None):
        run, updates = R.start(model, prompt, s, s.config(model))
        for i, run in enumerate(updates):
            if i == slow_at:
                time.sleep(0.4)  # its own work between two steps, in its turn
        return run.new_ids

    alone = [run(PROMPTS[0]), run(PROMPTS[1])]
    shared, lockstep = SharedForwards(model.net), Lockstep(stall_s=0.1)
    together = in_turns(lockstep, shared, [lambda: run(PROMPTS[0], 3), lambda: run(PROMPTS[1], 3)])
    assert together == alone
    assert lockstep.stalls >= 1 and lockstep.members == 0


def test_a_failing_forward_reaches_every_run_taking_turns_and_the_turns_go_on(bundled, monkeypatch):
    model = bundled[0]
    shared, lockstep = SharedForwards(model.net), Lockstep()
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (a test's)")

        monkeypatch.setattr(type(model.net), "decode_rows", broken)
        with pytest.raises(RuntimeError, match="a test's"):
            in_threads([taking_turns(lockstep, lambda i=i: run_one(bundled, i)) for i in (0, 1, 3)])
        assert lockstep.members == 0
        monkeypatch.undo()
        expected = [run_one(bundled, 0).new_ids, run_one(bundled, 3).new_ids]
        got = in_threads([taking_turns(lockstep, lambda i=i: run_one(bundled, i)) for i in (0, 3)])
        assert [r.new_ids for r in got] == expected
    finally:
        shared.close()
    with pytest.raises(ValueError, match="stall_s"):
        Lockstep(stall_s=0)


def test_runs_taking_turns_draw_together_and_each_gets_its_numbers_alone(bundled):
    """Runs alike (sampling at the same settings with their own seeds; greedy at the same settings) taking turns
    have their heads, pipelines, draws and traces done together after each shared forward, one pass over their
    rows; prompts of different lengths, one run ending first, and runs unlike them beside (another top-p, a
    repetition penalty, another temperature). Each run's tokens, probabilities and whole trace equal the ones it
    gets alone."""
    model = bundled[0]
    sampled = pg.Settings(max_new_tokens=24, temperature=0.8, top_p=0.9, min_p=0.05)
    greedy = pg.Settings(max_new_tokens=16, temperature=0.0)
    settings = [replace(sampled, seed=1), replace(sampled, seed=2, max_new_tokens=10), replace(sampled, seed=3),
                replace(greedy, seed=4), replace(greedy, seed=5, max_new_tokens=20),
                replace(sampled, seed=6, top_p=0.8), replace(sampled, seed=7, repetition_penalty=1.3),
                replace(sampled, seed=8, temperature=0.7)]
    settings = [s.check() for s in settings]

    def run(i):
        s = settings[i]
        run, updates = R.start(model, PROMPTS[i % len(PROMPTS)], s, s.config(model))
        for run in updates:
            pass
        return run

    alone = [run(i) for i in range(len(settings))]
    shared, lockstep = SharedForwards(model.net), Lockstep()
    together = in_turns(lockstep, shared, [lambda i=i: run(i) for i in range(len(settings))])
    for a, t in zip(alone, together):
        assert (t.new_ids, t.probs, t.rows, t.ended) == (a.new_ids, a.probs, a.rows, a.ended)
    # the three sampling runs alike and the two greedy ones drew together at most of their steps
    assert lockstep.drawn_together >= 2 * 9 + 3 * 9
    assert lockstep.stalls == 0 and lockstep.members == 0


@pytest.mark.parametrize("tied", [False, True])
def test_the_heads_rows_of_several_runs_get_the_bits_of_each_alone(tied):
    """`logits_rows`: several runs' hidden states through the head in one call, each row's logits the bits
    `logits` gives it alone, for an output head of its own (by parts, `kernels.shared_rows`) and a tied one."""
    net = axw.TransformerWrapper(num_tokens=1000, max_seq_len=64, tie_embedding=tied,
                                 attn_layers=axw.Decoder(dim=256, depth=1, heads=4, dim_head=64)).eval()
    hidden = torch.randn(5, 256)
    with torch.no_grad():
        for rows in (2, 5, 5):  # the second call of a shape takes the way the first one checked
            together = net.logits_rows(hidden[:rows])
            assert torch.equal(together, torch.cat([net.logits(h) for h in hidden[:rows].split(1)]))


def test_a_trace_drawn_together_is_the_trace_alone_stage_by_stage(bundled):
    """The library's own steps of runs drawing together (`model.stream(..., trace=True)` in threads taking
    turns): each step's trace, stage by stage (the kept tokens of every stage, their masks shared where a stage
    removed nothing, the numbers), is the one the run records alone."""
    model = bundled[0]
    prompts = [torch.tensor([model.tokenizer.encode(p).ids]) for p in PROMPTS[:3]]
    kw = dict(trace=True, temperature=0.9, filter_logits_fn=["top_k", "top_p"],
              filter_kwargs=[dict(k=40), dict(thres=0.8)])

    def steps(i):
        out = []
        for step in model.stream(prompts[i], 12, seed=10 + i, **kw):
            t = step.trace
            out.append((int(step.tokens[0]), t.row(0), [t.kept_ids(s) for s in t.stages],
                        [t.kept_mask[j] is t.kept_mask[j - 1] for j in range(1, len(t.stages))]))
        return out

    alone = [steps(i) for i in range(3)]
    shared, lockstep = SharedForwards(model.net), Lockstep()
    together = in_turns(lockstep, shared, [lambda i=i: steps(i) for i in range(3)])
    assert together == alone
    assert lockstep.drawn_together >= 3 * 10


def test_a_failing_draw_together_reaches_every_run_in_it_and_the_turns_go_on(bundled, monkeypatch):
    """A draw done together that fails (here: on purpose) fails each of its runs with that error; the turns go
    on, and the next runs get their texts alone."""
    from axw.sampling import Together

    model = bundled[0]
    shared, lockstep = SharedForwards(model.net), Lockstep()
    s = pg.Settings(max_new_tokens=8, temperature=0.8, seed=3).check()

    def run(seed):
        settings = replace(s, seed=seed)
        run, updates = R.start(model, PROMPTS[0], settings, settings.config(model))
        for run in updates:
            pass
        return run.new_ids

    try:
        def broken(draws, hiddens):
            raise RuntimeError("a draw fails (a test's)")

        monkeypatch.setattr(Together, "together", staticmethod(broken))
        with pytest.raises(RuntimeError, match="a test's"):
            in_threads([taking_turns(lockstep, lambda i=i: run(i)) for i in range(3)])
        assert lockstep.members == 0
        monkeypatch.undo()
        expected = [run(i) for i in range(3)]
        assert in_threads([taking_turns(lockstep, lambda i=i: run(i)) for i in range(3)]) == expected
    finally:
        shared.close()


@pytest.mark.parametrize("columns", [True, False])
def test_runs_of_one_row_each_keep_the_way_decided_and_see_the_weight_change(columns, monkeypatch):
    """A Linear's product for runs of one row each (a decode step shared by 4 runs) keeps the way it decided once
    its check is made (`Linear._one_row_each`): every call gives each row the bits of that row alone, also after
    the weight changes in place (its column-major copy made again), after it or the bias is replaced, in a copy
    of the layer, and with gradients on."""
    from axw import kernels

    monkeypatch.setattr(kernels, "ONE_ROW_COLUMNS", columns)
    torch.manual_seed(0)
    for layer in (kernels.Linear(256, 768), kernels.Linear(768, 256, bias=False)):
        rows = torch.randn(4, 1, layer.in_features)

        def together_equals_alone():
            alone = torch.cat([layer(row) for row in rows.split(1)])
            with kernels.shared_rows([1, 1, 1, 1]):
                assert torch.equal(layer(rows), alone)

        with torch.no_grad():
            for _ in range(3):
                together_equals_alone()
            assert len(layer._planned) == 1
            layer.weight.mul_(1.5)
            together_equals_alone()
            layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))
            together_equals_alone()
            if layer.bias is not None:
                layer.bias = torch.nn.Parameter(torch.randn_like(layer.bias))
                together_equals_alone()
            original, layer = layer, copy.deepcopy(layer)  # a copy (a visitor's to fine-tune) has weights of its own
            layer.weight.mul_(0.5)
            together_equals_alone()
            layer = original
        together_equals_alone()  # gradients on: the weights' own product, decided again
        assert len(layer._planned) == 2
