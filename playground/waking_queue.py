"""gradio's queue, woken by work rather than polling for it.

gradio's queue (`gradio.queueing.Queue`) looks for an event to start every millisecond, and for progress to send
every 10 ms, whether anything waits or not: about 6% of a core on a 2-core host with nobody visiting, and taken
from the runs' processes while a class generates. `wake_on_work(queue)` has its loop wait until an event joins
or one ends (or `idle_s` passes, should work arrive some other way), and look for progress every `progress_s`."""

from __future__ import annotations

import asyncio
import functools

import gradio.queueing

IDLE_S = 0.05  # the longest the queue's loop waits without being woken
PROGRESS_S = 0.05  # how often the queue sends progress (gradio: 0.01)


class _Poll(float):
    """The queue loop's wait when it finds nothing to start: `idle_s` seconds (a float, as gradio sleeps for it),
    ended early by `wake()`. The queue module's `asyncio.sleep` (`_Asyncio`) waits on it."""

    def __new__(cls, idle_s: float):
        poll = super().__new__(cls, idle_s)
        poll._woken, poll._loop = None, None
        poll.waits = poll.wakes = 0  # how often the loop waited, and how often work woke it
        return poll

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a queue started again runs in a new loop
            self._woken, self._loop = asyncio.Event(), loop
        return self._woken

    async def wait(self):
        woken = self._event()
        self.waits += 1
        try:
            await asyncio.wait_for(woken.wait(), float(self))
        except asyncio.TimeoutError:
            pass
        woken.clear()  # the loop looks at the queue next: what woke it is seen there

    def wake(self):
        """(in the queue's loop) Work arrived: an event joined, or one ended and freed its place."""
        self.wakes += 1
        if self._woken is not None and self._loop is asyncio.get_running_loop():
            self._woken.set()


class _Asyncio:
    """`asyncio` as `gradio.queueing` sees it: the module itself, but a sleep for a `_Poll` waits on it."""

    def __getattr__(self, name):
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay, result=None):
        if isinstance(delay, _Poll):
            await delay.wait()
            return result
        return await asyncio.sleep(delay, result)


def wake_on_work(queue: gradio.queueing.Queue, idle_s: float = IDLE_S, progress_s: float = PROGRESS_S) -> _Poll:
    """Have `queue`'s loop wait for work (an event joining, or one ending) instead of polling every millisecond,
    at most `idle_s` at a time; its progress goes out every `progress_s`. Returns the loop's wait (`_Poll`)."""
    if not isinstance(gradio.queueing.asyncio, _Asyncio):
        gradio.queueing.asyncio = _Asyncio()
    poll = _Poll(idle_s)

    def waking(method):
        @functools.wraps(method)
        async def then_wake(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            finally:
                poll.wake()
        return then_wake

    # a joining event is pushed; a finished one leaves `process_events` with its place, and its concurrency, free
    queue.push, queue.process_events = waking(queue.push), waking(queue.process_events)
    queue.sleep_when_free, queue.progress_update_sleep_when_free = poll, progress_s
    return poll
