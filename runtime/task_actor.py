"""The task actor: one task's state machine, from Enqueued to a terminal state.

Every transition goes through :meth:`TaskActor._move`, which checks it against
the lifecycle table, appends an event and writes through the store. The actor
stops itself when the task is terminal, so it lives exactly as long as the task.

Its pool and the instance running its attempt reach it with guarded direct calls
(``ActorRef.send``) to the public methods below: each runs as one message, in
order with everything else sent to the task. Anything a call carries may be
stale by the time it runs (a reservation voided by a restart, an attempt cut
short), so each method checks before it acts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors import Actor, TimerHandle

from .context import TaskContext
from .destinations import invoke_destination
from .errors import RuntimeClosedError, TaskFinishedError
from .instances.base import NOT_DECODED, Attempt, Slot
from .messages import Recover
from .record import ErrorInfo, TaskRecord
from .registry import FunctionEntry, Services
from .states import FINISHED, NAME, TERMINAL, TRANSITIONS, TaskState, check_transition

# Module-level constants: reading an enum member off its class costs several times a
# global read, and the hot path reads them a dozen times per task.
ENQUEUED = TaskState.ENQUEUED
DEQUEUED = TaskState.DEQUEUED
EXPIRED = TaskState.EXPIRED
INVALID = TaskState.INVALID
RUNNING = TaskState.RUNNING
RETRYING = TaskState.RETRYING
FAILED = TaskState.FAILED
SUCCEEDED = TaskState.SUCCEEDED
STOPPING = TaskState.STOPPING
STOPPED = TaskState.STOPPED

# Where the pool holds a task: in its queue, or as a slot reserved while an instance
# cold-starts. Anywhere else (running, backing off, terminal): None.
QUEUED = "queued"
RESERVED = "reserved"


class TaskActor(Actor):
    __slots__ = (
        "attempt",
        "counted",
        "entry",
        "event",
        "place",
        "record",
        "retry_timer",
        "services",
        "stop_replies",
    )

    def __init__(
        self,
        record: TaskRecord,
        entry: FunctionEntry,
        services: Services,
        event: object = NOT_DECODED,
        counted: bool = True,
    ) -> None:
        self.record = record
        self.entry = entry
        self.services = services
        # The payload as invoke was given it, when it is an immutable scalar (an int, a
        # str, ...): handed to the handler as is, since decoding would only rebuild it.
        self.event = event
        self.attempt: Attempt | None = None  # the attempt under way, until its outcome
        self.place: str | None = QUEUED
        self.counted = counted  # still counted in entry.queued (accepted, not yet dequeued)
        self.retry_timer: TimerHandle | None = None
        self.stop_replies: list[asyncio.Future[TaskRecord]] | None = None  # only if stopped

    def receive(self, message: Any) -> Any:
        if type(message) is Recover:
            self._recover(message.lost_node)
            return None
        raise TypeError(f"a task actor does not handle {type(message).__name__}")

    def on_stop(self) -> None:
        # Stopped by the actor system closing under it: nobody will answer a stop now.
        if self.stop_replies:
            for reply in self.stop_replies:
                if not reply.done():
                    reply.set_exception(RuntimeClosedError("the runtime closed before the stop"))
            self.stop_replies = None

    # transitions ---------------------------------------------------------------

    def _move(self, new: TaskState, detail: str = "", now: float | None = None) -> None:
        record = self.record
        old = record.status
        if new not in TRANSITIONS[old]:  # the cheap test inline; the table's own check raises
            check_transition(old, new, f"task {record.task_id}")
        metrics = self.entry.metrics
        metrics.exited[old] += 1
        metrics.entered[new] += 1
        services = self.services
        if now is None:
            now = services.now()
        record.status = new
        record._events.append((NAME[new], now, detail))
        if new in TERMINAL:
            record.ended_at = now
        update = services.store_update
        if update is not None:
            update(record)
        if services.watched and record.task_id in services.watched:
            services.changed(record.task_id)

    def _finish(self) -> None:
        """The task is terminal: tell the runtime, answer stop requests, and go."""
        self.ref._stop_requested = True  # stop_self(), inlined; first: its pool sees it gone
        config = self.entry.spec.config
        if config.on_success is not None or config.on_failure is not None:
            self._destination(config.on_success, config.on_failure)
        self.services.task_finished(self.record, self.entry)
        if self.stop_replies:
            snapshot = self.record.copy()
            for reply in self.stop_replies:
                if not reply.done():
                    reply.set_result(snapshot)
            self.stop_replies = None

    def _destination(self, on_success: str | None, on_failure: str | None) -> None:
        """Invoke the destination for this end, if any, and say so in an event."""
        said = invoke_destination(
            self.record, on_success, on_failure, self.services.invoke_destination
        )
        if said is not None:
            self._note(said)

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.entry.queued -= 1

    # from the pool ----------------------------------------------------------------

    def dispatched(self, slot: Slot, ready: bool) -> None:
        """The pool reserved ``slot`` for the task; ``ready``: its instance can run it now."""
        if slot.reserved_by is not self.ref:
            return  # the reservation was voided (a restart) while this was on its way
        if self.counted:  # _uncount(), inlined
            self.counted = False
            self.entry.queued -= 1
        status = self.record.status
        if not ready:
            self.place = RESERVED
            if status is ENQUEUED:
                self._move(DEQUEUED, "waiting for a cold start")
            return
        self.place = None
        now = self.services.now()  # one timestamp for Dequeued and Running
        if status is ENQUEUED:
            self._move(DEQUEUED, "", now)
        self._run(slot, now)

    def start_attempt(self, slot: Slot) -> None:
        """The instance holding the task's reservation finished starting."""
        if slot.reserved_by is self.ref and self.place is RESERVED:
            self.place = None
            self._run(slot, self.services.now())

    def expired(self, waited: float) -> None:
        """The pool found the task older than ``max_event_age`` when it got to it."""
        self._uncount()
        self.place = None
        max_age = self.entry.spec.config.max_event_age
        detail = f"waited {waited:.3f} s in the queue, over max_event_age={max_age} s"
        if self.record.status is ENQUEUED:
            self._move(DEQUEUED)
        self._move(EXPIRED, detail)
        self._finish()

    def start_failed(self, error: ErrorInfo) -> None:
        """The instance holding the task's reservation could not be created."""
        self.place = None
        status = self.record.status
        if status is DEQUEUED:
            self.record.error = error
            self._move(INVALID, error.message)
            self._finish()
        elif status is RETRYING:
            self._resubmit()  # the retry waits for another instance

    def invalidate(self, reason: str) -> None:
        """The task can never run here (its function was unregistered)."""
        status = self.record.status
        if self.services.shared and (status is ENQUEUED or status is DEQUEUED):
            self._uncount()
            self._give_back(0.0)  # unregistered on this node only: another node may run it
            return
        if status is ENQUEUED:
            self._move(DEQUEUED, "dequeued to be invalidated")
        elif status is RETRYING and self.place is RESERVED:
            self._resubmit()  # its slot on a starting instance went: it waits for another
            return
        elif status is not DEQUEUED:
            return  # retries and running attempts of an unregistered function finish
        self._uncount()
        self.place = None
        self._move(INVALID, reason)
        self._finish()

    def instance_replaced(self, detail: str) -> None:
        """The instance the task was stopped on is gone (PreStop ran, or it could not)."""
        if self.record.status is STOPPING:
            self.attempt = None
            self._move(STOPPED, detail)
            self._finish()

    # attempts ------------------------------------------------------------------------

    def _run(self, slot: Slot, now: float) -> None:
        record = self.record
        instance = slot.instance
        timeout = self.entry.spec.config.timeout
        number = record.attempts + 1
        started = self.services.clock.monotonic()
        context = TaskContext(
            record.task_id, record.function, number, now + timeout, instance.context
        )
        attempt = Attempt(
            self.ref, number, record._payload, context, started + timeout, slot, started
        )
        attempt.event = self.event
        self.attempt = attempt
        slot.attempt = attempt
        if not instance.reports_start:
            self._begin(attempt, now)
        instance.run(slot, attempt)  # a kind that reports the start: Running comes then

    def _begin(self, attempt: Attempt, now: float) -> None:
        """The attempt really starts (at ``now``, wall clock): Running."""
        record = self.record
        record.attempts = attempt.number
        if record.started_at is None:
            record.started_at = now
            self.entry.metrics.queue_wait.observe(now - record.created_at)
        instance_id = attempt.slot.instance.instance_id
        record.instance_id = instance_id
        self._move(RUNNING, instance_id, now)

    def attempt_started(self, attempt: Attempt, now: float) -> None:
        """A kind that starts attempts on its own (a thread) took this one at ``now``."""
        status = self.record.status
        if attempt is self.attempt and (status is DEQUEUED or status is RETRYING):
            self._begin(attempt, now)

    def attempt_finished(self, attempt: Attempt) -> None:
        """The attempt ended (or was cut short): its outcome is on it."""
        if attempt is not self.attempt:
            return  # one from before a restart
        record = self.record
        status = record.status
        if attempt.claimed_at is not None and (status is DEQUEUED or status is RETRYING):
            # A thread took it, and the outcome overtook the word that it had started:
            # it did start, so Running comes first.
            self._begin(attempt, attempt.claimed_at)
        self.attempt = None
        error = attempt.error
        outcome = "succeeded" if error is None else attempt.interrupted or "failed"
        self.entry.metrics.attempt(outcome, self.services.clock.monotonic() - attempt.started)
        if record.status is not RUNNING:
            return  # Stopping: the stop completes once the instance is replaced
        if error is None:
            record._result = attempt.result
            self._move(SUCCEEDED)
            self._finish()
        elif attempt.interrupted == "close":
            pass  # the runtime is closing: the attempt is lost, not failed (see close())
        else:
            self._attempt_failed(error, attempt.retryable)

    def _attempt_failed(self, error: ErrorInfo, retryable: bool) -> None:
        record = self.record
        config = self.entry.spec.config
        record.error = error
        what = f"attempt {record.attempts} failed: {error.type}: {error.message}"
        if not retryable:
            self._move(FAILED, f"{what} (not retryable)")
            self._finish()
        elif record.retries >= config.max_retries:
            self._move(FAILED, f"{what}; no retries left (max_retries={config.max_retries})")
            self._finish()
        else:
            record.retries += 1
            self.entry.metrics.retries += 1
            delay = self._backoff(record.retries)
            self._move(RETRYING, f"{what}; retry {record.retries} in {delay:.3f} s")
            if self.services.shared:
                self._give_back(delay)  # the backoff waits in the cluster's due set
            elif delay > 0:
                self.retry_timer = self.services.system.scheduler.call_later(
                    delay, self.ref.send, TaskActor.retry_due
                )
            else:
                self._resubmit()

    def _backoff(self, retry: int) -> float:
        config = self.entry.spec.config
        if config.retry_backoff <= 0:
            return 0.0
        ceiling = min(config.retry_backoff * 2.0 ** (retry - 1), config.retry_backoff_max)
        # "equal jitter": at least half the delay, so retries never bunch up at zero
        jitter: float = self.services.random.random()
        return ceiling / 2 + jitter * ceiling / 2

    def retry_due(self) -> None:
        """The backoff before the next attempt is over."""
        if self.retry_timer is not None and self.record.status is RETRYING:
            self.retry_timer = None
            self._resubmit()

    def _resubmit(self, enqueued_at: float | None = None) -> None:
        if self.services.shared:
            self._give_back(0.0)  # any node with a free slot may take it
            return
        pool = self.entry.pool
        assert pool is not None
        self.place = QUEUED
        pool.send(InstancePoolActor.resubmit, self.ref, enqueued_at)

    def _give_back(self, delay: float) -> None:
        """A shared store: hand the task back to the cluster, queued again now or after
        ``delay`` s (a retry's backoff, on the cluster's clock). This node no longer
        holds it, so the actor goes, though the task is not over."""
        self.place = None
        self.ref._stop_requested = True  # stop_self(), as _finish does
        self.services.task_released(self.record, self.entry, delay)

    # stop -----------------------------------------------------------------------------

    def request_stop(self, reply: asyncio.Future[TaskRecord]) -> None:
        """``rt.stop``: ``reply`` gets the record once the task is Stopped."""
        record = self.record
        status = record.status
        if status is STOPPED:
            reply.set_result(record.copy())
            return
        if status in FINISHED:
            reply.set_exception(TaskFinishedError.of(record.task_id, status))
            return
        if self.stop_replies is None:
            self.stop_replies = []
        self.stop_replies.append(reply)
        if status is STOPPING:
            return  # the stop under way answers this one too
        attempt = self.attempt
        if attempt is not None and status is not RUNNING:
            # Handed to an instance that starts it on its own (a thread): take it back,
            # unless it has started meanwhile, in which case it is Running now.
            if not attempt.slot.instance.withdraw(attempt):
                assert attempt.claimed_at is not None
                self._begin(attempt, attempt.claimed_at)
                status = RUNNING
            else:
                self.attempt = None
        self._move(STOPPING, f"stop requested while {status}")
        pool = self.entry.pool
        if pool is None:  # a cluster's task of a function not served here: nothing runs
            self._move(STOPPED, f"stopped before running (was {status})")
            self._finish()
            return
        if status is RUNNING:
            assert self.attempt is not None
            pool.send(InstancePoolActor.restart_for_stop, self.ref, self.attempt)
            return
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        self._uncount()
        self.place = None
        self._move(STOPPED, f"stopped before running (was {status})")
        self._finish()
        # After _finish: the pool now sees the task gone and gives back whatever it held.
        pool.send(InstancePoolActor.withdraw, self.ref)

    # recovery -------------------------------------------------------------------------

    def _recover(self, lost_node: str | None) -> None:
        """Pick the task up where a crashed runtime (or a lost node) left it (docs/stores.md)."""
        record = self.record
        status = record.status
        self.entry.metrics.entered[status] += 1  # this runtime adopts it in that state
        self.place = None
        how = "after a restart" if lost_node is None else f"from lost node {lost_node}"
        self.counted = status is ENQUEUED or status is DEQUEUED
        if self.counted:
            self._note(f"recovered {how}: queued again")
            self._queue_again()
        elif status is RUNNING:
            self._note(f"recovered {how}: the attempt under way was lost")
            if lost_node is None:
                lost = ErrorInfo("RuntimeRestartedError", "runtime restarted during attempt", "")
            else:
                lost = ErrorInfo("NodeLostError", f"node {lost_node} was lost during attempt", "")
            self._attempt_failed(lost, retryable=True)
        elif status is RETRYING:
            self._note(f"recovered {how}: the retry goes ahead")
            self._resubmit()
        elif status is STOPPING:
            self._move(STOPPED, f"recovered {how}: the stop completes")
            self._finish()

    def _queue_again(self) -> None:
        """A recovered queued task waits again: until its due time if it has one still
        ahead, else in the queue, its wait counted from when it was due (or accepted)."""
        record = self.record
        clock = self.services.clock
        now = clock.time()
        since = record.created_at if record.due_at is None else record.due_at
        if self.services.shared:
            self.counted = False
            self.entry.queued -= 1
            self._give_back(max(0.0, since - now))
        elif since > now:
            pool = self.entry.pool
            assert pool is not None
            self.place = QUEUED
            pool.send(InstancePoolActor.hold, self.ref, clock.monotonic() + (since - now))
        else:
            self._resubmit(clock.monotonic() - (now - since))

    def _note(self, detail: str) -> None:
        """An event that is not a transition (the state stays): recovery steps."""
        record = self.record
        services = self.services
        record._events.append((NAME[record.status], services.now(), detail))
        if services.store_update is not None:
            services.store_update(record)
        if services.watched and record.task_id in services.watched:
            services.changed(record.task_id)


# The pool and the task actor call each other's methods: one of the two imports has to
# come after the class it needs is defined.
from .pool import InstancePoolActor  # noqa: E402
