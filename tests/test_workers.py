"""Worker processes (AXW_WORKERS, playground.workers): a run generated in a worker is the run the app's own process
generates, runs at once each get their own, a stopped run stops there, a worker that dies fails its run with a
message and comes back, and what the workers do not hold stays in the app's process."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import gradio as gr
import pytest

import playground as pg
from playground.service import Playground, user_errors
from playground.workers import WorkerError, _change
from playground.sessions import concurrency, worker_cpus, workers_wanted

FIELDS = ("new_ids", "probs", "pieces", "rows", "ended", "done", "prompt_ids", "prompt")


@pytest.fixture(scope="module")
def pooled():
    app = Playground(pg.DEFAULT_MODEL, pg.DEFAULT_AMATEUR, workers=1)
    assert app.workers.wait_ready(180)
    yield app
    app.workers.close()


@pytest.fixture(scope="module")
def local():
    return Playground(pg.DEFAULT_MODEL, pg.DEFAULT_AMATEUR, workers=0)


def finished(app, prompt, settings, **kw):
    _, run, updates, cache = app.start(prompt, settings, None, **kw)
    count = 0
    for run in updates:
        count += 1
    return run, count, cache


def same_run(a, b):
    for f in FIELDS:
        assert getattr(a, f) == getattr(b, f), f
    assert (a.beam_probs is None) == (b.beam_probs is None)
    if a.beam_probs is not None:
        assert [list(x) for x in a.beam_probs] == [list(x) for x in b.beam_probs]


SETTINGS = pg.Settings(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=3)


@pytest.mark.parametrize("strategy", ["sampling", "beam search", "contrastive search", "contrastive decoding",
                                      "speculative decoding"])
def test_a_run_in_a_worker_is_the_run_of_the_apps_own_process(pooled, local, strategy):
    settings = replace(SETTINGS, strategy=strategy)
    assert pooled.in_workers(settings)
    ours, updates, cache = finished(pooled, "ROMEO:", settings, keep_cache=True)
    theirs, local_updates, _ = finished(local, "ROMEO:", settings)
    same_run(ours, theirs)  # tokens, text, probabilities and every trace row, bit for bit
    assert updates == local_updates  # an update after each step, as in the app's process
    assert cache is None  # the KV cache stays in the worker: a branch reads its prefix again


def snapshots(app, prompt, settings):
    """The run's text as each update shows it: (ids, probabilities, pieces)."""
    _, run, updates, _ = app.start(prompt, settings, None)
    return [(list(r.new_ids), list(r.probs), list(r.pieces)) for r in updates]


@pytest.mark.parametrize("strategy", ["sampling", "beam search"])
def test_each_update_from_a_worker_shows_what_the_apps_own_process_shows(pooled, local, strategy):
    """The worker sends each step's changes, not the whole text: every update still reads the same (beam search's
    best beam may change anywhere)."""
    settings = replace(SETTINGS, strategy=strategy, max_new_tokens=40)
    ours, theirs = snapshots(pooled, "ROMEO:", settings), snapshots(local, "ROMEO:", settings)
    assert ours == theirs
    if strategy == "beam search":  # the best beam changed somewhere before its end at least once
        assert any(a[0][:len(b[0])] != b[0] for b, a in zip(theirs, theirs[1:]))


def test_a_lists_change_rebuilds_it_and_holds_only_what_changed():
    import random

    rng = random.Random(0)
    sent = []
    for _ in range(400):
        now = list(sent)
        edit = rng.choice(["append", "last", "anywhere", "shorter"])
        if edit == "append":
            now += [rng.randrange(50) for _ in range(rng.randrange(1, 4))]
        elif edit == "last" and now:
            now[-1] = f"{now[-1]}+"
        elif edit == "anywhere" and now:
            now[rng.randrange(len(now))] = -1
        elif now:
            del now[rng.randrange(len(now)):]
        i, tail = _change(now, sent)
        assert sent[:i] + tail == now and i <= len(sent)
        if edit == "append":  # only what was added goes
            assert i == len(sent) and tail == now[len(sent):]
        sent = now


