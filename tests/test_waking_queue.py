"""gradio's queue woken by work (`playground.views.waking_queue`): it waits rather than polling, and every event still
starts, whether it joins an idle queue or waits for another to end."""

from __future__ import annotations

import threading
import time

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from conftest import free_port  # noqa: E402
from playground.views.waking_queue import Poll, install, wake_on_work  # noqa: E402


def served(fn, idle_s: float, concurrency_limit: int = 1):
    """(url, demo, the queue's wait) of a one-endpoint app whose queue waits for work, at most idle_s at a time."""
    with gr.Blocks() as demo:
        gr.api(fn, api_name="f", concurrency_limit=concurrency_limit)
    install()
    demo.queue()
    poll = wake_on_work(demo._queue, idle_s=idle_s)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return f"http://127.0.0.1:{port}/", demo, poll


def test_an_idle_queue_waits_rather_than_polling():
    def f(x: int) -> int:
        return x + 1

    url, demo, poll = served(f, idle_s=0.25)
    try:
        assert demo._queue.sleep_when_free is poll and isinstance(poll, Poll)
        assert gradio_client.Client(url, verbose=False).predict(1, api_name="/f") == 2
        before = poll.waits
        time.sleep(1.0)
        # gradio's own loop looks every millisecond (about a thousand times here); this one wakes at idle_s
        assert poll.waits - before <= 8
    finally:
        demo.close()


def test_a_joining_event_and_an_ending_one_wake_the_queue():
    """With the longest wait far beyond the calls' timeout, each event starts only because work woke the loop:
    the first as it joins an idle queue, the others (one at a time) as the one before ends."""
    running, most = [0], [0]
    lock = threading.Lock()

    def f(x: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return 2 * x

    url, demo, poll = served(f, idle_s=600)
    try:
        client = gradio_client.Client(url, verbose=False)
        time.sleep(0.3)  # the queue's loop is waiting when the first event joins
        jobs = [client.submit(i, api_name="/f") for i in range(4)]
        assert [job.result(timeout=60) for job in jobs] == [0, 2, 4, 6]
        assert most[0] == 1  # one at a time: each waited for the one before to end
        assert poll.wakes >= 8  # 4 joined, 4 ended
    finally:
        demo.close()


def test_the_playground_queue_waits_for_work(served_app):
    url, demo = served_app
    assert isinstance(demo._queue.sleep_when_free, Poll)
    assert demo._queue.progress_update_sleep_when_free == pytest.approx(0.05)
