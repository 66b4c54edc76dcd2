"""Calling a runtime from plain threaded code: blocking calls, and a runtime on its own thread.

    from runtime import Runtime, start_in_thread

    rt = Runtime()
    rt.register("resize", resize)
    with start_in_thread(rt) as running:        # returns once the runtime is started
        task_id = running.client.invoke("resize", {"url": "..."})
        record = running.client.wait(task_id, timeout=30)

A Flask or Django view, a script or a test calls ``client`` methods from any thread;
each hops onto the runtime's loop and blocks until the answer is back. Calling one
on the loop's own thread would wait for itself forever, so it raises
:class:`~runtime.errors.WrongThreadError` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import RuntimeClosedError, StintError, WrongThreadError
from .loop import loop_factory

if TYPE_CHECKING:
    from .listing import TaskList
    from .record import TaskRecord
    from .runtime import Runtime
    from .states import TaskState

T = TypeVar("T")
_CHECK_EVERY = 0.5  # seconds between looks at whether the loop is still there


class RuntimeClient:
    """Blocking versions of the task API, usable from any thread but the runtime's own."""

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        self.runtime = runtime
        self._loop = loop
        self._thread_id = thread_id

    def invoke(
        self,
        name: str,
        payload: Any = None,
        *,
        task_id: str | None = None,
        delay: float | None = None,
    ) -> str:
        """``rt.invoke``: the task id, once the task is stored as Enqueued."""
        return self._call(self.runtime.invoke(name, payload, task_id=task_id, delay=delay))

    def get(self, task_id: str) -> TaskRecord:
        return self._call(self.runtime.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """``rt.wait``: blocks this thread (not the loop) until the task is terminal."""
        return self._call(self.runtime.wait(task_id, timeout=timeout))

    def stop(self, task_id: str) -> TaskRecord:
        return self._call(self.runtime.stop(task_id))

    def rerun(self, task_id: str, *, new_task_id: str | None = None) -> str:
        return self._call(self.runtime.rerun(task_id, new_task_id=new_task_id))

    def list(
        self,
        function: str | None = None,
        status: TaskState | str | None = None,
        prefix: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> TaskList:
        """``rt.list``, with the same filters and paging."""
        return self._call(self.runtime.list(function, status, prefix, limit, **filters))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self._thread_id:
            coro.close()
            raise WrongThreadError(
                "a blocking rt.client() call on the runtime's own event loop thread would wait "
                "for itself forever: await the Runtime's own coroutine methods there instead"
            )
        loop = self._loop
        if loop.is_closed() or not loop.is_running():
            coro.close()
            raise RuntimeClosedError("the runtime's event loop is not running any more")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        while True:
            try:
                return future.result(timeout=_CHECK_EVERY)
            except concurrent.futures.TimeoutError:
                if loop.is_closed() or not loop.is_running():
                    future.cancel()
                    raise RuntimeClosedError("the runtime's event loop stopped") from None


class RuntimeThread:
    """A runtime running on its own event loop in a daemon thread (see :func:`start_in_thread`)."""

    def __init__(self, runtime: Runtime, loop: str = "auto") -> None:
        self.runtime = runtime
        self._loop_name = loop
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="stint-runtime", daemon=True)
        self.client: RuntimeClient

    def start(self) -> RuntimeThread:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def close(self, timeout: float | None = None) -> None:
        """Close the runtime (as ``rt.close()``) and end its thread; blocks until done."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise StintError(
                f"the runtime's thread did not end within {timeout} s; close() waits for "
                "running attempts up to the runtime's close_timeout"
            )

    def __enter__(self) -> RuntimeThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=loop_factory(self._loop_name)) as runner:
            try:
                runner.run(self._main())
            except BaseException as exc:  # reported to start(); the thread just ends
                if not self._started.is_set():
                    self._error = exc
                    self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.runtime.start()
        self.client = self.runtime.client()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.runtime.close()


def start_in_thread(runtime: Runtime, *, loop: str = "auto") -> RuntimeThread:
    """Start ``runtime`` on its own event loop (uvloop where it imports) in a daemon thread.

    Returns once the runtime is started, with a blocking ``client``; ``close()`` (or
    leaving the ``with`` block) closes the runtime and ends the thread. Register
    functions before starting: the runtime's own methods belong to its thread.
    """
    return RuntimeThread(runtime, loop).start()
