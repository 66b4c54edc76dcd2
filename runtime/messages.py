"""The messages runtime actors exchange inside one process (passed by reference, never encoded).

Grouped by receiver. Each is a small slotted class: created on the hot path, so
no dataclass machinery and no dict per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors import ActorRef

    from .config import FunctionSpec
    from .instances.base import Instance, Slot
    from .record import ErrorInfo


# --- to a task actor --------------------------------------------------------


class Dispatch:
    """The pool took the task: ``slot`` is reserved for it (None when it expired)."""

    __slots__ = ("expired_after", "ready", "slot")

    def __init__(self, slot: Slot | None, ready: bool, expired_after: float | None = None) -> None:
        self.slot = slot
        self.ready = ready  # the slot's instance can run it now (else: cold start under way)
        self.expired_after = expired_after


class StartAttempt:
    """The instance holding the task's reservation finished starting."""

    __slots__ = ("slot",)

    def __init__(self, slot: Slot) -> None:
        self.slot = slot


class StartFailed:
    """The instance holding the task's reservation could not be created."""

    __slots__ = ("error",)

    def __init__(self, error: ErrorInfo) -> None:
        self.error = error


class AttemptFinished:
    """An attempt ended; exactly one of ``result`` / ``error`` describes how."""

    __slots__ = ("attempt", "error", "interrupted", "result", "retryable")

    def __init__(
        self,
        attempt: int,
        result: bytes | None = None,
        error: ErrorInfo | None = None,
        retryable: bool = True,
        interrupted: str | None = None,
    ) -> None:
        self.attempt = attempt
        self.result = result
        self.error = error
        self.retryable = retryable
        self.interrupted = interrupted  # "stop", "restart", "close", "timeout" or None


class Invalidate:
    """The task can never run (its function was unregistered)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class RequestStop:
    """``rt.stop``: answered with the record once the task is Stopped."""

    __slots__ = ()


class InstanceReplaced:
    """The instance a stopped task ran on has run PreStop and been destroyed."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


class Recover:
    """The runtime restarted and found this task unfinished in a durable store."""

    __slots__ = ()


class RetryDue:
    """The backoff before the next attempt is over."""

    __slots__ = ()


# --- to an instance pool -----------------------------------------------------


class Submit:
    """A task waits for a slot (first try, or a retry after its backoff)."""

    __slots__ = ("enqueued_at", "retry", "task")

    def __init__(self, task: ActorRef, enqueued_at: float, retry: bool = False) -> None:
        self.task = task
        self.enqueued_at = enqueued_at  # monotonic
        self.retry = retry


class SlotFree:
    """An instance slot finished its attempt and can take the next task."""

    __slots__ = ("slot",)

    def __init__(self, slot: Slot) -> None:
        self.slot = slot


class Withdraw:
    """A task stopped before running: drop it from the queue or free its reservation."""

    __slots__ = ("task",)

    def __init__(self, task: ActorRef) -> None:
        self.task = task


class RestartInstance:
    """A Running task was stopped: PreStop and replace its instance."""

    __slots__ = ("slot", "task")

    def __init__(self, task: ActorRef, slot: Slot) -> None:
        self.task = task
        self.slot = slot


class InstanceStarted:
    __slots__ = ("error", "instance", "seconds")

    def __init__(self, instance: Instance, error: ErrorInfo | None, seconds: float | None) -> None:
        self.instance = instance
        self.error = error  # None when the Initializer (if any) succeeded
        self.seconds = seconds  # how long the Initializer ran (None: there is none)


class InstanceCrashed:
    """An instance's worker died or broke the protocol; its attempts are already failed."""

    __slots__ = ("detail", "instance", "protocol")

    def __init__(self, instance: Instance, detail: str, protocol: bool) -> None:
        self.instance = instance
        self.detail = detail
        self.protocol = protocol  # True when it sent bytes that are not a valid frame


class HookDone:
    """A PreFreeze or PreStop hook ended (``error`` says how it failed, if it did)."""

    __slots__ = ("error", "hook", "instance", "seconds")

    def __init__(
        self, instance: Instance, hook: str, error: ErrorInfo | None, seconds: float | None
    ) -> None:
        self.instance = instance
        self.hook = hook
        self.error = error
        self.seconds = seconds  # None when the function has no such hook


class Sweep:
    """The supervisor's lifecycle clock ticked: check deadlines, freeze, idle destruction."""

    __slots__ = ()


class Drain:
    """Stop taking tasks; answer once nothing runs (the runtime is closing)."""

    __slots__ = ("unregister",)

    def __init__(self, unregister: bool = False) -> None:
        self.unregister = unregister


class Shutdown:
    """Run PreStop on every instance and answer when all are gone."""

    __slots__ = ()


class Interrupt:
    """Cut every running attempt short (close timed out)."""

    __slots__ = ()


class DescribeInstances:
    """Answered with a list of InstanceInfo."""

    __slots__ = ()


# --- to the supervisor -------------------------------------------------------


class AddFunction:
    __slots__ = ("entry", "spec")

    def __init__(self, spec: FunctionSpec, entry: Any) -> None:
        self.spec = spec
        self.entry = entry


class RemoveFunction:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Tick:
    __slots__ = ()