def test_runs_at_once_in_a_worker_each_get_their_own_text(pooled, local):
    settings = [replace(SETTINGS, seed=s, temperature=t, max_new_tokens=n)
                for s, t, n in ((1, 0.7, 30), (2, 1.0, 12), (3, 0.9, 40), (4, 0.0, 20))]
    got = [None] * len(settings)

    def one(i):
        got[i] = finished(pooled, "JULIET:\nO Romeo", settings[i])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for run, s in zip(got, settings):
        same_run(run, finished(local, "JULIET:\nO Romeo", s)[0])


def test_a_run_stopped_early_stops_in_the_worker_and_the_next_is_served(pooled, local):
    worker = pooled.workers.workers[0]
    _, run, updates, _ = pooled.start("ROMEO:", replace(SETTINGS, max_new_tokens=200), None)
    for i, run in enumerate(updates):
        if i == 2:
            break
    updates.close()
    assert not worker.jobs and not run.done and len(run.new_ids) == 3
    same_run(finished(pooled, "ROMEO:", SETTINGS)[0], finished(local, "ROMEO:", SETTINGS)[0])


def test_a_worker_that_dies_fails_its_run_with_a_message_and_comes_back(pooled, local):
    worker = pooled.workers.workers[0]
    _, run, updates, _ = pooled.start("ROMEO:", replace(SETTINGS, max_new_tokens=200), None)
    next(updates)
    worker.process.kill()
    with pytest.raises(WorkerError, match="worker process .* ended: generate again"):
        for run in updates:
            pass
    with pytest.raises(gr.Error, match="generate again"):  # what the visitor is shown
        with user_errors():
            raise WorkerError("the worker process generating this text ended: generate again")
    assert pooled.workers.wait_ready(180)  # started again
    same_run(finished(pooled, "ROMEO:", SETTINGS)[0], finished(local, "ROMEO:", SETTINGS)[0])


def test_a_request_is_checked_before_anything_goes_to_a_worker(pooled):
    worker = pooled.workers.workers[0]
    with pytest.raises(ValueError, match="prompt is empty"):
        pooled.start("", SETTINGS, None)
    with pytest.raises(ValueError, match="max new tokens"):
        pooled.start("ROMEO:", replace(SETTINGS, max_new_tokens=-3), None)
    assert not worker.jobs


def test_what_the_workers_do_not_hold_stays_in_the_apps_process(pooled):
    assert pooled.in_workers(SETTINGS) and pooled.in_workers(replace(SETTINGS, model=pg.DEFAULT_MODEL))
    assert not pooled.in_workers(replace(SETTINGS, use_finetuned=True))  # a visitor's fine-tuned copy
    assert not pooled.in_workers(replace(SETTINGS, model="HuggingFaceTB/SmolLM2-135M"))
    assert not pooled.in_workers(replace(SETTINGS, strategy="contrastive decoding", amateur="other/model"))
    assert pooled.in_workers(replace(SETTINGS, strategy="contrastive decoding", amateur=pg.DEFAULT_AMATEUR))


def test_a_cpu_space_serving_the_bundled_model_gets_a_worker_a_core(monkeypatch):
    """Without AXW_WORKERS a Space on CPU hardware (the Hub sets SPACE_ID and CPU_CORES) gets one worker a core, so
    a class's runs use every core; anywhere else, with a model of the teacher's choice, on ZeroGPU or on a GPU, or
    on one core, none."""
    import torch

    space = {"SPACE_ID": "teacher/axw", "CPU_CORES": "2"}
    assert workers_wanted(space) == 2 and concurrency(space) == 2 * pg.RUNS_PER_WORKER
    assert workers_wanted({**space, "CPU_CORES": "16"}) == pg.caps.SPACE_WORKERS_MAX
    for other in ({"CPU_CORES": "1"}, {"AXW_MODEL": "HuggingFaceTB/SmolLM2-360M"}, {"SPACES_ZERO_GPU": "true"},
                  {"AXW_WORKERS": "0"}):
        assert workers_wanted({**space, **other}) == 0, other
    assert workers_wanted({**space, "AXW_WORKERS": "3"}) == 3  # the variable wins
    assert workers_wanted({"CPU_CORES": "2"}) == 0  # not a Space
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert workers_wanted(space) == 0  # a GPU Space: one process shares the forward best


