"""The task actor: one task's state machine, from Enqueued to a terminal state.

Every transition goes through :meth:`TaskActor._move`, which checks it against
the lifecycle table, appends an event and writes through the store. The actor
stops itself when the task is terminal, so it lives exactly as long as the task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors import Actor, Reply, TimerHandle

from .context import TaskContext
from .errors import IllegalTransitionError, TaskFinishedError
from .instances.base import Attempt, Slot
from .messages import (
    AttemptFinished,
    Dispatch,
    InstanceReplaced,
    Invalidate,
    Recover,
    RequestStop,
    RestartInstance,
    RetryDue,
    StartAttempt,
    StartFailed,
    Submit,
    Withdraw,
)
from .record import ErrorInfo, TaskRecord
from .registry import FunctionEntry, Services
from .states import FINISHED, NAME, TERMINAL, TRANSITIONS, TaskState, check_transition

S = TaskState


class TaskActor(Actor):
    __slots__ = (
        "attempt_started",
        "entry",
        "in_queue",
        "record",
        "retry_timer",
        "services",
        "slot",
        "stop_replies",
    )

    def __init__(self, record: TaskRecord, entry: FunctionEntry, services: Services) -> None:
        self.record = record
        self.entry = entry
        self.services = services
        self.slot: Slot | None = None  # the slot reserved for it, from Dispatch to attempt end
        self.in_queue = True  # in its pool's queue (a Submit the pool has not dispatched)
        self.retry_timer: TimerHandle | None = None
        self.stop_replies: list[Reply] | None = None  # made only if someone stops it
        self.attempt_started = 0.0  # monotonic start of the current attempt

    def receive(self, message: Any) -> Any:
        return _HANDLERS[type(message)](self, message)

    # transitions ---------------------------------------------------------------

    def _move(self, new: TaskState, detail: str = "") -> None:
        record = self.record
        old = record.status
        if new not in TRANSITIONS[old]:  # the cheap test inline; the table's own check raises
            check_transition(old, new, f"task {record.task_id}")
        metrics = self.entry.metrics
        metrics.exited[old] += 1
        metrics.entered[new] += 1
        services = self.services
        now = services.now()
        record.status = new
        record._events.append((NAME[new], now, detail))
        if new in TERMINAL:
            record.ended_at = now
        if services.store_update is not None:
            services.store_update(record)

    def _finish(self) -> None:
        """The task is terminal: tell the runtime, answer stop requests, and go."""
        self.services.task_finished(self.record, self.entry)
        if self.stop_replies:
            snapshot = self.record.copy()
            for reply in self.stop_replies:
                reply.send(snapshot)
            self.stop_replies = None
        self.stop_self()

    # handlers ---------------------------------------------------------------------

    def _on_dispatch(self, msg: Dispatch) -> None:
        self.in_queue = False
        status = self.record.status
        if status is S.DEQUEUED:  # recovered after a restart: dequeued again
            if msg.expired_after is not None:
                self._move(S.EXPIRED, _expired_detail(msg.expired_after, self.entry))
                self._finish()
                return
        elif status is S.ENQUEUED:
            if msg.expired_after is not None:
                self._move(S.DEQUEUED)
                self._move(S.EXPIRED, _expired_detail(msg.expired_after, self.entry))
                self._finish()
                return
            self._move(S.DEQUEUED, "" if msg.ready else "waiting for a cold start")
        elif status is not S.RETRYING:
            raise IllegalTransitionError(f"task {self.record.task_id}: dispatched while {status}")
        assert msg.slot is not None
        self.slot = msg.slot
        if msg.ready:
            self._run(msg.slot)

    def _on_start_attempt(self, msg: StartAttempt) -> None:
        if self.slot is msg.slot and self.record.status in (S.DEQUEUED, S.RETRYING):
            self._run(msg.slot)

    def _run(self, slot: Slot) -> None:
        record = self.record
        clock = self.services.clock
        instance = slot.instance
        timeout = self.entry.spec.config.timeout
        record.attempts += 1
        number = record.attempts
        now = clock.time()
        if record.started_at is None:
            record.started_at = now
            self.entry.metrics.queue_wait.observe(now - record.created_at)
        self.attempt_started = clock.monotonic()
        record.instance_id = instance.instance_id
        self._move(S.RUNNING, instance.instance_id)
        context = TaskContext(
            record.task_id, record.function, number, now + timeout, instance.context
        )
        deadline = clock.monotonic() + timeout
        instance.run(slot, Attempt(self.ref, number, record.payload_bytes, context, deadline))

    def _on_start_failed(self, msg: StartFailed) -> None:
        self.slot = None
        status = self.record.status
        if status is S.DEQUEUED:
            self.record.error = msg.error
            self._move(S.INVALID, msg.error.message)
            self._finish()
        elif status is S.RETRYING:
            self._submit()  # the retry waits for another instance

    def _on_attempt_finished(self, msg: AttemptFinished) -> None:
        record = self.record
        if msg.attempt != record.attempts or record.status is not S.RUNNING:
            return  # a stopped task's interrupted attempt, or one from before a restart
        self.slot = None
        self.entry.metrics.attempt(
            _outcome(msg), self.services.clock.monotonic() - self.attempt_started
        )
        if msg.error is None:
            record.result_bytes = msg.result
            self._move(S.SUCCEEDED)
            self._finish()
        elif msg.interrupted == "close":
            pass  # the runtime is closing: the attempt is lost, not failed (see close())
        else:
            self._attempt_failed(msg.error, msg.retryable)

    def _attempt_failed(self, error: ErrorInfo, retryable: bool) -> None:
        record = self.record
        config = self.entry.spec.config
        record.error = error
        what = f"attempt {record.attempts} failed: {error.type}: {error.message}"
        if not retryable:
            self._move(S.FAILED, f"{what} (not retryable)")
            self._finish()
        elif record.retries >= config.max_retries:
            self._move(S.FAILED, f"{what}; no retries left (max_retries={config.max_retries})")
            self._finish()
        else:
            record.retries += 1
            self.entry.metrics.retries += 1
            delay = self._backoff(record.retries)
            self._move(S.RETRYING, f"{what}; retry {record.retries} in {delay:.3f} s")
            if delay > 0:
                self.retry_timer = self.schedule(delay, RetryDue())
            else:
                self._submit()

    def _backoff(self, retry: int) -> float:
        config = self.entry.spec.config
        if config.retry_backoff <= 0:
            return 0.0
        ceiling = min(config.retry_backoff * 2.0 ** (retry - 1), config.retry_backoff_max)
        # "equal jitter": at least half the delay, so retries never bunch up at zero
        jitter: float = self.services.random.random()
        return ceiling / 2 + jitter * ceiling / 2

    def _on_retry_due(self, _: RetryDue) -> None:
        if self.retry_timer is not None and self.record.status is S.RETRYING:
            self.retry_timer = None
            self._submit()

    def _submit(self) -> None:
        assert self.entry.pool is not None
        self.in_queue = True
        self.entry.pool.tell(Submit(self.ref, self.services.clock.monotonic(), retry=True))

    def _on_recover(self, _: Recover) -> None:
        """Pick the task up where a crashed runtime left it (docs/stores.md)."""
        record = self.record
        status = record.status
        self.entry.metrics.entered[status] += 1  # this runtime adopts it in that state
        self.in_queue = False
        if status in (S.ENQUEUED, S.DEQUEUED):
            self._note("recovered after a restart: queued again")
            assert self.entry.pool is not None
            self.in_queue = True
            self.entry.pool.tell(Submit(self.ref, self.services.clock.monotonic()))
        elif status is S.RUNNING:
            self._note("recovered after a restart: the attempt under way was lost")
            lost = ErrorInfo("RuntimeRestartedError", "runtime restarted during attempt", "")
            self._attempt_failed(lost, retryable=True)
        elif status is S.RETRYING:
            self._note("recovered after a restart: the retry goes ahead")
            self._submit()
        elif status is S.STOPPING:
            self._move(S.STOPPED, "recovered after a restart: the stop completes")
            self._finish()

    def _note(self, detail: str) -> None:
        """An event that is not a transition (the state stays): recovery steps."""
        record = self.record
        record._events.append((NAME[record.status], self.services.now(), detail))
        if self.services.store_update is not None:
            self.services.store_update(record)

    def _on_invalidate(self, msg: Invalidate) -> None:
        status = self.record.status
        if status is S.ENQUEUED:
            self.in_queue = False
            self._move(S.DEQUEUED, "dequeued to be invalidated")
        elif status is not S.DEQUEUED:
            return  # retries and running attempts of an unregistered function finish
        self.slot = None
        self._move(S.INVALID, msg.reason)
        self._finish()

    def _on_request_stop(self, _: RequestStop) -> Any:
        record = self.record
        status = record.status
        if status is S.STOPPED:
            return record.copy()
        if status in FINISHED:
            self.defer_reply().fail(TaskFinishedError.of(record.task_id, record.status))
            return None
        if status is S.STOPPING:
            self._keep_stop_reply()
            return None
        self._move(S.STOPPING, f"stop requested while {status}")
        pool = self.entry.pool
        assert pool is not None
        if status is S.RUNNING:
            assert self.slot is not None
            self._keep_stop_reply()
            pool.tell(RestartInstance(self.ref, self.slot))
            return None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.in_queue or self.slot is not None:
            pool.tell(Withdraw(self.ref))
        self.slot = None
        self._move(S.STOPPED, f"stopped before running (was {status})")
        self._finish()
        return record.copy()

    def _keep_stop_reply(self) -> None:
        if self.stop_replies is None:
            self.stop_replies = []
        self.stop_replies.append(self.defer_reply())

    def _on_instance_replaced(self, msg: InstanceReplaced) -> None:
        if self.record.status is S.STOPPING:
            self.slot = None
            self._move(S.STOPPED, msg.detail)
            self._finish()


def _outcome(msg: AttemptFinished) -> str:
    """The ``outcome`` label of an attempt: succeeded, failed, timeout, or why it was cut."""
    if msg.error is None:
        return "succeeded"
    if msg.interrupted is None:
        return "failed"
    return msg.interrupted  # timeout, stop, restart, close


def _expired_detail(waited: float, entry: FunctionEntry) -> str:
    max_age = entry.spec.config.max_event_age
    return f"waited {waited:.3f} s in the queue, over max_event_age={max_age} s"


_HANDLERS: dict[type, Callable[[TaskActor, Any], Any]] = {
    Dispatch: TaskActor._on_dispatch,
    StartAttempt: TaskActor._on_start_attempt,
    StartFailed: TaskActor._on_start_failed,
    AttemptFinished: TaskActor._on_attempt_finished,
    RetryDue: TaskActor._on_retry_due,
    Invalidate: TaskActor._on_invalidate,
    RequestStop: TaskActor._on_request_stop,
    InstanceReplaced: TaskActor._on_instance_replaced,
    Recover: TaskActor._on_recover,
}
