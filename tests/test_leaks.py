"""Runtimes come and go in one process without leaving memory behind (on both builds).

A mypyc code-generation bug once made the compiled build leak every runtime whole
(an instance kept its ``services`` alive: the actor system, the store and every
record, ~25 MiB per 50,000 tasks) and no functional test noticed. This one would:
it runs several runtimes one after the other in one process, tens of thousands of
tasks each, and checks that nothing of a closed runtime survives and that allocated
blocks, traced memory and RSS stay flat once warmed up. Bounds are generous (a leak
is a whole runtime's worth per round); nothing here is timed.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

import pytest

from actors import ActorSystem
from runtime import Runtime
from runtime.loop import run

TASKS = 20_000  # per runtime: a leaked runtime is ~10 MiB and ~100,000 blocks
ROUNDS = 5  # the first two warm caches up (imports, interned names, allocator arenas)
WARM = 2
MAX_GROWTH_BLOCKS = 5_000  # over the three measured rounds (~25 seen)
MAX_GROWTH_RSS = 12 << 20  # 12 MiB (~2 seen): RSS also moves with allocator fragmentation
# tracemalloc makes allocation ~5x slower, so it watches two short runtimes at the end
TRACED_TASKS = 3_000  # a leaked runtime of this size: ~1.5 MiB traced
MAX_GROWTH_TRACED = 256 << 10  # (~300 bytes seen)


async def noop(event: Any, ctx: Any) -> Any:
    return event


async def one_runtime(tasks: int) -> None:
    async with Runtime() as rt:
        rt.register("noop", noop, concurrency=50, max_instances=4, max_queued=tasks + 1)
        for i in range(tasks):
            await rt.invoke("noop", i)
        await rt.join("noop", timeout=60)
        done, cursor = 0, None
        while True:  # every page (a page holds at most 1,000)
            page = await rt.list(function="noop", status="Succeeded", limit=1000, cursor=cursor)
            done += len(page)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert done == tasks


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def survivors() -> int:
    """Runtime and ActorSystem objects still alive (each would hold a whole runtime)."""
    return sum(1 for o in gc.get_objects() if type(o) in (Runtime, ActorSystem))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
@pytest.mark.slow
def test_several_runtimes_in_one_process_leave_nothing_behind() -> None:
    # other modules may hold runtimes of their own (an app module's, never started)
    gc.collect()
    before = survivors()
    readings = []
    for round_ in range(ROUNDS):
        # each runtime on a fresh loop, alternating the two loops stint supports
        run(one_runtime(TASKS), loop="uvloop" if round_ % 2 else "asyncio")
        gc.collect()
        assert survivors() == before, f"round {round_}: a closed runtime is still alive"
        readings.append((sys.getallocatedblocks(), rss()))
    report = f"(allocated blocks, RSS bytes) after each round: {readings}"
    (blocks0, rss0), (blocks, rss_) = readings[WARM - 1], readings[-1]
    assert blocks - blocks0 < MAX_GROWTH_BLOCKS, report
    assert rss_ - rss0 < MAX_GROWTH_RSS, report

    tracemalloc.start()
    try:
        traced = []
        for _ in range(2):
            run(one_runtime(TRACED_TASKS))
            gc.collect()
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert traced[1] - traced[0] < MAX_GROWTH_TRACED, f"traced bytes after each: {traced}"
