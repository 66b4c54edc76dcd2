"""kind="thread" pulls its next attempt itself: what that must never change.

An attempt waiting in an instance's inbox has not started: its task is Dequeued
(never Running), a stop takes it back at once, and a restart of the instance
sends it elsewhere instead of failing it. Running comes with the thread's own
timestamp, and reports reach the loop in batches.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from typing import Any

import pytest

from runtime import ManualClock, TaskState
from runtime.instances.thread_kind import ThreadReports
from tests.conftest import RuntimeFactory

from . import kind_handlers as kh
from .helpers import eventually, statuses, until_status

S = TaskState


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def store_url() -> str:
    return "memory://"


async def test_an_attempt_waiting_in_the_inbox_is_dequeued_not_running(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    rt.register("fn", kh.block, kind="thread", max_instances=1)
    first = await rt.invoke("fn")
    await eventually(lambda: len(kh.read_log()) == 1)  # the thread runs it
    second = await rt.invoke("fn")
    await until_status(rt, second, S.DEQUEUED)
    await asyncio.sleep(0.05)
    assert (await rt.get(second)).status is S.DEQUEUED  # handed over, not started
    [info] = await rt.instances("fn")
    assert info.in_flight == 2
    record = await rt.stop(second)  # taken back at once: it never ran
    assert statuses(record) == ["Enqueued", "Dequeued", "Stopping", "Stopped"]
    assert "before running" in record.events[-1].detail
    kh.release()
    assert (await rt.wait(first, timeout=10)).status is S.SUCCEEDED
    assert len(kh.read_log()) == 1  # the stopped one never ran


async def test_a_waiting_attempt_is_not_failed_when_its_instance_restarts(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    rt.register("fn", kh.block, kind="thread", max_instances=1)
    first = await rt.invoke("fn")
    await eventually(lambda: len(kh.read_log()) == 1)
    second = await rt.invoke("fn")
    await until_status(rt, second, S.DEQUEUED)
    await rt.stop(first)  # the instance restarts; the waiting attempt goes elsewhere
    kh.release()
    record = await rt.wait(second, timeout=10)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    assert (record.attempts, record.retries, record.instance_id) == (1, 0, "fn-2")


async def test_a_waiting_attempt_survives_a_timeout_restart(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    rt.register("fn", kh.block, kind="thread", max_instances=1, timeout=30, max_retries=0)
    first = await rt.invoke("fn")
    await eventually(lambda: len(kh.read_log()) == 1)
    second = await rt.invoke("fn")
    await until_status(rt, second, S.DEQUEUED)
    clock.advance(31)  # first times out; second had not started: its clock had not run
    assert (await rt.wait(first, timeout=10)).status is S.FAILED
    kh.release()
    record = await rt.wait(second, timeout=10)
    assert record.status is S.SUCCEEDED and record.attempts == 1


async def test_running_carries_the_threads_own_timestamp(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = threading.Event()

    def slow(event: Any, ctx: Any) -> None:
        gate.wait(10)

    rt.register("fn", slow, kind="thread", max_instances=1)
    first = await rt.invoke("fn")
    await until_status(rt, first, S.RUNNING)
    second = await rt.invoke("fn")
    await asyncio.sleep(0.05)
    released_at = time.time()
    gate.set()
    record = await rt.wait(second, timeout=10)
    running = next(e for e in record.events if e.status is S.RUNNING)
    dequeued = next(e for e in record.events if e.status is S.DEQUEUED)
    assert running.timestamp >= released_at > dequeued.timestamp


async def test_reports_from_threads_reach_the_loop_in_batches() -> None:
    loop = asyncio.get_running_loop()
    reports = ThreadReports(loop)
    seen: list[int] = []
    flushes = 0
    original = reports._flush

    def counting_flush() -> None:
        nonlocal flushes
        flushes += 1
        original()

    reports._flush = counting_flush  # type: ignore[method-assign]

    def produce() -> None:
        for i in range(1000):
            reports.put(seen.append, i)

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join()  # the loop is not running meanwhile: everything waits in one batch
    await eventually(lambda: len(seen) == 1000)
    assert seen == list(range(1000)) and flushes == 1


async def test_an_outcome_that_overtakes_the_word_of_its_start_still_counts_as_run(
    make_runtime: RuntimeFactory,
) -> None:
    # The thread takes the waiting attempt and its outcome reaches the task before the
    # word that it started (here: that word is lost). It did run: Running comes first,
    # and the task ends; before the fix it stayed Dequeued forever.
    rt = await make_runtime()
    rt.register("fn", kh.block, kind="thread", max_instances=1)
    first = await rt.invoke("fn")
    await eventually(lambda: len(kh.read_log()) == 1)
    second = await rt.invoke("fn")
    await until_status(rt, second, S.DEQUEUED)
    assert rt._services is not None
    reports = rt._services.thread_reports()
    original = reports.put

    def lose_the_start_of_second(fn: Any, *args: Any) -> None:
        if getattr(fn, "__name__", "") == "attempt_started" and args[0].task.name == second:
            return
        original(fn, *args)

    reports.put = lose_the_start_of_second  # type: ignore[method-assign]
    kh.release()
    assert (await rt.wait(first, timeout=5)).status is S.SUCCEEDED
    record = await rt.wait(second, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
