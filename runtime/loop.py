"""Event loop choice: uvloop where it imports, the plain asyncio loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory for ``name``: "uvloop", "asyncio", or "auto" (uvloop when installed)."""
    if name not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"unknown loop {name!r}: use 'auto', 'uvloop' or 'asyncio'")
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop (uvloop by default)."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


#: How often :func:`cancel_and_wait` cancels again a child that swallowed its cancel.
_RECANCEL_EVERY = 0.05


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended, without swallowing our own cancel.

    ``task.cancel(); with suppress(CancelledError): await task`` is the usual idiom and
    it is wrong: if *this* coroutine is cancelled while it awaits, the CancelledError
    it gets looks like the child's and is suppressed, so the cancel is lost and a loop
    around it runs on forever. ``asyncio.wait`` never raises a child's outcome, so the
    only CancelledError that can reach us here is our own: like a TaskGroup, we still
    let the (cancelled) children end first, so nothing they hold, a connection in the
    middle of a call, outlives us; then our cancel goes on. Outcomes are retrieved (no
    "exception was never retrieved" noise): read them from the tasks if they matter.

    The cancel is level-triggered, not sent once: a child still running after
    ``_RECANCEL_EVERY`` seconds is cancelled again, and again. Some libraries swallow a
    cancel that lands inside them (redis-py 8 does, in the middle of a command:
    redis/redis-py#2028) and the child's loop then goes on to wait forever; the next
    cancel finds it waiting in our own code, where it does end it.
    """
    pending = {task for task in tasks if not task.done()}
    cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=_RECANCEL_EVERY)
        except asyncio.CancelledError:
            cancelled = True
    for task in tasks:
        if not task.cancelled():
            task.exception()
    if cancelled:
        raise asyncio.CancelledError
