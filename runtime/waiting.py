"""Everyone who waits on tasks: ``wait`` callers, ``join`` callers and watchers.

The task actors tell :class:`Waits` when a task changes (only when someone watches
that task: a dict test per transition otherwise) and when it ends; waiters are
futures created only while someone awaits, and removed as soon as they stop
waiting, so an abandoned watch or a timed-out wait leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import RuntimeClosedError, TaskNotFoundError, WaitTimeoutError
from .record import TaskEvent, TaskRecord
from .states import TaskState

ReadRecord = Callable[[str], Awaitable[TaskRecord | None]]
_F = TypeVar("_F", asyncio.Future[TaskRecord], asyncio.Future[None])


class Waits:
    def __init__(self) -> None:
        self._done: dict[str, list[asyncio.Future[TaskRecord]]] = {}
        #: task id -> futures of watchers waiting for its next event (read by task actors)
        self.watched: dict[str, list[asyncio.Future[None]]] = {}
        self._joins: list[tuple[str | None, asyncio.Future[None]]] = []
        self._closed = False

    # what the runtime and its actors report --------------------------------------------

    def changed(self, task_id: str) -> None:
        """The task has a new event: wake its watchers (they read it themselves)."""
        futures = self.watched.pop(task_id, None)
        if futures:
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def finished(self, record: TaskRecord) -> None:
        """The task is terminal: answer its ``wait`` callers with one snapshot."""
        waiters = self._done.pop(record.task_id, None)
        if waiters:
            snapshot = record.copy()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(snapshot)
        if self.watched:
            self.changed(record.task_id)

    def idle(self, is_idle: Callable[[str | None], bool]) -> None:
        """Some function may have no unfinished task left: wake its ``join`` callers."""
        for name, waiter in self._joins:
            if not waiter.done() and is_idle(name):
                waiter.set_result(None)

    def waits_on(self, task_id: str) -> bool:
        """Whether a ``wait`` or a watcher waits on the task now."""
        return task_id in self.watched or task_id in self._done

    @property
    def has_joiners(self) -> bool:
        return bool(self._joins)

    def close(self) -> None:
        """The runtime closed: every waiter fails with :class:`RuntimeClosedError`."""
        self._closed = True
        error = "the runtime closed before the task ended"
        for done in self._done.values():
            for waiter in done:
                if not waiter.done():
                    waiter.set_exception(RuntimeClosedError(error))
        for watchers in self.watched.values():
            for watcher in watchers:
                if not watcher.done():
                    watcher.set_exception(RuntimeClosedError(error))
        for _, joiner in self._joins:
            if not joiner.done():
                joiner.set_exception(RuntimeClosedError("the runtime closed before it was idle"))
        self._done.clear()
        self.watched.clear()

    # waiting ------------------------------------------------------------------------------

    async def wait_finished(self, task_id: str, timeout: float | None) -> TaskRecord:
        """Wait for a live task to end (its actor reports it); the record at its end."""
        waiter: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        self._done.setdefault(task_id, []).append(waiter)
        try:
            if timeout is None:  # the common case: no timer to arm and disarm
                return await waiter
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            _discard(self._done, task_id, waiter)

    def expect(self, task_id: str) -> asyncio.Future[None]:
        """A future set at the task's next event. Register it before reading the record, so
        an event between the read and the wait cannot be missed; :meth:`forget` it after."""
        waiter: asyncio.Future[None] = self._new_waiter()
        self.watched.setdefault(task_id, []).append(waiter)
        return waiter

    def forget(self, task_id: str, waiter: asyncio.Future[None]) -> None:
        _discard(self.watched, task_id, waiter)

    def expect_finished(self, task_id: str) -> asyncio.Future[TaskRecord]:
        """A future answered by :meth:`finished` with the task's record at its end, should
        it end in a task actor here; :meth:`forget_finished` it after.

        For a wait on a task held elsewhere that this node may yet take (a shared
        store): it ends here as it would for a task that was held here all along."""
        waiter: asyncio.Future[TaskRecord] = self._new_waiter()
        self._done.setdefault(task_id, []).append(waiter)
        return waiter

    def _new_waiter(self) -> asyncio.Future[Any]:
        if self._closed:
            raise RuntimeClosedError("the runtime is closed")
        return asyncio.get_running_loop().create_future()

    def forget_finished(self, task_id: str, waiter: asyncio.Future[TaskRecord]) -> None:
        _discard(self._done, task_id, waiter)

    async def join(
        self, name: str | None, timeout: float | None, is_idle: Callable[[str | None], bool]
    ) -> None:
        if is_idle(name):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pair = (name, waiter)
        self._joins.append(pair)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            what = f"function {name!r}" if name else "the runtime"
            raise WaitTimeoutError(f"{what} still has unfinished tasks after {timeout} s") from None
        finally:
            if pair in self._joins:
                self._joins.remove(pair)


class TaskWatch:
    """``async for event in rt.watch(task_id)``: the task's events, then live ones, to the end.

    An async iterator, not a generator: a future exists only while the caller awaits
    the next event, so one that stops iterating early leaves nothing registered.
    ``poll`` re-reads the record that often while waiting (a shared store, whose
    notifications may be lost), or never (None: local transitions always notify).
    """

    def __init__(self, task_id: str, read: ReadRecord, waits: Waits, poll: float | None) -> None:
        self.task_id = task_id
        self._read = read
        self._waits = waits
        self._poll = poll
        self._seen = 0
        self._pending: deque[TaskEvent] = deque()
        self._ended = False

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> TaskEvent:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            await self._fetch()
        return self._pending.popleft()

    async def _fetch(self) -> None:
        """Queue the events not yielded yet, or wait for the next one (then the caller reads)."""
        waiter = self._waits.expect(self.task_id)
        try:
            record = await self._read(self.task_id)
            if record is None:
                if not self._seen:
                    raise TaskNotFoundError(
                        f"no task with id {self.task_id!r}: check the id (rt.list shows recent "
                        "ones); finished tasks are dropped after the store's retention period"
                    )
                self._ended = True  # dropped by retention meanwhile: nothing more will come
                return
            fresh = record.raw_events()[self._seen :]
            if fresh or record.is_terminal:
                self._seen += len(fresh)
                self._pending.extend(
                    TaskEvent(TaskState(name), ts, detail) for name, ts, detail in fresh
                )
                self._ended = record.is_terminal
                return
            if self._poll is None:
                await waiter
            else:  # a shared store: a notification may be lost, so look again anyway
                await asyncio.wait([waiter], timeout=self._poll)
        finally:
            self._waits.forget(self.task_id, waiter)


def _discard(table: dict[str, list[_F]], key: str, future: _F) -> None:
    futures = table.get(key)
    if futures is not None and future in futures:
        futures.remove(future)
        if not futures:
            del table[key]
