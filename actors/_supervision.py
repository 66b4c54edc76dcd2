"""Supervision as data: a directive, a decider, and a restart window on an injected clock."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._clock import Clock


class Directive(enum.Enum):
    """What a parent does when a child's ``receive`` raises."""

    RESUME = "resume"  # keep the actor and its state, drop the failed message
    RESTART = "restart"  # replace the actor by a fresh one from its factory; the mailbox is kept
    STOP = "stop"  # stop the actor; what is left for it is dead-lettered
    ESCALATE = "escalate"  # fail the parent with the same error


Decider = Callable[[BaseException], Directive]


def always_restart(_: BaseException) -> Directive:
    return Directive.RESTART


class SupervisorStrategy:
    """One-for-one supervision: the decider picks a directive for the failing child only.

    A child restarted more than ``max_restarts`` times within ``within`` seconds is
    stopped instead, so a crash loop ends instead of spinning.
    """

    __slots__ = ("decider", "max_restarts", "within")

    def __init__(
        self,
        decider: Decider = always_restart,
        *,
        max_restarts: int = 10,
        within: float = 60.0,
    ) -> None:
        if max_restarts < 0 or within <= 0:
            raise ValueError("max_restarts must be >= 0 and within > 0 seconds")
        self.decider = decider
        self.max_restarts = max_restarts
        self.within = within

    def decide(self, exc: BaseException, window: RestartWindow, clock: Clock) -> Directive:
        directive = self.decider(exc)
        if directive is Directive.RESTART and not window.admit(
            clock.monotonic(), self.max_restarts, self.within
        ):
            return Directive.STOP
        return directive


class RestartWindow:
    """The restart times of one child, kept only as long as the window needs them."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, now: float, max_restarts: int, within: float) -> bool:
        """Record one more restart at ``now``; False when that exceeds the budget."""
        times = self._times
        while times and now - times[0] > within:
            times.popleft()
        if len(times) >= max_restarts:
            return False
        times.append(now)
        return True
