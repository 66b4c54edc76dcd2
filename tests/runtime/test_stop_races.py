"""Stops that race each other, restarts and dispatches: every task must reach a terminal state.

Regression tests for issue 8 ("tasks that never end"). Each builds the exact
interleaving that left a task stuck before, through the public API only.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import random
from typing import Any

import pytest

from runtime import Runtime, TaskState
from tests.conftest import RuntimeFactory

from . import kind_handlers as kh
from .helpers import Gate, eventually, statuses, until_status

S = TaskState


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))  # process workers inherit it
    return tmp_path


def blocking_handler(kind: str) -> Any:
    return kh.block_async if kind == "async" else kh.block


@pytest.mark.parametrize("kind", ["async", "process"])
async def test_a_second_stop_one_turn_later_is_absorbed_by_the_restart(
    make_runtime: RuntimeFactory, kind: str
) -> None:
    # Two tasks share one instance; stop(b) arrives one loop turn after stop(a), so it
    # reaches the pool while (or after) the instance is restarted for a.
    rt = await make_runtime()
    rt.register("fn", blocking_handler(kind), kind=kind, concurrency=2, max_instances=1)
    a = await rt.invoke("fn")
    b = await rt.invoke("fn")
    await until_status(rt, a, S.RUNNING, timeout=20)
    await until_status(rt, b, S.RUNNING, timeout=20)
    stop_a = asyncio.ensure_future(rt.stop(a))
    await asyncio.sleep(0)
    stop_b = asyncio.ensure_future(rt.stop(b))
    async with asyncio.timeout(10):
        done_a, done_b = await asyncio.gather(stop_a, stop_b)
    assert done_a.status is S.STOPPED
    # b was cut short by a's restart: it is either Stopped (its stop won) or it went on
    # to Retrying and was then stopped; never stuck.
    assert done_b.status is S.STOPPED
    assert rt.actor_system is not None and rt.actor_system.dead_letters == 0


async def test_a_dispatch_in_flight_during_a_restart_still_runs(
    make_runtime: RuntimeFactory, store_url: str
) -> None:
    # The pool reserves the free slot of an instance for c, then the instance is
    # restarted for a's stop before c has started: c must not be left Running on the
    # destroyed instance; it runs on the replacement.
    if not store_url.startswith("memory"):
        pytest.skip("the interleaving needs invoke to return without awaiting a commit")
    rt = await make_runtime()
    gate = Gate()

    async def handler(event: Any, ctx: Any) -> str:
        if event == "block":
            await gate.wait()
        return "done"

    rt.register("fn", handler, concurrency=2, max_instances=1, timeout=5)
    a = await rt.invoke("fn", "block")
    await until_status(rt, a, S.RUNNING)
    stopping = asyncio.ensure_future(rt.stop(a))
    await asyncio.sleep(0)  # the stop request is queued first ...
    c = await rt.invoke("fn", "quick")  # ... then c's submission
    record = await rt.wait(c, timeout=5)
    assert record.status is S.SUCCEEDED
    assert (await stopping).status is S.STOPPED


async def test_a_timeout_holds_for_a_task_whose_instance_went_away(
    make_runtime: RuntimeFactory, store_url: str
) -> None:
    # Whatever happened to its instance, a Running task ends by its timeout at the latest.
    if not store_url.startswith("memory"):
        pytest.skip("the interleaving needs invoke to return without awaiting a commit")
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler, concurrency=2, max_instances=1, timeout=0.2, max_retries=0)
    a = await rt.invoke("fn")
    await until_status(rt, a, S.RUNNING)
    stopping = asyncio.ensure_future(rt.stop(a))
    await asyncio.sleep(0)
    c = await rt.invoke("fn")
    record = await rt.wait(c, timeout=5)
    assert record.status.is_terminal
    await stopping


@pytest.mark.parametrize("kind", ["async", "thread", "process"])
async def test_stop_storm_leaves_no_task_behind(
    make_runtime: RuntimeFactory, kind: str, store_url: str
) -> None:
    if kind != "async" and not store_url.startswith("memory"):
        pytest.skip("kinds are independent of the store: the storm runs on memory")
    rng = random.Random(8)
    count = 600 if kind == "async" else 150
    rt = await make_runtime()
    handler = kh.sleep_ms_async if kind == "async" else kh.sleep_ms
    rt.register(
        "fn", handler, kind=kind, concurrency=1 if kind == "thread" else 2, max_instances=3,
        max_queued=count + 1, timeout=10, retry_backoff=0,
    )  # fmt: skip
    ids = [await rt.invoke("fn", rng.randint(0, 4)) for _ in range(count)]

    async def stop_later(task_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await rt.stop(task_id)
        except Exception as exc:  # a task that finished first is refused: fine
            assert type(exc).__name__ == "TaskFinishedError"

    async with asyncio.timeout(60):
        await asyncio.gather(
            *[stop_later(t, rng.random() * 0.01) for t in ids if rng.random() < 0.5]
        )
        records = [await rt.wait(t) for t in ids]
    assert all(r.status in (S.SUCCEEDED, S.STOPPED) for r in records)
    assert rt.actor_system is not None and rt.actor_system.dead_letters == 0
    infos = await rt.instances("fn")
    assert not [i for i in infos if i.abandoned], "a 4 ms handler must never be abandoned"
    assert 'reason="abandoned"} 1.0' not in await rt.metrics_text()


async def test_a_normal_stop_counts_the_stopped_attempt_and_no_dead_letter(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING)
    await eventually(lambda: gate.entered == 1)  # Running comes a turn before the handler
    await rt.stop(task_id)
    await eventually(lambda: gate.cancelled == 1)
    await asyncio.sleep(0.02)  # let the cancelled attempt report, if it were to
    text = await rt.metrics_text()
    assert 'stint_task_attempt_duration_seconds_count{function="fn",outcome="stop"} 1.0' in text
    assert rt.actor_system is not None and rt.actor_system.dead_letters == 0


async def test_the_stopped_event_says_what_really_happened(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    async def pre_stop(instance: Any) -> None:
        return None

    async def slow_pre_stop(instance: Any) -> None:
        await asyncio.Event().wait()

    rt.register("plain", gate.handler)
    rt.register("hooked", gate.handler, pre_stop=pre_stop)
    rt.register("overrun", gate.handler, pre_stop=slow_pre_stop, pre_stop_timeout=0.05)
    details = {}
    for name in ("plain", "hooked", "overrun"):
        task_id = await rt.invoke(name)
        await until_status(rt, task_id, S.RUNNING)
        record = await rt.stop(task_id)
        assert statuses(record)[-2:] == ["Stopping", "Stopped"]
        details[name] = record.events[-1].detail
    assert "PreStop" not in details["plain"] or "no PreStop" in details["plain"]
    assert f"{'plain'}-1" in details["plain"]
    assert "PreStop ran" in details["hooked"]
    assert "PreStop ran" not in details["overrun"]
    assert "did not finish" in details["overrun"] or "timed out" in details["overrun"]


async def test_stopping_a_thread_that_ignores_its_flag_returns_at_once(
    make_runtime: RuntimeFactory,
) -> None:
    # No PreStop to wait for: the task is Stopped for the runtime at once, the thread
    # is left to end by itself (abandoned and counted if it overruns pre_stop_timeout).
    rt = await make_runtime()
    rt.register("fn", kh.stubborn, kind="thread", pre_stop_timeout=30)
    task_id = await rt.invoke("fn", 3.0)
    await until_status(rt, task_id, S.RUNNING, timeout=20)
    await eventually(lambda: len(kh.read_log()) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    record = await rt.stop(task_id)
    assert record.status is S.STOPPED
    assert loop.time() - started < 1.0
    kh.release()


async def test_close_accounts_for_every_unfinished_task(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stint")
    gate = Gate()
    rt = Runtime(store=store_url, close_timeout=0.05, tick_interval=0.01)
    await rt.start()
    rt.register("fn", gate.handler, max_instances=1)
    running = await rt.invoke("fn")
    queued = await rt.invoke("fn")
    await until_status(rt, running, S.RUNNING)
    await rt.close()
    text = caplog.text
    if store_url.startswith("redis"):
        # The queued task waits in the cluster's queue, not on this node: it is not this
        # node's to account for; the one it ran is left for the other nodes to reclaim.
        assert rt.close_unfinished == {"Running": 1}
        assert "1 unfinished task(s)" in text and "reclaim" in text
        return
    assert rt.close_unfinished == {"Running": 1, "Dequeued": 0, "Enqueued": 1} or (
        rt.close_unfinished.get("Running") == 1 and sum(rt.close_unfinished.values()) == 2
    )
    assert "2 unfinished task(s)" in text
    if store_url.startswith("memory"):
        assert "lost" in text
    else:
        assert "recover" in text
    del queued
