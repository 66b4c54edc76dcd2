"""Server-Sent Events for one task: its history so far, then each transition live.

Every stream reads ``rt.watch(task_id)`` in a task of its own (a *pump*) and
writes what it reads to a queue; the response reads the queue with a timeout so
that it can send a heartbeat comment while nothing happens. When the client goes
away (Starlette cancels the response) or the server shuts down, the pump is
cancelled and the watch closed: no watcher outlives its stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from runtime import Runtime, StintError

from .problems import status_of
from .views import event_view

_END = object()  # the task reached a terminal state
_CLOSE = object()  # the server is shutting down


class Streams:
    """The open event streams of one app, so that a shutdown can end them all."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Any]] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._queues)

    def add(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.add(queue)

    def discard(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.discard(queue)

    def close_all(self) -> None:
        """End every stream (the server is shutting down; clients may reconnect elsewhere)."""
        self.closing = True
        for queue in self._queues:
            queue.put_nowait(_CLOSE)


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def task_events(
    rt: Runtime, task_id: str, streams: Streams, *, heartbeat: float, skip: int = 0
) -> AsyncIterator[bytes]:
    """The SSE body for ``/v1/tasks/{task_id}/events``.

    Each transition is an ``event: transition`` whose ``id`` counts from 1, so a
    client that reconnects with ``Last-Event-ID: n`` gets only what came after; an
    ``event: end`` follows the terminal one, and the stream closes.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pump = asyncio.create_task(_pump(rt, task_id, queue))
    streams.add(queue)
    try:
        yield b"retry: 2000\n\n"
        index = 0
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is _CLOSE:
                return
            if item is _END:
                yield frame("end", {"task_id": task_id})
                return
            if isinstance(item, BaseException):
                yield frame("error", _problem(item))
                return
            index += 1
            if index > skip:
                yield frame("transition", event_view(item), index)
    finally:
        streams.discard(queue)
        pump.cancel()
        await asyncio.wait([pump])


async def _pump(rt: Runtime, task_id: str, queue: asyncio.Queue[Any]) -> None:
    # rt.watch registers nothing between two reads: cancelling the pump leaves nothing behind
    try:
        async for event in rt.watch(task_id):
            queue.put_nowait(event)
        queue.put_nowait(_END)
    except StintError as error:
        queue.put_nowait(error)


def _problem(error: BaseException) -> dict[str, Any]:
    status = status_of(error) if isinstance(error, StintError) else 500
    return {"type": type(error).__name__, "status": status, "detail": str(error)}
