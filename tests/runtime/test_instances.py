"""Instances: hooks and their order, freeze and thaw, idle destruction, min/max, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime import InstanceState, ManualClock, TaskState
from tests.conftest import RuntimeFactory

from .helpers import Gate, eventually, until_status

S = TaskState
IS = InstanceState


def recording_hooks(log: list[str]) -> dict[str, Any]:
    def initializer(instance: Any) -> None:
        instance.state["connection"] = f"conn-{instance.instance_id}"
        log.append(f"initializer {instance.instance_id}")

    async def pre_freeze(instance: Any) -> None:
        log.append(f"pre_freeze {instance.instance_id}")

    def pre_stop(instance: Any) -> None:
        log.append(f"pre_stop {instance.instance_id}")

    return {"initializer": initializer, "pre_freeze": pre_freeze, "pre_stop": pre_stop}


async def test_hooks_run_in_the_documented_order(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    log: list[str] = []

    async def work(event: Any, ctx: Any) -> str:
        log.append(f"task {event} on {ctx.instance.instance_id}")
        return str(ctx.instance.state["connection"])

    rt.register("fn", work, freeze_after=5, idle_timeout=100, **recording_hooks(log))
    record = await rt.wait(await rt.invoke("fn", 1), timeout=5)
    assert record.result == "conn-fn-1"  # state set by the Initializer, seen by the task
    clock.advance(5)
    await _wait_state(rt, "fn", "fn-1", IS.FROZEN)
    await rt.wait(await rt.invoke("fn", 2), timeout=5)  # thaws the frozen instance
    [info] = await rt.instances("fn")
    assert info.tasks_served == 2
    assert [e.event for e in info.events] == [
        "starting",
        "initializer",
        "ready",
        "frozen",
        "thawed",
    ]
    clock.advance(101)
    await eventually(lambda: log[-1] == "pre_stop fn-1")
    assert log == [
        "initializer fn-1",
        "task 1 on fn-1",
        "pre_freeze fn-1",
        "task 2 on fn-1",
        "pre_stop fn-1",
    ]
    await _wait_gone(rt, "fn")


async def _wait_state(rt: Any, fn: str, instance_id: str, state: InstanceState) -> None:
    async with asyncio.timeout(5):
        while True:
            infos = {i.instance_id: i.state for i in await rt.instances(fn)}
            if infos.get(instance_id) is state:
                return
            await asyncio.sleep(0.001)


async def _wait_gone(rt: Any, fn: str) -> None:
    async with asyncio.timeout(5):
        while await rt.instances(fn):
            await asyncio.sleep(0.001)


async def test_freeze_after_zero_freezes_on_the_next_tick(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    log: list[str] = []
    rt.register("fn", _echo, **recording_hooks(log))
    await rt.wait(await rt.invoke("fn"), timeout=5)
    await _wait_state(rt, "fn", "fn-1", IS.FROZEN)
    assert log == ["initializer fn-1", "pre_freeze fn-1"]


async def test_idle_instances_are_destroyed_but_min_instances_stay(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    log: list[str] = []
    gate = Gate()

    rt.register("fn", gate.handler, min_instances=1, idle_timeout=50, **recording_hooks(log))
    await eventually(lambda: log == ["initializer fn-1"])  # warmed without any task
    first, second = await rt.invoke("fn"), await rt.invoke("fn")
    await until_status(rt, second, S.RUNNING)
    assert {i.instance_id for i in await rt.instances("fn")} == {"fn-1", "fn-2"}
    gate.open()
    await rt.wait(first, timeout=5)
    await rt.wait(second, timeout=5)
    clock.advance(51)
    await eventually(lambda: any(line.startswith("pre_stop") for line in log))
    await asyncio.sleep(0.02)
    remaining = await rt.instances("fn")
    assert len(remaining) == 1  # min_instances=1 is kept
    assert sum(line.startswith("pre_stop") for line in log) == 1


async def test_concurrency_runs_tasks_side_by_side_on_one_instance(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gate = Gate()

    async def work(event: Any, ctx: Any) -> str:
        await gate.wait()
        return ctx.instance.instance_id  # type: ignore[no-any-return]

    rt.register("fn", work, concurrency=3, max_instances=1)
    ids = [await rt.invoke("fn", i) for i in range(4)]
    for task_id in ids[:3]:
        await until_status(rt, task_id, S.RUNNING)
    assert (await rt.get(ids[3])).status is S.ENQUEUED
    [info] = await rt.instances("fn")
    assert (info.state, info.in_flight) == (IS.BUSY, 3)
    gate.open()
    records = [await rt.wait(task_id, timeout=5) for task_id in ids]
    assert {r.result for r in records} == {"fn-1"}


async def test_max_instances_bounds_cold_starts(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("fn", gate.handler, max_instances=2)
    ids = [await rt.invoke("fn") for _ in range(5)]
    await until_status(rt, ids[1], S.RUNNING)
    assert len(await rt.instances("fn")) == 2
    assert [(await rt.get(t)).status for t in ids[2:]] == [S.ENQUEUED] * 3
    gate.open()
    for task_id in ids:
        assert (await rt.wait(task_id, timeout=5)).status is S.SUCCEEDED


async def test_failing_hooks_are_recorded_and_harmless(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)

    def pre_freeze(instance: Any) -> None:
        raise RuntimeError("cannot flush")

    async def pre_stop(instance: Any) -> None:
        await asyncio.Event().wait()  # overruns its timeout

    rt.register(
        "fn", _echo, freeze_after=1, idle_timeout=10, pre_freeze=pre_freeze, pre_stop=pre_stop,
        pre_stop_timeout=0.05,
    )  # fmt: skip
    await rt.wait(await rt.invoke("fn"), timeout=5)
    clock.advance(1)
    await _wait_state(rt, "fn", "fn-1", IS.FROZEN)
    [info] = await rt.instances("fn")
    failed = [e for e in info.events if e.event == "pre_freeze_failed"]
    assert failed and "RuntimeError: cannot flush" in failed[0].detail
    clock.advance(10)
    await _wait_gone(rt, "fn")
    record = await rt.wait(await rt.invoke("fn", "still works"), timeout=5)
    assert record.status is S.SUCCEEDED


async def test_initializer_failure_is_in_instance_events_and_pool_recovers(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    attempts: list[int] = []

    def initializer(instance: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first start fails")

    rt.register("fn", _echo, initializer=initializer)
    first = await rt.wait(await rt.invoke("fn"), timeout=5)
    second = await rt.wait(await rt.invoke("fn"), timeout=5)
    assert (first.status, second.status) == (S.INVALID, S.SUCCEEDED)
    assert second.instance_id == "fn-2"


async def _echo(event: Any, ctx: Any) -> Any:
    return event
