"""What the benchmark runs: each variant pushes N no-op tasks through one way of doing it.

A variant is a coroutine function ``(n) -> seconds`` that does its own set-up
outside the timed part and returns only the time of the work itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime import Runtime, TaskState

WINDOW = 1_000


async def noop(event: object, ctx: object = None) -> object:
    return event


async def bare_create_task(n: int) -> float:
    """The physical limit: ``loop.create_task`` + ``gather``, at most WINDOW in flight."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for base in range(0, n, WINDOW):
        await asyncio.gather(
            *[loop.create_task(noop(i)) for i in range(base, min(n, base + WINDOW))]
        )
    return time.perf_counter() - start


async def stint_async(n: int) -> float:
    """stint kind "async", memory store: invoke all N, wait until all are Succeeded."""
    async with Runtime(store=f"memory://?max_records={max(n, 1)}") as rt:
        rt.register("noop", noop, concurrency=WINDOW // 10, max_instances=10, max_queued=n + 1)
        start = time.perf_counter()
        for i in range(n):
            await rt.invoke("noop", i)
        await rt.join("noop")
        elapsed = time.perf_counter() - start
        done = await rt.list(function="noop", status=TaskState.SUCCEEDED, limit=n)
        if len(done) != n:
            raise AssertionError(f"only {len(done)} of {n} tasks Succeeded")
    return elapsed


@dataclass(frozen=True)
class Variant:
    name: str
    run: Callable[[int], Awaitable[float]]
    loop: str  # "uvloop" or "asyncio"
    what: str


VARIANTS = [
    Variant("bare", bare_create_task, "uvloop", "uvloop create_task + gather (the limit)"),
    Variant("bare-asyncio", bare_create_task, "asyncio", "same, default asyncio loop"),
    Variant("stint-async", stint_async, "uvloop", "stint kind=async, memory store"),
]
