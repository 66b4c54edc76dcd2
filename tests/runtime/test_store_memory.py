"""The memory store's retention: bounded by count and age, never dropping unfinished tasks."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import ManualClock, TaskState
from runtime.errors import TaskNotFoundError
from tests.conftest import RuntimeFactory

from .helpers import Gate, until_status


async def echo(event: Any, ctx: Any) -> Any:
    return event


async def test_retention_by_count_drops_the_oldest_finished(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime(store="memory://?max_records=3")
    gate = Gate()

    async def blocking(event: Any, ctx: Any) -> None:
        await gate.wait()

    rt.register("echo", echo)
    rt.register("blocking", blocking)
    unfinished = await rt.invoke("blocking", task_id="keep")
    await until_status(rt, unfinished, TaskState.RUNNING)
    for i in range(5):
        await rt.wait(await rt.invoke("echo", i, task_id=f"t{i}"), timeout=5)
    kept = [r.task_id for r in await rt.list(limit=100)]
    assert kept == ["t4", "t3", "t2", "keep"]
    with pytest.raises(TaskNotFoundError):
        await rt.get("t0")
    gate.open()


async def test_retention_by_age(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(store="memory://?max_age=60", clock=clock)
    rt.register("echo", echo)
    await rt.wait(await rt.invoke("echo", task_id="old"), timeout=5)
    clock.advance(30)
    await rt.wait(await rt.invoke("echo", task_id="new"), timeout=5)
    clock.advance(31)  # "old" ended 61 s ago, "new" 31 s ago: the retention timer fires
    assert [r.task_id for r in await rt.list()] == ["new"]
    assert rt.store.evict() == 0  # nothing left to drop
