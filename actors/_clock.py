"""Clocks: the kernel reads time only through one of these, so tests can drive it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What the kernel needs of time: a monotonic reading and a wall-clock one."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (deadlines, idle times)."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (timestamps shown to users)."""
        ...

    @property
    def is_manual(self) -> bool:
        """True when time only moves when a test says so."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever time jumps; returns an unsubscribe function."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``time.time``."""

    is_manual = False
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        # Real time never jumps, so there is nothing to notify.
        return lambda: None


class ManualClock:
    """A clock that moves only on :meth:`advance`, for exact and instant timing tests.

    Timers armed on a manual clock never fire by themselves: ``advance(5)`` runs
    everything that falls due in those five seconds, in order.
    """

    is_manual = True

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._offset = 0.0
        self._epoch = start
        self._listeners: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return self._offset

    def time(self) -> float:
        return self._epoch + self._offset

    def advance(self, seconds: float) -> None:
        """Move time forward and wake everything waiting on this clock."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards: pass seconds >= 0")
        self._offset += seconds
        for listener in list(self._listeners):
            listener()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe
