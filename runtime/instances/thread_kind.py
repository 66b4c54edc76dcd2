"""kind="thread": blocking handlers, each instance a pykka ThreadingActor (one thread).

The instance's thread runs the Initializer, the handler (one task at a time) and
PreFreeze / PreStop. Work goes to it with ``tell`` and comes back to the event
loop with ``loop.call_soon_threadsafe``; nothing here waits on a pykka future
(whose ``__await__`` would block the loop).

A thread cannot be killed. On stop or timeout the attempt's ``stop_requested``
flag is set and the attempt is reported at once; PreStop is queued on the thread
(it runs when the handler returns) and the instance is replaced. If the thread
is still busy when ``pre_stop_timeout`` runs out, it is abandoned: counted, listed
by ``rt.instances()`` until it ends, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pykka

from .. import codec
from ..errors import NonRetryableError, ResultEncodingError
from ..hooks import error_info
from ..messages import AttemptFinished, HookDone
from ..record import ErrorInfo
from .async_kind import interruption_error
from .base import Attempt, HookCallback, Instance, Slot

Outcome = tuple[bool, Any]  # (ok, value or exception)


class _Thread(pykka.ThreadingActor):
    """The instance's thread: runs what it is told, in order, and reports back."""

    # An abandoned thread (a handler that ignores its stop flag) must never keep the
    # embedding process from exiting.
    use_daemon_thread = True

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def on_receive(self, message: Any) -> None:
        fn, args, reply = message
        started = time.perf_counter()
        try:
            outcome: Outcome = (True, fn(*args))
        except BaseException as exc:  # everything user code raises goes back to the loop
            outcome = (False, exc)
        seconds = time.perf_counter() - started
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(reply, outcome, seconds)


def _call_handler(handler: Callable[..., Any], payload: bytes, context: Any) -> bytes:
    """Runs on the instance's thread: decode, the handler, then the result's encoding."""
    value = handler(codec.decode(payload), context)
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

    def _thread(self) -> pykka.ActorRef[_Thread]:
        thread: pykka.ActorRef[_Thread] | None = getattr(self, "_ref", None)
        if thread is None:
            thread = self._ref = _Thread.start(self.services.system.loop)
            self._busy = 0  # jobs told to the thread and not reported back
        return thread

    def start(self) -> None:
        self._thread()
        super().start()

    def _on_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], reply: Callable[[Outcome, float], None]
    ) -> None:
        self._busy += 1

        def back(outcome: Outcome, seconds: float) -> None:
            self._busy -= 1
            reply(outcome, seconds)

        self._thread().tell((fn, args, back))

    def _run_hook(self, name: str, hook: Any, timeout: float) -> None:
        if hook is None and name == "pre_stop":
            # Even without a PreStop, the instance goes only once its thread has finished
            # what it runs (a handler told to stop), for at most pre_stop_timeout.
            self.hook_running = name
            self._execute_hook(
                name,
                _nothing,
                timeout,
                lambda error, _: self.pool.tell(
                    HookDone(self, name, error and _still_busy(timeout), None)
                ),
            )
            return
        super()._run_hook(name, hook, timeout)

    def _execute_hook(self, name: str, hook: Any, timeout: float, done: HookCallback) -> None:
        finish = self._answer_once(name, timeout, done)

        def back(outcome: Outcome, seconds: float) -> None:
            ok, value = outcome
            finish(None if ok else error_info(value), seconds)

        self._on_thread(hook, (self.context,), back)

    def activate(self) -> None:
        self._reported: set[Attempt] = set()

    def run(self, slot: Slot, attempt: Attempt) -> None:
        slot.attempt = attempt
        attempt.context.stop_event  # noqa: B018 - made here, on the loop, before the thread reads it

        def finished(outcome: Outcome, seconds: float) -> None:
            if attempt in self._reported:
                self._reported.discard(attempt)  # interrupted and reported already
                return
            self._report(slot, attempt, _finished(attempt, outcome))

        args = (self.spec.handler, attempt.payload, attempt.context)
        self._on_thread(_call_handler, args, finished)

    def interrupt(self, slot: Slot, reason: str) -> None:
        attempt = slot.attempt
        if attempt is None or attempt in self._reported:
            return
        attempt.context.request_stop()
        self._reported.add(attempt)
        error = interruption_error(reason, attempt, self)
        self._report(
            slot, attempt, AttemptFinished(attempt.number, error=error, interrupted=reason)
        )

    def _report(self, slot: Slot, attempt: Attempt, outcome: AttemptFinished) -> None:
        attempt.task.tell(outcome)
        self.pool.tell(slot.free)

    def destroy(self) -> None:
        thread = getattr(self, "_ref", None)
        if thread is None:
            return
        if self._busy:
            self.abandoned = True  # its handler or hook is still running on the thread
        thread.stop(block=False)  # queued behind whatever runs: the thread ends after it

    def still_running(self) -> bool:
        thread = getattr(self, "_ref", None)
        return thread is not None and bool(thread.is_alive())


def _still_busy(timeout: float) -> ErrorInfo:
    return ErrorInfo(
        "TimeoutError",
        f"the instance's thread was still busy after pre_stop_timeout={timeout} s "
        "(a handler that does not check context.stop_requested?)",
        "",
    )


def _nothing(_: Any) -> None:
    return None


def _finished(attempt: Attempt, outcome: Outcome) -> AttemptFinished:
    ok, value = outcome
    if ok:
        return AttemptFinished(attempt.number, result=value)
    retryable = not isinstance(value, NonRetryableError)
    return AttemptFinished(attempt.number, error=error_info(value), retryable=retryable)
