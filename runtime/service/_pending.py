"""Runtime calls that issue 10 adds to the public API, with a stand-in until they land.

Each function calls the Runtime method of the same name where it exists and falls
back to what the current public API can do. This module goes away once issue 10
is merged: the service then calls the methods directly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from runtime import ConfigError, InstanceState, Runtime, TaskEvent, TaskRecord

_POLL = 0.05


async def invoke(
    rt: Runtime, name: str, payload: Any, task_id: str | None, delay: float | None
) -> str:
    if delay is None:
        return await rt.invoke(name, payload, task_id=task_id)
    method: Any = rt.invoke
    if "delay" not in inspect.signature(method).parameters:
        raise ConfigError("delay is not supported by this version of stint")
    result: str = await method(name, payload, task_id=task_id, delay=delay)
    return result


async def list_tasks(rt: Runtime, **query: Any) -> tuple[list[TaskRecord], str | None]:
    """A page of records and the cursor of the next one."""
    method: Any = rt.list
    accepted = inspect.signature(method).parameters
    given = {k: v for k, v in query.items() if v is not None and k in accepted}
    unsupported = sorted(k for k, v in query.items() if v is not None and k not in accepted)
    if unsupported and unsupported != ["order"]:
        raise ConfigError(f"{', '.join(unsupported)} not supported by this version of stint")
    page = await method(**given)
    return list(page), getattr(page, "next_cursor", None)


def watch(rt: Runtime, task_id: str) -> AsyncIterator[TaskEvent]:
    method = getattr(rt, "watch", None)
    if method is not None:
        events: AsyncIterator[TaskEvent] = method(task_id)
        return events
    return _poll(rt, task_id)


async def _poll(rt: Runtime, task_id: str) -> AsyncIterator[TaskEvent]:
    seen = 0
    while True:
        record = await rt.get(task_id)
        events = record.events
        for event in events[seen:]:
            yield event
        seen = len(events)
        if record.is_terminal:
            return
        await asyncio.sleep(_POLL)


async def function_stats(rt: Runtime) -> dict[str, dict[str, int | None]]:
    method = getattr(rt, "function_stats", None)
    if method is not None:
        stats: dict[str, dict[str, int | None]] = await method()
        return stats
    result: dict[str, dict[str, int | None]] = {}
    for name in rt.functions:
        instances = await rt.instances(name)
        running = sum(i.in_flight for i in instances if i.state is not InstanceState.STOPPED)
        result[name] = {"queued": None, "running": running}
    return result


def store_shared(rt: Runtime) -> bool:
    return bool(getattr(rt.store, "shared", False))


async def nodes(rt: Runtime) -> list[Any]:
    method = getattr(rt, "nodes", None)
    return [] if method is None else list(await method())


async def ping_store(rt: Runtime) -> None:
    method = getattr(rt, "ping_store", None)
    if method is not None:
        await method()
