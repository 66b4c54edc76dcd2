"""One shared timer heap per actor system.

Every timer in the system lives in one heap and at most one loop handle is armed,
for the earliest deadline, so ten thousand pending timers cost the loop one
``call_at``. Deadlines are read on the system's clock; on a manual clock nothing
is armed and timers fire when the clock is advanced.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from ._clock import Clock


class TimerHandle:
    """A scheduled call; :meth:`cancel` it to drop it (lazily, at no cost to the heap)."""

    __slots__ = ("_args", "_callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self._callback = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._args = ()


class Scheduler:
    """Timers on an injectable clock, all served by one armed loop handle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | asyncio.Handle | None = None
        self._armed_for = float("inf")
        self._closed = False
        self._unsubscribe = clock.subscribe(self._on_clock_jump)

    def __len__(self) -> int:
        return len(self._heap)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> TimerHandle:
        return self.call_at(self._clock.monotonic() + max(0.0, delay), callback, *args)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> TimerHandle:
        if self._closed:
            raise RuntimeError("the scheduler is closed")
        handle = TimerHandle(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if when < self._armed_for:
            self._arm(when)
        return handle

    def close(self) -> None:
        """Drop every pending timer and disarm; nothing fires afterwards."""
        self._closed = True
        self._unsubscribe()
        for _, _, handle in self._heap:
            handle.cancel()
        self._heap.clear()
        self._disarm()

    def _arm(self, when: float) -> None:
        self._disarm()
        self._armed_for = when
        if self._clock.is_manual:
            if when <= self._clock.monotonic():
                self._armed = self._loop.call_soon(self._fire)
            return
        delay = when - self._clock.monotonic()
        self._armed = self._loop.call_at(self._loop.time() + max(0.0, delay), self._fire)

    def _disarm(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._armed_for = float("inf")

    def _on_clock_jump(self) -> None:
        if not self._closed:
            self._fire()

    def _fire(self) -> None:
        self._armed = None
        self._armed_for = float("inf")
        heap = self._heap
        now = self._clock.monotonic()
        while heap and heap[0][0] <= now:
            _, _, handle = heapq.heappop(heap)
            if not handle.cancelled:
                handle.cancelled = True  # a handle fires once
                try:
                    handle._callback(*handle._args)
                except Exception as exc:  # one bad timer must not starve the others
                    self._loop.call_exception_handler(
                        {"message": "stint timer callback failed", "exception": exc}
                    )
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap and not self._closed:
            self._arm(heap[0][0])
