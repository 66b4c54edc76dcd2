"""kind="async": coroutine handlers awaited on the runtime's own event loop.

Each slot has one long-lived worker coroutine that awaits handlers inline, one
after another, so an attempt costs no asyncio task of its own. Stop and timeout
cancel the worker's current await; the worker absorbs that cancellation (the
task already heard that its attempt was interrupted), frees the slot and waits
for the next attempt.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .. import codec
from ..errors import ResultEncodingError
from ..hooks import error_info
from .base import NOT_DECODED, Attempt, Instance, Slot

if TYPE_CHECKING:
    from actors import ActorRef

    from ..config import FunctionSpec
    from ..registry import Services

_FAIRNESS = 64  # attempts a worker runs back to back before yielding to the loop


class AsyncInstance(Instance):
    kind = "async"

    def __init__(
        self, spec: FunctionSpec, instance_id: str, pool: ActorRef, services: Services
    ) -> None:
        # Not redundant: compiled by mypyc, a subclass that inherits the __init__ of a base
        # allowing interpreted subclasses runs it twice per instance and leaks every
        # argument (the services, so the whole runtime). tests/test_compiled.py holds this.
        super().__init__(spec, instance_id, pool, services)

    def activate(self) -> None:
        self._workers = [_SlotWorker(self, slot) for slot in self.slots]
        for worker in self._workers:
            worker.task = self.background.start(worker.run(), f"stint-slot-{self.instance_id}")

    def run(self, slot: Slot, attempt: Attempt) -> None:
        self._workers[slot.index].push(attempt)

    def cut(self, slot: Slot, attempt: Attempt, reason: str) -> None:
        self._workers[slot.index].cut(attempt)

    def destroy(self) -> None:
        for worker in getattr(self, "_workers", ()):
            worker.destroy()


class _SlotWorker:
    __slots__ = (
        "cancelling",
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
        # True while a cancellation of ours (for the running attempt) is on its way
        self.cancelling = False
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

    def cut(self, attempt: Attempt) -> None:
        if self.running is attempt and self.task is not None and not self.cancelling:
            self.cancelling = True
            self.task.cancel()
        elif self.pending is attempt:  # never started: nothing to cancel
            self.pending = None
            self.instance.free(self.slot)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        system = self.instance.services.system
        streak = 0
        while not self.destroyed:
            attempt = self.pending
            if attempt is None and streak:
                # Deliver what this attempt's report set off, if it had to queue (the
                # pool frees the slot and hands it the next task) instead of suspending.
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
            await self._attempt(attempt)
            self.running = None
            if self.destroyed:
                return
            self.instance.free(self.slot)
            streak += 1

    def _absorb_cancel(self) -> bool:
        """True if the cancellation was ours for one attempt alone (so the worker goes on).

        Another cancel merged into the same CancelledError (close() cancelling the
        worker) leaves a count behind: then the worker must end, not absorb it.
        """
        if not self.cancelling:
            return False
        self.cancelling = False
        task = asyncio.current_task()
        return task is None or task.uncancel() == 0

    async def _attempt(self, attempt: Attempt) -> None:
        """Await the handler and report its outcome (unless it was cut short meanwhile)."""
        handler = self.instance.spec.handler
        assert callable(handler)  # kind "async" was registered with the function itself
        event = attempt.event
        if event is NOT_DECODED:
            event = codec.decode(attempt.payload)
        try:
            value = await handler(event, attempt.context)
        except asyncio.CancelledError:
            if self.destroyed or not self._absorb_cancel():
                raise
            return  # interrupted: the task has its outcome already
        except Exception as exc:
            self._failed(attempt, exc, retryable=self.instance.spec.config.is_retryable(exc))
            return
        if self.cancelling:  # the handler swallowed our cancellation
            self._absorb_cancel()
            return
        if attempt.done:
            return
        try:
            attempt.result = codec.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            error = ResultEncodingError(
                f"the handler returned a value msgpack cannot encode ({exc}); return only None, "
                "bool, int, float, str, bytes, list and dict values"
            )
            attempt.error = error_info(error)
        self.instance.report(attempt)

    def _failed(self, attempt: Attempt, exc: Exception, *, retryable: bool) -> None:
        if self.cancelling:  # cut short while failing: the interruption is what counts
            self._absorb_cancel()
            return
        if not attempt.done:
            attempt.error = error_info(exc)
            attempt.retryable = retryable
            self.instance.report(attempt)