def test_the_workers_come_from_the_environment_and_raise_the_generations_at_once():
    assert workers_wanted({}) == 0 and concurrency({}) == pg.CONCURRENCY
    assert workers_wanted({"AXW_WORKERS": "2"}) == 2
    assert concurrency({"AXW_WORKERS": "2"}) == 2 * pg.RUNS_PER_WORKER
    assert concurrency({"AXW_WORKERS": "2", "AXW_CONCURRENCY": "3"}) == 3
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match="AXW_WORKERS"):
            workers_wanted({"AXW_WORKERS": bad})


def test_visitors_pressing_together_are_spread_evenly_over_the_workers(monkeypatch):
    """A class pressing Generate at the same moment: each run goes to the least busy worker counting the runs
    chosen just before it, so two workers get half the runs each (choices made at once used to see the same loads
    and send several runs to one worker while the other idled). The workers run torch on one thread each, as the
    app starts them."""
    import torch

    with monkeypatch.context() as m:
        m.setattr(torch, "get_num_threads", lambda: 1)  # what the workers take from the app's process
        app = Playground(pg.DEFAULT_MODEL, pg.DEFAULT_AMATEUR, workers=2)
    visitors, started = 32, []
    try:
        assert app.workers.wait_ready(180)
        pressed = threading.Barrier(visitors)

        def visit(i):
            _, _, updates, _ = app.start("ROMEO:", replace(SETTINGS, max_new_tokens=96, seed=i), None)
            started.append(updates)
            pressed.wait()
            next(updates)  # the run is going in its worker

        threads = [threading.Thread(target=visit, args=(i,)) for i in range(visitors)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [w.load() for w in app.workers.workers] == [visitors // 2] * 2
        # each worker (every thread of it) keeps to its own CPU where the machine has as many as there are workers
        pool = app.workers
        assert pool.threads == 1 and pool.cpus == worker_cpus(2, 1)
        assert pool.cpus is not None or len(os.sched_getaffinity(0)) != 2
        for w, cpu in zip(pool.workers, pool.cpus or [None] * 2):
            wanted = {cpu} if cpu is not None else os.sched_getaffinity(0)
            seen = {}
            for task in os.listdir(f"/proc/{w.process.pid}/task"):  # its runs' threads come and go meanwhile
                try:
                    seen[task] = os.sched_getaffinity(int(task))
                except OSError:  # ended since listed
                    pass
            assert seen and all(cpus == wanted for cpus in seen.values()), seen
    finally:
        for updates in started:
            updates.close()
        app.workers.close()


def test_each_worker_keeps_to_a_cpu_of_its_own_where_the_cpus_are_the_workers():
    """AXW_PIN_WORKERS unset: a CPU each when the visible CPUs are as many as the workers, each on one torch thread;
    none where more are visible (a shared host's), with more threads or more workers than CPUs; 1 pins wherever
    there are enough, 0 never; anything else is refused by name."""
    assert worker_cpus(2, 1, cpus=[0, 1], env={}) == [0, 1]
    assert worker_cpus(2, 1, cpus=[4, 9], env={}) == [4, 9]
    assert worker_cpus(2, 1, cpus=list(range(16)), env={}) is None
    assert worker_cpus(2, 1, cpus=list(range(16)), env={"AXW_PIN_WORKERS": "1"}) == [0, 1]
    assert worker_cpus(2, 2, cpus=[0, 1], env={}) is None
    assert worker_cpus(3, 1, cpus=[0, 1], env={"AXW_PIN_WORKERS": "1"}) is None
    assert worker_cpus(2, 1, cpus=[0, 1], env={"AXW_PIN_WORKERS": "0"}) is None
    with pytest.raises(ValueError, match="AXW_PIN_WORKERS"):
        worker_cpus(2, 1, cpus=[0, 1], env={"AXW_PIN_WORKERS": "yes"})
