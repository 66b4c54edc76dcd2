"""kind="async": coroutine handlers awaited on the runtime's own event loop.

Each slot has one long-lived worker coroutine that awaits handlers inline, one
after another, so an attempt costs no asyncio task of its own. Stop and timeout
cancel the worker's current await; the worker absorbs that cancellation, reports
the attempt as interrupted and waits for the next one.
"""

from __future__ import annotations

import asyncio

from .. import codec
from ..errors import (
    AttemptTimeoutError,
    InstanceRestartedError,
    NonRetryableError,
    ResultEncodingError,
)
from ..hooks import error_info
from ..messages import AttemptFinished, SlotFree
from ..record import ErrorInfo
from .base import Attempt, Instance, Slot

_FAIRNESS = 64  # attempts a worker runs back to back before yielding to the loop


class AsyncInstance(Instance):
    kind = "async"

    def activate(self) -> None:
        self._workers = [_SlotWorker(self, slot) for slot in self.slots]
        for worker in self._workers:
            worker.task = self.background.start(worker.run(), f"stint-slot-{self.instance_id}")

    def run(self, slot: Slot, attempt: Attempt) -> None:
        slot.attempt = attempt
        self._workers[slot.index].push(attempt)

    def interrupt(self, slot: Slot, reason: str) -> None:
        if slot.attempt is not None:
            slot.attempt.context.request_stop()
            self._workers[slot.index].interrupt(slot.attempt, reason)

    def destroy(self) -> None:
        for worker in getattr(self, "_workers", ()):
            worker.destroy()


class _SlotWorker:
    __slots__ = (
        "cancel_reason",
        "destroyed",
        "instance",
        "pending",
        "running",
        "slot",
        "task",
        "waiter",
    )

    def __init__(self, instance: AsyncInstance, slot: Slot) -> None:
        self.instance = instance
        self.slot = slot
        self.pending: Attempt | None = None
        self.running: Attempt | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        # Set by destroy. Its cancel may merge with an attempt's interrupt into one
        # CancelledError, so the worker must not take that for the interrupt alone.
        self.destroyed = False

    def destroy(self) -> None:
        self.destroyed = True
        if self.task is not None:
            self.task.cancel()

    def push(self, attempt: Attempt) -> None:
        self.pending = attempt
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def interrupt(self, attempt: Attempt, reason: str) -> None:
        if self.running is attempt and self.task is not None and self.cancel_reason is None:
            self.cancel_reason = reason
            self.task.cancel()
        elif self.pending is attempt:  # not started yet: report it without running it
            self.pending = None
            self.cancel_reason = None
            self._report(attempt, _interrupted(attempt, reason, self.instance))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        system = self.instance.services.system
        streak = 0
        while not self.destroyed:
            attempt = self.pending
            if attempt is None and streak:
                # Deliver what this attempt's report set off (the pool frees the slot
                # and dispatches the next task to it) instead of suspending for it.
                system.run_queued()
                attempt = self.pending
            if attempt is None or streak >= _FAIRNESS:
                streak = 0
                if attempt is not None:  # handlers that never suspend: let others run
                    await asyncio.sleep(0)
                    continue
                self.waiter = loop.create_future()
                try:
                    await self.waiter
                except asyncio.CancelledError:
                    if self.destroyed or not self._absorb_cancel():
                        return  # the instance is being destroyed
                finally:
                    self.waiter = None
                continue
            self.pending = None
            self.running = attempt
            outcome = await self._attempt(attempt)
            self.running = None
            self._report(attempt, outcome)
            streak += 1

    def _report(self, attempt: Attempt, outcome: AttemptFinished) -> None:
        attempt.task.tell(outcome)
        self.instance.pool.tell(SlotFree(self.slot))

    def _absorb_cancel(self) -> bool:
        """True if the cancellation was ours for one attempt (so the worker goes on)."""
        if self.cancel_reason is None:
            return False
        self.cancel_reason = None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    async def _attempt(self, attempt: Attempt) -> AttemptFinished:
        handler = self.instance.spec.handler
        assert callable(handler)  # kind "async" was registered with the function itself
        try:
            value = await handler(codec.decode(attempt.payload), attempt.context)
        except asyncio.CancelledError:
            reason = self.cancel_reason
            if not self._absorb_cancel() or reason is None:
                raise
            return _interrupted(attempt, reason, self.instance)
        except NonRetryableError as exc:
            return self._finished_by_error(attempt, exc, retryable=False)
        except Exception as exc:
            return self._finished_by_error(attempt, exc, retryable=True)
        reason = self.cancel_reason
        if reason is not None:  # the handler swallowed our cancellation
            self._absorb_cancel()
            return _interrupted(attempt, reason, self.instance)
        try:
            data = codec.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            error = ResultEncodingError(
                f"the handler returned a value msgpack cannot encode ({exc}); return only None, "
                "bool, int, float, str, bytes, list and dict values"
            )
            return AttemptFinished(attempt.number, error=error_info(error))
        return AttemptFinished(attempt.number, result=data)

    def _finished_by_error(
        self, attempt: Attempt, exc: Exception, *, retryable: bool
    ) -> AttemptFinished:
        reason = self.cancel_reason
        if reason is not None:  # cut short while failing: the interruption is what counts
            self._absorb_cancel()
            return _interrupted(attempt, reason, self.instance)
        return AttemptFinished(attempt.number, error=error_info(exc), retryable=retryable)


def _interrupted(attempt: Attempt, reason: str, instance: Instance) -> AttemptFinished:
    return AttemptFinished(
        attempt.number, error=interruption_error(reason, attempt, instance), interrupted=reason
    )


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
