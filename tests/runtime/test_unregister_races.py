"""Unregistering a function while its work is in flight: what the chaos test found.

Each test builds, through the public API, one interleaving that
tests/runtime/test_chaos.py hit at random, and that left a task stranded, a
retired pool behind, a reservation lost or a dead letter before the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
from typing import Any

import pytest

from runtime import InstanceState, ManualClock, Runtime, TaskFinishedError, TaskState
from tests.conftest import RuntimeFactory

from . import chaos_handlers as ch
from . import kind_handlers as kh
from .helpers import Gate, eventually, until_status

S = TaskState


@pytest.fixture(autouse=True)
def _store_of_one_process(store_url: str) -> None:
    if store_url.startswith("redis"):
        pytest.skip(
            "on a shared store unregister only stops this node serving the function: its "
            "queued tasks and retries wait for other nodes (test_lifecycle.py::"
            "test_unregister_on_a_cluster_leaves_tasks_for_other_nodes)"
        )


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))  # process workers inherit it
    return tmp_path


class ColdStarts:
    """An async function whose first instance starts at once and later ones wait on a gate.

    Its handler fails the first attempt of a task with payload "flaky" and blocks
    on ``busy`` for payload "block".
    """

    def __init__(self) -> None:
        self.later_start = Gate()
        self.busy = Gate()
        self.starts = 0

    async def initializer(self, instance: Any) -> None:
        self.starts += 1
        if self.starts > 1:
            await self.later_start.wait()

    async def handler(self, event: Any, ctx: Any) -> str:
        if event == "flaky" and ctx.attempt == 1:
            raise ConnectionError("try again")
        if event == "block":
            await self.busy.wait()
        return "done"

    async def retry_waiting_for_a_cold_start(self, rt: Runtime, clock: ManualClock) -> str:
        """A task whose retry is reserved on fn-2 while fn-2 runs its Initializer."""
        rt.register(
            "fn", self.handler, initializer=self.initializer, max_instances=2,
            retry_backoff=1.0, retry_backoff_max=1.0,
        )  # fmt: skip
        task_id = await rt.invoke("fn", "flaky")
        await until_status(rt, task_id, S.RETRYING)
        await rt.invoke("fn", "block")  # takes fn-1's only slot
        await eventually(lambda: self.busy.entered == 1)
        clock.advance(1.0)  # the retry is due: no free slot, so fn-2 cold-starts for it
        await eventually(lambda: self.later_start.entered == 1)
        return task_id


async def test_a_retry_waiting_for_a_cold_start_still_runs_after_unregister(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    # Retries already owed finish on the old pool (docs/lifecycle.md), including one
    # that waits for an instance still running its Initializer when unregister comes.
    rt = await make_runtime(clock=clock)
    fn = ColdStarts()
    task_id = await fn.retry_waiting_for_a_cold_start(rt, clock)
    rt.unregister("fn")
    fn.later_start.open()
    fn.busy.open()
    try:
        record = await rt.wait(task_id, timeout=0.5)
        assert record.status is S.SUCCEEDED
    finally:
        with contextlib.suppress(TaskFinishedError):
            await rt.stop(task_id)  # stranded: lets the old pool drain and go


async def test_a_retired_pool_goes_once_its_last_retry_is_stopped(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    # After unregister, the old pool waits for the retries it owes. When the last one
    # is stopped during its backoff, nothing is left: PreStop runs on its instance
    # and the pool goes (the supervisor is the only actor left).
    rt = await make_runtime(clock=clock)
    pre_stops = 0

    async def pre_stop(instance: Any) -> None:
        nonlocal pre_stops
        pre_stops += 1

    rt.register("fn", kh.fail_async, pre_stop=pre_stop, retry_backoff=100, retry_backoff_max=100)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RETRYING)
    rt.unregister("fn")
    await asyncio.sleep(0.01)  # the old pool gets Drain(unregister): it waits for the retry
    assert (await rt.stop(task_id)).status is S.STOPPED
    system = rt.actor_system
    assert system is not None
    clock.advance(1.0)  # a few sweeps of the lifecycle clock
    await asyncio.sleep(0.05)
    assert (pre_stops, system.live_actors) == (1, 1)


async def test_stopping_a_retry_waiting_for_a_cold_start_frees_its_slot(
    make_runtime: RuntimeFactory,
) -> None:
    # retry_backoff=0: the retry is reserved on a cold-starting fn-2 while fn-1's slot
    # still holds the failed first attempt. Once the task is stopped, nothing is in
    # flight on fn-2 any more.
    rt = await make_runtime()
    fn = ColdStarts()
    rt.register("fn", fn.handler, initializer=fn.initializer, max_instances=2, retry_backoff=0)
    task_id = await rt.invoke("fn", "flaky")
    await until_status(rt, task_id, S.RETRYING)
    await eventually(lambda: fn.later_start.entered == 1)  # fn-2 starts for the retry
    try:
        assert (await rt.stop(task_id)).status is S.STOPPED
        infos = {i.instance_id: i for i in await rt.instances("fn")}
        assert infos["fn-2"].state is InstanceState.STARTING
        assert infos["fn-2"].in_flight == 0, "the stopped task's reservation is still held"
    finally:
        fn.later_start.open()


async def test_unregister_leaves_no_dead_letter(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    # The function's last instance finishes its PreStop in the same loop turn as a
    # tick: the supervisor queues a Sweep for the retiring pool behind the PreStop's
    # HookDone, on which the pool stops itself.
    rt = await make_runtime(clock=clock, tick_interval=1.0)
    pre_stop = Gate()

    async def hook(instance: Any) -> None:
        await pre_stop.wait()

    rt.register("fn", kh.echo_async, pre_stop=hook)
    assert (await rt.wait(await rt.invoke("fn"), timeout=5)).status is S.SUCCEEDED
    rt.unregister("fn")
    await eventually(lambda: pre_stop.entered == 1)
    pre_stop.open()  # PreStop returns on the next turn (HookDone is told then) ...
    clock.advance(1.0)  # ... and the Tick is queued now: the Sweep will follow HookDone
    system = rt.actor_system
    assert system is not None
    await eventually(lambda: system.live_actors == 1)  # the pool is gone
    await asyncio.sleep(0.01)
    assert system.dead_letters == 0


async def test_a_worker_dying_in_pre_stop_after_unregister_leaves_no_dead_letter(
    make_runtime: RuntimeFactory, test_dir: pathlib.Path
) -> None:
    rt = await make_runtime()
    rt.register("fn", kh.whoami, kind="process", pre_stop=ch.pre_stop_forever)
    pid = (await rt.wait(await rt.invoke("fn"), timeout=20)).result
    rt.unregister("fn")
    await eventually(lambda: "pre_stop" in kh.read_log(), timeout=20)
    os.kill(pid, signal.SIGKILL)
    system = rt.actor_system
    assert system is not None
    await eventually(lambda: system.live_actors == 1, timeout=10)  # the pool is gone
    await asyncio.sleep(0.05)
    assert system.dead_letters == 0


async def test_unregister_while_an_instance_starts_leaves_no_dead_letter(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    start = Gate()

    async def initializer(instance: Any) -> None:
        await start.wait()

    rt.register("fn", kh.echo_async, initializer=initializer)
    task_id = await rt.invoke("fn")  # cold-starts fn-1, which waits in its Initializer
    await eventually(lambda: start.entered == 1)
    assert (await rt.stop(task_id)).status is S.STOPPED
    rt.unregister("fn")  # nothing left to run: the old pool shuts down at once
    system = rt.actor_system
    assert system is not None
    await eventually(lambda: system.live_actors == 1)  # the pool is gone
    start.open()  # the Initializer returns now
    await asyncio.sleep(0.01)
    assert system.dead_letters == 0
