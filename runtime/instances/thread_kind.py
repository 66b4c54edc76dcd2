"""kind="thread": blocking handlers, each instance a pykka ThreadingActor (one thread).

The instance's thread runs the Initializer, the handler (one task at a time) and
PreFreeze / PreStop, in the order the pool hands them over. It pulls its next item
itself from the instance's inbox, so it never waits for the event loop between two
tasks: the pool keeps one attempt waiting there while another runs (one slot more
than ``concurrency``). What the thread reports — an attempt started (with its own
timestamp), an attempt's outcome, a hook's — reaches the loop in batches: one
``call_soon_threadsafe`` per batch, not per task (:class:`ThreadReports`).
Nothing here waits on a pykka future (whose ``__await__`` would block the loop).

An attempt waiting in the inbox has not started: its task is still Dequeued (or
Retrying), a stop takes it back out at once, and a restart of the instance sends
it elsewhere instead of failing it. The thread claims an attempt under the inbox's
lock, so the loop always knows which side of that line an attempt is on.

A thread cannot be killed. On stop or timeout the attempt's ``stop_requested``
flag is set and the attempt is reported at once, and the instance is replaced.
A PreStop, if there is one, runs on the thread after the handler returns and is
waited for up to ``pre_stop_timeout``; without one there is nothing to wait for. A
thread still busy after ``pre_stop_timeout`` is abandoned: counted, listed by
``rt.instances()`` until it ends, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from .. import codec
from ..errors import ResultEncodingError
from ..hooks import error_info
from ..messages import CodeReturned
from ..states import InstanceState
from .base import NOT_DECODED, Attempt, HookCallback, Instance, Slot

logger = logging.getLogger("stint")

Outcome = tuple[bool, Any]  # (ok, value or exception)
Report = tuple[Callable[..., None], tuple[Any, ...]]  # run on the loop: fn(*args)
Pending = tuple[list[Report], int]  # where a report waits for the loop


class ThreadReports:
    """What instance threads tell the loop, delivered in batches.

    A thread appends a report and, only if no flush is scheduled yet, schedules one
    with ``call_soon_threadsafe``: the busier the threads, the bigger the batches.
    One per runtime, shared by every thread-kind instance.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[Report] = []
        self._scheduled = False

    def put(self, fn: Callable[..., None], *args: Any) -> Pending:
        """From a thread: run ``fn(*args)`` on the loop, in order with the other reports.

        Returns where the report waits, for :meth:`replace`.
        """
        with self._lock:
            items = self._items
            items.append((fn, args))
            pending = (items, len(items) - 1)  # under the lock: other threads append too
            if self._scheduled:
                return pending
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._flush)
        return pending

    def replace(self, pending: Pending, fn: Callable[..., None], *args: Any) -> None:
        """From a thread: ``fn(*args)`` instead of the report ``pending`` if the loop has
        not taken that one yet (one report where there would be two), else after it."""
        items, index = pending
        with self._lock:
            if items is self._items:
                items[index] = (fn, args)
                return
        self.put(fn, *args)

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, args in items:
            try:
                fn(*args)
            except Exception:  # one bad report must not lose the rest of the batch
                logger.exception("stint: a thread report failed on the loop")


class _Hook:
    __slots__ = ("done", "fn")

    def __init__(self, fn: Callable[..., Any], done: Callable[[Outcome, float], None]) -> None:
        self.fn = fn
        self.done = done


_EXIT = object()  # the last item a thread takes


class _Inbox:
    """What one instance's thread does next, shared with the loop under one lock.

    ``wake`` is a binary semaphore (a lock held while nobody waits): the thread
    blocks on it only when the inbox is empty, and whoever puts an item then
    releases it once.
    """

    __slots__ = ("items", "lock", "waiting", "wake")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.lock = threading.Lock()
        self.waiting = False
        self.wake = threading.Lock()
        self.wake.acquire()

    def put(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)
            if self.waiting:
                self.waiting = False
                self.wake.release()

    def take(self, clock_time: Callable[[], float]) -> Any:
        """The next item (blocking); an attempt is claimed, and stamped, as it is taken."""
        while True:
            with self.lock:
                if self.items:
                    item = self.items.popleft()
                    if type(item) is Attempt:
                        item.claimed_at = clock_time()
                    return item
                self.waiting = True
            self.wake.acquire()

    def withdraw(self, attempt: Attempt) -> bool:
        """Take back an attempt the thread has not claimed; False if it has (it runs)."""
        with self.lock:
            if attempt.claimed_at is not None:
                return False
            with contextlib.suppress(ValueError):
                self.items.remove(attempt)
            return True


