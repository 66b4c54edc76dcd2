"""What handlers and hooks receive: the task context and the instance context."""

from __future__ import annotations

import threading
import time
from typing import Any


class InstanceContext:
    """Passed to Initializer / PreFreeze / PreStop, and reachable from every task.

    ``state`` lives exactly as long as the instance: put a connection pool or a
    loaded model there in the Initializer and use it from every task it serves.
    """

    __slots__ = ("function", "instance_id", "kind", "state")

    def __init__(self, instance_id: str, function: str, kind: str) -> None:
        self.instance_id = instance_id
        self.function = function
        self.kind = kind
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<InstanceContext {self.instance_id} of {self.function}>"


_EVENT_LOCK = threading.Lock()


class TaskContext:
    """The second argument of every handler call: which task, which attempt, how long."""

    __slots__ = ("_stop", "_stopped", "attempt", "deadline", "function", "instance", "task_id")

    def __init__(
        self,
        task_id: str,
        function: str,
        attempt: int,
        deadline: float,
        instance: InstanceContext,
    ) -> None:
        self.task_id = task_id
        self.function = function
        #: 1 for the first attempt, 2 for the first retry, ...
        self.attempt = attempt
        #: Epoch seconds after which this attempt counts as timed out.
        self.deadline = deadline
        self.instance = instance
        self._stopped = False
        # made only if a handler asks for it: a plain flag is all most attempts need
        self._stop: threading.Event | None = None

    @property
    def stop_requested(self) -> bool:
        """True once the runtime wants this attempt to end (stop, timeout, restart, close).

        A blocking handler (kind "thread") should check it between steps and return
        early; an async handler is cancelled instead, and sees it set as well.
        """
        return self._stopped

    @property
    def stop_event(self) -> threading.Event:
        """The flag behind :attr:`stop_requested`, to ``wait(timeout)`` on between steps."""
        with _EVENT_LOCK:  # a handler thread and the loop may both get here first
            if self._stop is None:
                self._stop = threading.Event()
                if self._stopped:
                    self._stop.set()
            return self._stop

    def request_stop(self) -> None:
        """Ask the attempt to end (the runtime does, on stop, timeout, restart and close)."""
        with _EVENT_LOCK:
            self._stopped = True
            if self._stop is not None:
                self._stop.set()

    def remaining(self) -> float:
        """Seconds left before the attempt's deadline (never negative)."""
        return max(0.0, self.deadline - time.time())

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id} attempt {self.attempt}>"
