"""What every instance kind shares: slots, bookkeeping, hooks; and the interface the pool uses."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from mypy_extensions import mypyc_attr

from ..context import InstanceContext, TaskContext
from ..errors import AttemptTimeoutError, InstanceRestartedError
from ..hooks import call_hook, hook_timeout
from ..messages import HookDone, InstanceStarted
from ..record import ErrorInfo
from ..states import InstanceState

if TYPE_CHECKING:
    from actors import ActorRef

    from ..config import FunctionSpec
    from ..registry import Services

logger = logging.getLogger("stint")


#: An attempt's ``event`` until someone decodes its payload.
NOT_DECODED: Any = object()


class Attempt:
    """One run of a handler for one task, handed to an instance slot.

    It also carries the attempt's outcome back: whoever ends it first — the kind
    that ran the handler, or the pool cutting it short — fills in the outcome and
    reports it to the task, exactly once (``done``).
    """

    __slots__ = (
        "claimed_at",
        "context",
        "deadline",
        "done",
        "error",
        "event",
        "interrupted",
        "number",
        "payload",
        "result",
        "retryable",
        "slot",
        "started",
        "task",
    )

    def __init__(  # noqa: PLR0917 - made in one place, by the task actor
        self,
        task: ActorRef,
        number: int,
        payload: bytes,
        context: TaskContext,
        deadline: float,
        slot: Slot,
        started: float,
    ) -> None:
        self.task = task
        self.number = number
        # as invoke encoded it: decoded where the handler runs, never re-encoded
        self.payload = payload
        self.event: Any = NOT_DECODED  # the payload's value, when the task already has it
        self.context = context
        self.deadline = deadline  # monotonic, checked by the lifecycle sweep
        self.slot = slot
        self.started = started  # monotonic
        self.done = False  # reported to the task (the outcome below is final)
        self.result: bytes | None = None
        self.error: ErrorInfo | None = None
        self.retryable = True
        self.interrupted: str | None = None  # "stop", "restart", "close", "timeout"
        # kinds that start attempts on their own (a thread): when it did, wall clock
        self.claimed_at: float | None = None


class Slot:
    """Room for one task on an instance (an instance has ``concurrency`` of them)."""

    __slots__ = ("attempt", "index", "instance", "reserved_by")

    def __init__(self, instance: Instance, index: int) -> None:
        self.instance = instance
        self.index = index
        self.reserved_by: ActorRef | None = None  # the task the pool gave the slot to
        self.attempt: Attempt | None = None  # the attempt running in it

    def __repr__(self) -> str:
        return f"<Slot {self.instance.instance_id}/{self.index}>"


HookCallback = Callable[[ErrorInfo | None, float], None]


class InstanceEvent(NamedTuple):
    event: str
    timestamp: float
    detail: str


class InstanceInfo(NamedTuple):
    """What ``rt.instances(name)`` reports of one instance."""

    instance_id: str
    function: str
    kind: str
    state: InstanceState
    in_flight: int
    created_at: float
    last_used_at: float
    tasks_served: int
    events: tuple[InstanceEvent, ...]
    abandoned: bool = False  # destroyed, but its thread has not ended yet


# The thread and process kinds stay interpreted (pykka, subprocesses) and subclass it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Instance:
    """A warm copy of a function: it runs the Initializer once, then up to ``concurrency`` tasks.

    The pool actor owns it and calls these methods from ``receive`` only; anything
    that waits (hooks, handlers) runs in background tasks and reports back to the
    pool as a message.
    """

    kind: ClassVar[str]
    #: True when a timed-out attempt cannot be cut short in place (a thread, a process):
    #: the pool then replaces the instance, PreStop first.
    restart_on_timeout: ClassVar[bool] = False
    #: Attempts an instance takes beyond ``concurrency``, waiting their turn where it runs
    #: them (so it never waits for the loop between two). The pool hands them over only
    #: when every instance runs ``concurrency`` already, and takes back any that waits a
    #: tick behind a slow attempt while another instance has room.
    prefetch: ClassVar[int] = 0
    #: The same on a shared store (a cluster), where a task waiting here is one that an
    #: idle node could have run: kept small.
    shared_prefetch: ClassVar[int] = 0
    #: True when the kind says itself when an attempt really starts (Running comes then).
    reports_start: ClassVar[bool] = False

    def __init__(
        self,
        spec: FunctionSpec,
        instance_id: str,
        pool: ActorRef,
        services: Services,
    ) -> None:
        self.spec = spec
        self.instance_id = instance_id
        self.pool = pool
        self.services = services
        self.clock = clock = services.clock
        self.background = services.background
        self.context = InstanceContext(instance_id, spec.name, self.kind)
        self.state = InstanceState.STARTING
        extra = self.shared_prefetch if services.shared else self.prefetch
        self.slots = [Slot(self, i) for i in range(spec.config.concurrency + extra)]
        self.in_flight = 0
        self.tasks_served = 0
        self.created_at = clock.time()
        self.started_at = clock.monotonic()  # for the start-time histogram
        self.last_used = self.started_at  # monotonic: when it last had nothing to do
        self.hook_running: str | None = None  # "pre_freeze" / "pre_stop" while one runs
        self.replace = False  # replace it with a fresh instance once it is gone (restart)
        self.abandoned = False  # destroyed while its code would not end
        self.stop_reason = ""  # why it is going, as a metric label: idle, stop, close, ...
        self.stop_detail = ""
        self.events: deque[InstanceEvent] = deque(maxlen=64)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instance_id} {self.state}>"

    @property
    def accepting(self) -> bool:
        """True when a free slot of this instance may take a task now."""
        return self.hook_running is None and self.state in _ACCEPTING

    def note(self, event: str, detail: str = "", *, warn: bool = False) -> None:
        self.events.append(InstanceEvent(event, self.clock.time(), detail))
        log = logger.warning if warn else logger.debug
        log("instance %s: %s %s", self.instance_id, event, detail)

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            self.instance_id,
            self.spec.name,
            self.kind,
            self.state,
            self.in_flight,
            self.created_at,
            self.clock.time() - (self.clock.monotonic() - self.last_used),
            self.tasks_served,
            tuple(self.events),
            self.abandoned,
        )

    # attempts: outcomes go to the task, freed slots to the pool -----------------

    def report(self, attempt: Attempt) -> None:
        """Give the task the attempt's outcome (already filled in), unless it has it already."""
        if not attempt.done:
            attempt.done = True
            attempt.task.send(self.services.attempt_finished, attempt)

    def report_interrupted(self, attempt: Attempt, reason: str) -> None:
        if not attempt.done:
            attempt.error = interruption_error(reason, attempt, self)
            attempt.interrupted = reason
            self.report(attempt)

    def report_to_pool(self, message: object) -> None:
        """Tell the pool how background work of this instance ended (a hook, a start, a
        crash). A pool that has gone meanwhile (its function unregistered and done) has
        no use for it: nothing is sent, so nothing becomes a dead letter."""
        pool = self.pool
        if pool.is_alive:
            pool.tell(message)

    def free(self, slot: Slot) -> None:
        """The slot's attempt has really ended where it ran: the pool may reuse the slot."""
        self.pool.send(self.services.slot_free, slot)

    def interrupt(self, slot: Slot, reason: str) -> None:
        """Cut the attempt in ``slot`` short (``reason``: stop, restart, timeout, close).

        The task hears at once that the attempt was interrupted; the kind then ends
        it where it runs (:meth:`cut`), and frees the slot once it really has.
        """
        attempt = slot.attempt
        if attempt is None or attempt.done:
            return
        attempt.context.request_stop()
        self.report_interrupted(attempt, reason)
        self.cut(slot, attempt, reason)

    # the lifecycle, driven by the pool ------------------------------------------

    def start(self) -> None:
        """Bring the instance up and run the Initializer (if any); the pool hears
        ``InstanceStarted`` when it is done, with the error if it failed."""
        hook = self.spec.config.initializer
        if hook is None:
            self.report_to_pool(InstanceStarted(self, None, None))
            return
        self.note("initializer", "started")
        self._execute_hook(
            "initializer",
            hook,
            self.spec.config.initializer_timeout,
            lambda error, seconds: self.report_to_pool(InstanceStarted(self, error, seconds)),
        )

    def freeze(self) -> None:
        """Run PreFreeze, then freeze; the pool hears ``HookDone('pre_freeze')``."""
        self._run_hook(
            "pre_freeze", self.spec.config.pre_freeze, self.spec.config.pre_freeze_timeout
        )

    def stop(self, reason: str, detail: str = "") -> None:
        """Run PreStop; the pool hears ``HookDone('pre_stop')`` and then calls :meth:`destroy`.

        ``reason`` is one of the ``stint_instance_stops_total`` reasons.
        """
        self.state = InstanceState.STOPPING
        self.stop_reason = reason
        self.stop_detail = detail or reason
        self.note("stopping", self.stop_detail)
        self._run_hook("pre_stop", self.spec.config.pre_stop, self.spec.config.pre_stop_timeout)

    def _run_hook(self, name: str, hook: Any, timeout: float) -> None:
        self.hook_running = name
        if hook is None:
            self.report_to_pool(HookDone(self, name, None, None))
            return
        self._execute_hook(
            name,
            hook,
            timeout,
            lambda error, seconds: self.report_to_pool(HookDone(self, name, error, seconds)),
        )

    def _answer_once(self, name: str, timeout: float, done: HookCallback) -> HookCallback:
        """Wrap ``done`` for a hook that runs out of the loop's reach (a thread, a process):
        it answers once — with the hook's outcome, or a timeout error after ``timeout``."""
        answered = False

        def finish(error: ErrorInfo | None, seconds: float) -> None:
            nonlocal answered
            if not answered:  # a late outcome after the timeout is dropped
                answered = True
                timer.cancel()
                done(error, seconds)

        timer = self.services.system.scheduler.call_later(
            timeout, lambda: finish(hook_timeout(name, timeout), timeout)
        )
        return finish

    def _execute_hook(self, name: str, hook: Any, timeout: float, done: HookCallback) -> None:
        """Run ``hook(context)`` where this kind runs user code; ``done(error, seconds)`` on
        the loop. The default runs it as an asyncio task (kind "async")."""

        async def run() -> None:
            started = time.perf_counter()
            error = await call_hook(hook, self.context, name, timeout)
            done(error, time.perf_counter() - started)

        self.background.start(run(), name=f"stint-{name}-{self.instance_id}")

    # what each kind implements ----------------------------------------------------

    def activate(self) -> None:
        """The Initializer succeeded: get ready to run tasks."""
        raise NotImplementedError

    def run(self, slot: Slot, attempt: Attempt) -> None:
        """Start ``attempt`` in ``slot`` (``slot.attempt`` is set already); when it ends,
        fill in its outcome, :meth:`report` it and :meth:`free` the slot."""
        raise NotImplementedError

    def withdraw(self, attempt: Attempt) -> bool:
        """Take back an attempt handed over but not started (it will never run).

        True if it had not started (now it never will); False if it has. Kinds whose
        attempts start as soon as they are handed over always answer False.
        """
        return False

    def cut(self, slot: Slot, attempt: Attempt, reason: str) -> None:
        """End an attempt already reported as interrupted, where it runs; free the slot
        once it has ended (or at once, if the kind cannot tell)."""
        raise NotImplementedError

    def frozen(self) -> None:
        """PreFreeze is done: actually freeze (a no-op where there is nothing to pause)."""

    def thaw(self) -> None:
        """Resume a frozen instance before it takes a task."""

    def destroy(self) -> None:
        """Tear the instance down at once (PreStop, if due, has already run).

        A kind whose code cannot be stopped sets ``abandoned`` when it is still running.
        """
        raise NotImplementedError

    def still_running(self) -> bool:
        """After an abandoning ``destroy``: is its code still running somewhere?"""
        return False


_ACCEPTING = frozenset({InstanceState.READY, InstanceState.BUSY, InstanceState.FROZEN})


def interruption_error(reason: str, attempt: Attempt, instance: Instance) -> ErrorInfo:
    """The error recorded for an attempt cut short by the runtime (shared by every kind)."""
    exc: Exception
    if reason == "timeout":
        timeout = instance.spec.config.timeout
        exc = AttemptTimeoutError(
            f"attempt {attempt.number} ran past the function's timeout of {timeout} s; "
            "make the handler faster or raise 'timeout'"
        )
    elif reason == "stop":
        exc = InstanceRestartedError("the task was stopped while running")
    else:
        exc = InstanceRestartedError(
            f"instance {instance.instance_id} was {'closed' if reason == 'close' else 'restarted'} "
            f"({instance.stop_detail or reason}) while this attempt ran; it is retried by the "
            "normal rules"
        )
    return ErrorInfo(type(exc).__name__, str(exc), "")
