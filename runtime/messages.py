"""The messages runtime actors exchange inside one process (passed by reference, never encoded).

The happy path of a task does not use messages: the pool, the task actor and the
instance hand work to each other with guarded direct calls (``ActorRef.send``),
each a method of the receiving actor. What is left here is everything external
to that path — lifecycle signals from background work, the lifecycle clock,
closing, recovery and introspection — grouped by receiver. Each is a small
slotted class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors import ActorRef

    from .config import FunctionSpec
    from .instances.base import Instance
    from .record import ErrorInfo


# --- to a task actor --------------------------------------------------------


class Recover:
    """The task was found unfinished: after a restart on a durable store, or held by a
    node of the cluster that is gone (``lost_node``)."""

    __slots__ = ("lost_node",)

    def __init__(self, lost_node: str | None = None) -> None:
        self.lost_node = lost_node


# --- to an instance pool -----------------------------------------------------


class Wake:
    """New tasks wait in the function's inbox (one Wake per batch of invokes)."""

    __slots__ = ()


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


class CodeReturned:
    """A destroyed instance's code returned at last (a thread that was still busy)."""

    __slots__ = ("instance",)

    def __init__(self, instance: Instance) -> None:
        self.instance = instance


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


class Go:
    """From the supervisor to a retired pool: nothing more will be sent to it; stop."""

    __slots__ = ()


class DescribeInstances:
    """Answered with a list of InstanceInfo."""

    __slots__ = ()


class Running:
    """Answered with the number of attempts running now (what close waits for)."""

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


class PoolRetired:
    """An unregistered function's pool has nothing left: stop sweeping it, let it go."""

    __slots__ = ("pool",)

    def __init__(self, pool: ActorRef) -> None:
        self.pool = pool
