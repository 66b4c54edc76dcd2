"""Running user code that must wait (hooks) as tracked asyncio tasks, bounded by a timeout."""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from .record import ErrorInfo

logger = logging.getLogger("stint")


def error_info(exc: BaseException) -> ErrorInfo:
    """The (type, message, traceback text) of an exception, for records and events."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type(exc).__name__, str(exc), text)


async def call_hook(
    hook: Callable[[Any], Any], ctx: Any, name: str, timeout: float
) -> ErrorInfo | None:
    """Run one hook (sync or async) with ``ctx``; None if it succeeded, else what went wrong."""
    try:
        async with asyncio.timeout(timeout):
            result = hook(ctx)
            if inspect.isawaitable(result):
                await result
    except TimeoutError:
        return hook_timeout(name, timeout)
    except Exception as exc:
        return error_info(exc)
    return None


def hook_timeout(name: str, timeout: float) -> ErrorInfo:
    """The error recorded for a hook that overran its timeout (every kind)."""
    message = f"{name} did not finish within {timeout} s; make it faster or raise {name}_timeout"
    return ErrorInfo("TimeoutError", message, "")


class BackgroundTasks:
    """The asyncio tasks a runtime started, so ``close`` can wait for or cancel every one."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "stint background task %s failed", task.get_name(), exc_info=task.exception()
            )

    async def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every task, then cancel and reap the rest.

        Returns how many had to be cancelled (0 when everything ended by itself).
        """
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        return await self.cancel_all()

    async def cancel_all(self) -> int:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)