class _Thread(pykka.ThreadingActor):
    """The instance's thread: one message puts it in its pull loop until told to exit."""

    # An abandoned thread (a handler that ignores its stop flag) must never keep the
    # embedding process from exiting.
    use_daemon_thread = True

    def __init__(self, instance: ThreadInstance) -> None:
        super().__init__()
        self._instance = instance

    def on_receive(self, message: Any) -> None:
        instance = self._instance
        inbox = instance.inbox
        reports = instance.reports
        clock = instance.clock
        handler = instance.spec.handler
        while True:
            item = inbox.take(clock.time)
            if item is _EXIT:
                return
            if type(item) is Attempt:
                started = clock.monotonic()
                pending = reports.put(instance.attempt_started, item, item.claimed_at, started)
                outcome = _call(_run_handler, handler, item)
                # a short handler's outcome replaces the word of its start, not yet delivered
                reports.replace(pending, instance.attempt_ran, item, started, outcome)
            else:
                started = time.perf_counter()
                outcome = _call(item.fn, instance.context)
                reports.put(item.done, outcome, time.perf_counter() - started)


def _call(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return (True, fn(*args))
    except BaseException as exc:  # everything user code raises goes back to the loop
        return (False, exc)


def _run_handler(handler: Callable[..., Any], attempt: Attempt) -> bytes:
    """On the instance's thread: decode, the handler, then the result's encoding."""
    event = attempt.event
    if event is NOT_DECODED:
        event = codec.decode(attempt.payload)
    value = handler(event, attempt.context)
    try:
        return codec.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ResultEncodingError(
            f"the handler returned a value msgpack cannot encode ({exc}); return only None, "
            "bool, int, float, str, bytes, list and dict values"
        ) from None


class ThreadInstance(Instance):
    kind = "thread"
    restart_on_timeout = True
    # Attempts waiting in the inbox while another runs, once every instance is busy: a
    # thread then takes several in a row without waiting for the loop (measured: 1 -> 8
    # cut its voluntary context switches per task from ~1.5 to ~0.3).
    prefetch = 8
    shared_prefetch = 1
    reports_start = True

    def start(self) -> None:
        self.inbox = _Inbox()
        self.reports = self.services.thread_reports()
        self._busy = 0  # items put in the inbox and not yet reported back
        self._ref = _Thread.start(self)
        self._ref.tell(None)  # into the pull loop
        super().start()

    def _execute_hook(self, name: str, hook: Any, timeout: float, done: HookCallback) -> None:
        finish = self._answer_once(name, timeout, done)

        def back(outcome: Outcome, seconds: float) -> None:
            ok, value = outcome
            self._returned()
            finish(None if ok else error_info(value), seconds)

        self._busy += 1
        self.inbox.put(_Hook(hook, back))

    def activate(self) -> None:
        pass

    def run(self, slot: Slot, attempt: Attempt) -> None:
        attempt.deadline = float("inf")  # the timeout counts from when the thread starts it
        self._busy += 1
        self.inbox.put(attempt)

    def withdraw(self, attempt: Attempt) -> bool:
        if attempt.claimed_at is None and self.inbox.withdraw(attempt):
            if not attempt.done:
                attempt.done = True  # it will never run: nothing more to report
                self._busy -= 1
            return True
        return False

    def attempt_started(self, attempt: Attempt, wall: float, monotonic: float) -> None:
        """On the loop: the thread took ``attempt`` at ``wall`` (its own reading)."""
        if attempt.done:
            return
        attempt.started = monotonic
        attempt.deadline = monotonic + self.spec.config.timeout
        attempt.task.send(self.services.attempt_started, attempt, wall)

    def attempt_ran(self, attempt: Attempt, monotonic: float, outcome: Outcome) -> None:
        """On the loop: the attempt started (at ``monotonic``) and ended, in one report;
        the task applies Running (at the thread's ``claimed_at``) before the outcome."""
        attempt.started = monotonic  # as attempt_started would have set it
        self.attempt_ended(attempt, outcome)

    def attempt_ended(self, attempt: Attempt, outcome: Outcome) -> None:
        """On the loop: the handler returned or raised."""
        self._returned()
        if attempt.done:
            return  # interrupted: reported, and its slot freed, already
        ok, value = outcome
        if ok:
            attempt.result = value
        else:
            attempt.error = error_info(value)
            attempt.retryable = self.spec.config.is_retryable(value)
        self.report(attempt)
        self.free(attempt.slot)

    def _returned(self) -> None:
        self._busy -= 1
        if not self._busy and self.state is InstanceState.STOPPED:
            self.report_to_pool(CodeReturned(self))  # it was retiring: now it has ended

    def cut(self, slot: Slot, attempt: Attempt, reason: str) -> None:
        # A thread cannot be interrupted: the flag is set, the slot is given up now, and
        # the pool replaces the instance (its thread ends once the handler returns).
        self.free(slot)

    def destroy(self) -> None:
        ref = getattr(self, "_ref", None)
        if ref is None:
            return
        self.inbox.put(_EXIT)  # after whatever is queued: the thread ends once it gets there
        ref.stop(block=False)

    def still_running(self) -> bool:
        return getattr(self, "_busy", 0) > 0
