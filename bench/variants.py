"""Throughput variants: each pushes no-op tasks through one way of doing it.

A variant is a coroutine function ``(n) -> seconds`` that does its set-up outside
the timed part and returns only the time of the work itself. ``share`` scales
down the task count of variants that are orders of magnitude slower (a thread
per task, a process pool), so one run stays within minutes; their figure is
still tasks per second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pykka

from runtime import Runtime, TaskState

from .handlers import blocking_noop
from .http import stint_http

WINDOW = 1_000  # tasks in flight at most, for the variants that window their work


async def noop(event: object, ctx: object = None) -> object:
    return event


async def yield_once(event: object, ctx: object = None) -> object:
    await asyncio.sleep(0)
    return event


async def until_cancelled(event: object, ctx: Any) -> None:
    await asyncio.Event().wait()


async def bare_create_task(n: int) -> float:
    """The physical limit: ``loop.create_task`` + ``gather``, at most WINDOW in flight."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for base in range(0, n, WINDOW):
        await asyncio.gather(
            *[loop.create_task(noop(i)) for i in range(base, min(n, base + WINDOW))]
        )
    return time.perf_counter() - start


async def stint_async(
    n: int,
    *,
    concurrency: int = 100,
    instances: int = 10,
    handler: Callable[..., Awaitable[object]] = noop,
) -> float:
    """stint kind "async", memory store, metrics on: invoke all N, wait until all Succeeded."""
    async with Runtime(store=_memory(n)) as rt:
        rt.register(
            "noop", handler, concurrency=concurrency, max_instances=instances, max_queued=n + 1
        )
        start = time.perf_counter()
        for i in range(n):
            await rt.invoke("noop", i)
        await rt.join("noop")
        elapsed = time.perf_counter() - start
        await _check_all_succeeded(rt, n)
    return elapsed


async def stint_windowed(n: int, store: str | None = None) -> float:
    """stint kind "async", invokes in concurrent windows of WINDOW (callers that do not wait
    for each other, so a durable store can commit many records per transaction)."""
    async with Runtime(store=store or _memory(n)) as rt:
        rt.register("noop", noop, concurrency=100, max_instances=10, max_queued=n + 1)
        return await _timed_windows(rt, n)


def _memory(n: int) -> str:
    """A memory store that retains every record of the run (the check reads them all)."""
    return f"memory://?max_records={n + WINDOW}"


async def _timed_windows(rt: Runtime, n: int, warmed: int = 0) -> float:
    """Invoke N no-ops WINDOW at a time, wait until all ended, check all Succeeded
    (with the ``warmed`` ones run before)."""
    start = time.perf_counter()
    for base in range(0, n, WINDOW):
        await asyncio.gather(*(rt.invoke("noop", i) for i in range(base, min(n, base + WINDOW))))
    await rt.join("noop")
    elapsed = time.perf_counter() - start
    await _check_all_succeeded(rt, n + warmed)
    return elapsed


async def _timed_waves(rt: Runtime, n: int, warmed: int = 0) -> float:
    """The executors' shape: submit WINDOW no-ops (one caller, no task per invoke), wait
    until all of them ended, then the next WINDOW; check all Succeeded at the end."""
    start = time.perf_counter()
    for base in range(0, n, WINDOW):
        for i in range(base, min(n, base + WINDOW)):
            await rt.invoke("noop", i)
        await rt.join("noop")
    elapsed = time.perf_counter() - start
    await _check_all_succeeded(rt, n + warmed)
    return elapsed


async def stint_sqlite(n: int) -> float:
    """The same on the durable store: sqlite, synchronous=FULL (an fsync per commit)."""
    with tempfile.TemporaryDirectory() as folder:
        return await stint_windowed(n, f"sqlite:///{folder}/bench.db")


async def _check_all_succeeded(rt: Runtime, n: int) -> None:
    done = 0
    cursor = None
    while True:
        page = await rt.list(function="noop", status=TaskState.SUCCEEDED, limit=1000, cursor=cursor)
        done += len(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    if done != n:
        raise AssertionError(f"only {done} of {n} tasks Succeeded")


async def aiojobs_scheduler(n: int) -> float:
    """aiojobs: a Scheduler with ``limit`` = WINDOW jobs at once, every task spawned."""
    import aiojobs

    scheduler = aiojobs.Scheduler(limit=WINDOW, pending_limit=n + 1)
    start = time.perf_counter()
    for i in range(n):
        await scheduler.spawn(noop(i))
    await scheduler.wait_and_close(timeout=None)
    return time.perf_counter() - start


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: object) -> object:
        return message


