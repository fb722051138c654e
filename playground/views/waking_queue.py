"""gradio's queue, woken by work rather than polling for it.

gradio's queue (`gradio.queueing.Queue`) looks for an event to start every millisecond, and for progress to send
every 10 ms, whether anything waits or not: about 5% of a core on a 2-core host with nobody visiting, taken from
the runs' processes while a class generates. After `install()`, each queue made waits until an event joins or one
ends (or `IDLE_S` passes, should work arrive some other way), and looks for progress every `PROGRESS_S`."""

from __future__ import annotations

import asyncio
import functools

import gradio.queueing

IDLE_S = 0.05  # the longest a queue's loop waits without being woken
PROGRESS_S = 0.05  # how often a queue sends progress (gradio: 0.01)


class Poll(float):
    """A queue loop's wait when it finds nothing to start: `idle_s` seconds (a float, as gradio sleeps for it),
    ended early by `wake()`. The queue module's `asyncio.sleep` (`_Asyncio`) waits on it."""

    def __new__(cls, idle_s: float):
        poll = super().__new__(cls, idle_s)
        poll.woken = poll.loop = None  # an asyncio.Event of the queue's loop, made there on the first wait
        poll.waits = poll.wakes = 0  # how often the loop waited, and how often work woke it
        return poll

    def event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a queue started again runs in a new loop
            self.woken, self.loop = asyncio.Event(), loop
        return self.woken

    async def wait(self):
        woken = self.event()
        self.waits += 1
        try:
            await asyncio.wait_for(woken.wait(), float(self))
        except asyncio.TimeoutError:
            pass
        woken.clear()  # the loop looks at the queue next: what woke it is seen there

    def wake(self):
        """(in the queue's loop) Work arrived: an event joined, or one ended and freed its place."""
        self.wakes += 1
        if self.woken is not None and self.loop is asyncio.get_running_loop():
            self.woken.set()


class _Asyncio:
    """`asyncio` as `gradio.queueing` sees it: the module itself, but a sleep for a `Poll` waits on it."""

    def __getattr__(self, name):
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay, result=None):
        if isinstance(delay, Poll):
            await delay.wait()
            return result
        return await asyncio.sleep(delay, result)


def wake_on_work(queue: gradio.queueing.Queue, idle_s: float = IDLE_S, progress_s: float = PROGRESS_S) -> Poll:
    """`queue`'s loop waits for work (`install`), at most `idle_s` at a time; its progress goes out every
    `progress_s`. Returns the loop's wait."""
    queue.sleep_when_free, queue.progress_update_sleep_when_free = Poll(idle_s), progress_s
    return queue.sleep_when_free


def _waking(method):
    """`Queue.method`, then its queue's loop woken."""
    @functools.wraps(method)
    async def then_wake(queue, *args, **kwargs):
        try:
            return await method(queue, *args, **kwargs)
        finally:
            if isinstance(queue.sleep_when_free, Poll):
                queue.sleep_when_free.wake()
    return then_wake


def install():
    """Every gradio queue made from now on in this process waits for work (`wake_on_work`): a joining event is
    pushed, and a finished one leaves `process_events` with its place, and its concurrency, free."""
    queue = gradio.queueing.Queue
    if getattr(queue, "wakes_on_work", False):
        return
    made = queue.__init__

    @functools.wraps(made)
    def __init__(self, *args, **kwargs):
        made(self, *args, **kwargs)
        wake_on_work(self)

    queue.__init__, queue.push, queue.process_events = __init__, _waking(queue.push), _waking(queue.process_events)
    queue.wakes_on_work = True
    gradio.queueing.asyncio = _Asyncio()
