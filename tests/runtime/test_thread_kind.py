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

    def lose_the_start_of_second(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "attempt_started" and args[0].task.name == second:
            return ([], 0)  # never waits in a batch: the outcome comes as a report of its own
        return original(fn, *args)

    reports.put = lose_the_start_of_second  # type: ignore[method-assign]
    kh.release()
    assert (await rt.wait(first, timeout=5)).status is S.SUCCEEDED
    record = await rt.wait(second, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]


async def test_a_reports_replacement_never_takes_the_place_of_another_threads() -> None:
    # Each thread puts a report and replaces it with its outcome while other threads put
    # theirs: every outcome arrives once, in place of its own start and nobody else's.
    loop = asyncio.get_running_loop()
    reports = ThreadReports(loop)
    seen: list[tuple[str, int, int]] = []

    def produce(worker: int) -> None:
        for i in range(2000):
            pending = reports.put(seen.append, ("start", worker, i))
            reports.replace(pending, seen.append, ("end", worker, i))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    await eventually(lambda: sum(1 for s in seen if s[0] == "end") == 8000)
    for worker in range(4):
        mine = [(kind, i) for kind, w, i in seen if w == worker]
        ends = [i for kind, i in mine if kind == "end"]
        assert ends == list(range(2000))  # each once, in order
        for kind, i in mine:  # a start delivered on its own always comes before its end
            if kind == "start":
                assert mine.index(("end", i)) > mine.index(("start", i))


async def test_a_replacement_after_the_flush_comes_as_its_own_report() -> None:
    reports = ThreadReports(asyncio.get_running_loop())
    seen: list[str] = []
    pending = await asyncio.to_thread(reports.put, seen.append, "started")
    await eventually(lambda: seen == ["started"])  # the loop took the batch
    await asyncio.to_thread(reports.replace, pending, seen.append, "ended")
    await eventually(lambda: seen == ["started", "ended"])


class Gates:
    """Blocking handlers for one test: ``gated-<name>`` waits for ``open(name)``; every
    call is recorded (event, instance) once it returns."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.ran: list[tuple[str, str]] = []
        self.started: list[str] = []

    def open(self, name: str) -> None:
        self.gates.setdefault(name, threading.Event()).set()

    def handler(self, event: Any, ctx: Any) -> None:
        self.started.append(event)
        if event.startswith("gated-"):
            self.gates.setdefault(event[6:], threading.Event()).wait(10)
        self.ran.append((event, ctx.instance.instance_id))


async def _busy_with_waiting(rt: Any, waiting: int) -> tuple[str, list[str]]:
    """An attempt that blocks ("gated-first") Running, then ``waiting`` more Dequeued."""
    first = await rt.invoke("fn", "gated-first")
    await until_status(rt, first, S.RUNNING)
    queued = [await rt.invoke("fn", f"q{i}") for i in range(waiting)]
    for task_id in queued:
        await until_status(rt, task_id, S.DEQUEUED)
    return first, queued


async def _three_running(rt: Any) -> list[str]:
    """Three tasks of "fn" that block on the "all" gate, once all three run."""
    tasks = [await rt.invoke("fn", "gated-all") for _ in range(3)]
    for task_id in tasks:
        await until_status(rt, task_id, S.RUNNING)
    return tasks


async def _open_and_succeed(rt: Any, gates: Gates, tasks: list[str]) -> None:
    gates.open("all")
    for task_id in tasks:
        assert (await rt.wait(task_id, timeout=10)).status is S.SUCCEEDED


async def _warm(rt: Any, name: str, count: int) -> None:
    async with asyncio.timeout(10):
        while sum(1 for i in await rt.instances(name) if i.state == "Ready") < count:
            await asyncio.sleep(0.002)


async def test_a_burst_spreads_over_idle_instances_before_queueing_behind_one(
    make_runtime: RuntimeFactory,
) -> None:
    # Spare slots (a thread's prefetch) are used only once every instance runs a task:
    # three blocking tasks on three warm instances all run at once. (With one spare slot
    # per instance taken first, two of them used to queue on one thread.)
    rt = await make_runtime()
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=3, min_instances=3)
    await _warm(rt, "fn", 3)
    tasks = await _three_running(rt)
    assert sorted(i.in_flight for i in await rt.instances("fn")) == [1, 1, 1]
    await _open_and_succeed(rt, gates, tasks)


async def test_a_cold_burst_starts_instances_before_queueing_behind_one(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=3)
    tasks = await _three_running(rt)
    assert len({(await rt.get(t)).instance_id for t in tasks}) == 3
    await _open_and_succeed(rt, gates, tasks)


async def test_prefetched_attempts_run_in_order_and_a_stop_takes_one_back(
    make_runtime: RuntimeFactory,
) -> None:
    # One instance: the first task blocks; the next five wait in its inbox, Dequeued.
    rt = await make_runtime()
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=1)
    first, queued = await _busy_with_waiting(rt, 5)
    await asyncio.sleep(0.02)
    for task_id in queued:  # handed over, not started
        assert (await rt.get(task_id)).status is S.DEQUEUED
    [info] = await rt.instances("fn")
    assert info.in_flight == 6  # concurrency 1 + five of its spare slots
    stopped = await rt.stop(queued[2])
    assert statuses(stopped) == ["Enqueued", "Dequeued", "Stopping", "Stopped"]
    gates.open("first")
    for task_id in [first, *queued[:2], *queued[3:]]:
        record = await rt.wait(task_id, timeout=10)
        assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    assert [event for event, _ in gates.ran] == ["gated-first", "q0", "q1", "q3", "q4"]


async def test_attempts_stuck_behind_a_slow_one_move_to_an_instance_with_room(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=2, min_instances=2, timeout=1000)
    await _warm(rt, "fn", 2)
    slow = await rt.invoke("fn", "gated-slow")
    short = await rt.invoke("fn", "gated-short")  # the other instance: both busy now
    for task_id in (slow, short):
        await until_status(rt, task_id, S.RUNNING)
    quick = [await rt.invoke("fn", f"q{i}") for i in range(6)]  # into both inboxes
    for task_id in quick:
        await until_status(rt, task_id, S.DEQUEUED)
    slow_instance = (await rt.get(slow)).instance_id
    gates.open("short")  # one instance drains its inbox; the other's wait behind "slow"
    await eventually(lambda: len(gates.ran) >= 1)
    async with asyncio.timeout(5):  # a tick to see them waiting, a tick to move them
        while len(gates.ran) < 7:
            clock.advance(0.06)
            await asyncio.sleep(0.005)
    for task_id in quick:
        record = await rt.wait(task_id, timeout=10)
        assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
        assert record.attempts == 1 and record.instance_id != slow_instance
    assert (await rt.get(slow)).status is S.RUNNING
    assert sorted(event for event, _ in gates.ran if event.startswith("q")) == [
        f"q{i}" for i in range(6)
    ]  # each once
    gates.open("slow")
    assert (await rt.wait(slow, timeout=10)).status is S.SUCCEEDED


async def test_close_does_not_start_attempts_still_waiting_in_an_inbox(
    make_runtime: RuntimeFactory,
) -> None:
    # Closing lets running attempts finish; the ones waiting behind them have not
    # started, so they do not start now: they stay Dequeued, as queued tasks do.
    rt = await make_runtime()
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=1)
    await _busy_with_waiting(rt, 3)
    closing = asyncio.ensure_future(rt.close())
    await asyncio.sleep(0.02)  # the pool is draining now
    gates.open("first")
    await closing
    assert gates.started == ["gated-first"]  # nothing waiting behind it ran


async def test_on_a_shared_store_an_instance_keeps_one_spare_slot(
    make_runtime: RuntimeFactory, redis_url: str
) -> None:
    # A task waiting in a busy node's inbox is one an idle node could have run: on a
    # cluster an instance takes one attempt beyond concurrency, not eight.
    rt = await make_runtime(store=redis_url)
    gates = Gates()
    rt.register("fn", gates.handler, kind="thread", max_instances=1)
    first = await rt.invoke("fn", "gated-first")
    await until_status(rt, first, S.RUNNING)
    more = [await rt.invoke("fn", f"q{i}") for i in range(3)]
    await until_status(rt, more[0], S.DEQUEUED)
    await asyncio.sleep(0.05)  # time for the node to fetch more, were it to
    [info] = await rt.instances("fn")
    assert info.in_flight == 2
    assert [(await rt.get(t)).status for t in more[1:]] == [S.ENQUEUED, S.ENQUEUED]
    gates.open("first")
    for task_id in [first, *more]:
        assert (await rt.wait(task_id, timeout=10)).status is S.SUCCEEDED