async def pykka_actor_per_task(n: int) -> float:
    """The naive actor design: one pykka ThreadingActor (one thread) per task."""
    loop = asyncio.get_running_loop()

    def one(i: int) -> object:
        ref = _Echo.start()
        try:
            return ref.ask(i)
        finally:
            ref.stop()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, one, i) for i in range(n)))
    return time.perf_counter() - start


async def thread_executor(n: int) -> float:
    """What a user would pick for blocking work: ``run_in_executor`` on a ThreadPoolExecutor."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        start = time.perf_counter()
        for base in range(0, n, WINDOW):
            batch = range(base, min(n, base + WINDOW))
            await asyncio.gather(*(loop.run_in_executor(pool, blocking_noop, i) for i in batch))
        return time.perf_counter() - start


async def process_executor(n: int) -> float:
    """What a user would pick for isolated work: a ProcessPoolExecutor (started beforehand)."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, blocking_noop, i) for i in range(4)))
        start = time.perf_counter()
        for base in range(0, n, WINDOW):
            batch = range(base, min(n, base + WINDOW))
            await asyncio.gather(*(loop.run_in_executor(pool, blocking_noop, i) for i in batch))
        return time.perf_counter() - start


async def stint_kind(n: int, kind: str, instances: int, concurrency: int) -> float:
    """stint kind "thread" or "process" running a blocking no-op, in waves of WINDOW as the
    executors it is compared with run theirs."""
    async with Runtime(store=_memory(n)) as rt:
        rt.register(
            "noop", blocking_noop, kind=kind, max_instances=instances, concurrency=concurrency,
            min_instances=instances, max_queued=n + 1, freeze_after=3600,
        )  # fmt: skip
        # warm every instance first: the executors below are started beforehand too
        warm = instances * concurrency
        await asyncio.gather(*(rt.invoke("noop", -1) for _ in range(warm)))
        await rt.join("noop")
        return await _timed_waves(rt, n, warmed=warm)


async def stint_thread(n: int) -> float:
    return await stint_kind(n, "thread", instances=10, concurrency=1)


async def stint_process(n: int) -> float:
    return await stint_kind(n, "process", instances=2, concurrency=50)


async def stint_redis(n: int) -> float:
    from .cluster import stint_redis  # bench.cluster builds on this module

    return await stint_redis(n)


async def stint_redis_2(n: int) -> float:
    from .cluster import stint_redis_2

    return await stint_redis_2(n)


@dataclass(frozen=True)
class Variant:
    name: str
    run: Callable[[int], Coroutine[Any, Any, float]]
    loop: str  # "uvloop" or "asyncio"
    what: str
    share: float = 1.0  # fraction of N this variant runs
    needs: str | None = None  # a program it starts (skipped, with the reason, without it)


VARIANTS = [
    Variant("bare", bare_create_task, "uvloop", "uvloop create_task + gather (the limit)"),
    Variant("bare-asyncio", bare_create_task, "asyncio", "same, default asyncio loop"),
    Variant("stint-async", stint_async, "uvloop", "stint kind=async, memory store, metrics on"),
    Variant("stint-async-asyncio", stint_async, "asyncio", "same, default asyncio loop"),
    Variant(
        "stint-windowed", stint_windowed, "uvloop", "stint async, memory, 1000 invokes at once"
    ),
    Variant("stint-sqlite", stint_sqlite, "uvloop", "same on sqlite, synchronous=FULL"),
    Variant("aiojobs", aiojobs_scheduler, "uvloop", "aiojobs Scheduler(limit=1000)"),
    Variant(
        "pykka-per-task", pykka_actor_per_task, "uvloop", "a pykka ThreadingActor per task", 0.02
    ),
    Variant("stint-thread", stint_thread, "uvloop", "stint kind=thread, 10 instances", 0.1),
    Variant("thread-executor", thread_executor, "uvloop", "run_in_executor, 10 threads", 0.1),
    Variant("stint-process", stint_process, "uvloop", "stint kind=process, 2 workers", 0.05),
    Variant(
        "process-executor", process_executor, "uvloop", "ProcessPoolExecutor, 2 processes", 0.05
    ),
    Variant("stint-http", stint_http, "uvloop", "HTTP invoke -> 202, stint serve, 50 clients", 0.1),
    Variant(
        "stint-redis",
        stint_redis,
        "uvloop",
        "stint async on Redis, one node, waves of 1000",
        0.1,
        needs="redis-server",
    ),
    Variant(
        "stint-redis-2",
        stint_redis_2,
        "uvloop",
        "same, 2 node processes + a client process",
        0.1,
        needs="redis-server",
    ),
]
