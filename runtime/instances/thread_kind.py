"""kind="thread": blocking handlers, each instance a pykka ThreadingActor (one thread).

The instance's thread runs the Initializer, the handler (one task at a time) and
PreFreeze / PreStop. Work goes to it with ``tell`` and comes back to the event
loop with ``loop.call_soon_threadsafe``; nothing here waits on a pykka future
(whose ``__await__`` would block the loop).

A thread cannot be killed. On stop or timeout the attempt's ``stop_requested``
flag is set and the attempt is reported at once, and the instance is replaced.
A PreStop, if there is one, is queued on the thread (it runs when the handler
returns) and waited for up to ``pre_stop_timeout``; without one there is nothing
to wait for. A thread still busy after ``pre_stop_timeout`` is abandoned:
counted, listed by ``rt.instances()`` until it ends, never waited for.
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
from ..messages import CodeReturned
from ..states import InstanceState
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
            if not self._busy and self.state is InstanceState.STOPPED:
                self.pool.tell(CodeReturned(self))  # it was retiring: now it has ended

        self._thread().tell((fn, args, back))

    def _execute_hook(self, name: str, hook: Any, timeout: float, done: HookCallback) -> None:
        finish = self._answer_once(name, timeout, done)

        def back(outcome: Outcome, seconds: float) -> None:
            ok, value = outcome
            finish(None if ok else error_info(value), seconds)

        self._on_thread(hook, (self.context,), back)

    def activate(self) -> None:
        pass

    def run(self, slot: Slot, attempt: Attempt) -> None:
        attempt.context.stop_event  # noqa: B018 - made here, on the loop, before the thread reads it

        def finished(outcome: Outcome, seconds: float) -> None:
            if attempt.done:
                return  # interrupted: reported, and its slot freed, already
            _fill(attempt, outcome)
            self.report(attempt)
            self.free(slot)

        args = (self.spec.handler, attempt.payload, attempt.context)
        self._on_thread(_call_handler, args, finished)

    def cut(self, slot: Slot, attempt: Attempt, reason: str) -> None:
        # A thread cannot be interrupted: the flag is set, the slot is given up now, and
        # the pool replaces the instance (its thread ends once the handler returns).
        self.free(slot)

    def destroy(self) -> None:
        thread = getattr(self, "_ref", None)
        if thread is None:
            return
        thread.stop(block=False)  # queued behind whatever runs: the thread ends after it

    def still_running(self) -> bool:
        thread = getattr(self, "_ref", None)
        return thread is not None and self._busy > 0


def _fill(attempt: Attempt, outcome: Outcome) -> None:
    ok, value = outcome
    if ok:
        attempt.result = value
    else:
        attempt.error = error_info(value)
        attempt.retryable = not isinstance(value, NonRetryableError)
