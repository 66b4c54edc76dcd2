"""The figures that are not throughput: latency, stop latency, cold start, memory, a sweep."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

from runtime import Runtime, TaskState

from .handlers import blocking_noop, until_stopped
from .variants import noop, stint_async, until_cancelled, yield_once


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "n": len(ordered)}


async def round_trip_latency(n: int) -> dict[str, float]:
    """invoke-to-Succeeded of one no-op at a time (no load), in seconds."""
    async with Runtime() as rt:
        rt.register("noop", noop, min_instances=1, freeze_after=3600)
        await rt.wait(await rt.invoke("noop"))
        return percentiles(await round_trips(rt, n))


async def round_trips(rt: Runtime, n: int) -> list[float]:
    """Seconds from each of ``n`` invokes of ``noop``, one at a time, to its end."""
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await rt.wait(await rt.invoke("noop", i))
        samples.append(time.perf_counter() - start)
    return samples


async def stop_latency(n: int, kind: str = "async") -> dict[str, float]:
    """``rt.stop`` of a Running task: PreStop, the instance replaced, Stopped."""
    handler = until_cancelled if kind == "async" else until_stopped
    async with Runtime(tick_interval=0.005) as rt:
        rt.register("block", handler, kind=kind)
        samples = []
        for _ in range(n):
            task_id = await rt.invoke("block")
            while (await rt.get(task_id)).status is not TaskState.RUNNING:  # noqa: ASYNC110
                await asyncio.sleep(0.001)  # a probe may poll before what it measures
            start = time.perf_counter()
            await rt.stop(task_id)
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


async def cold_start(n: int, kind: str = "async") -> dict[str, float]:
    """From an instance's creation to Ready (no Initializer), read off its own events."""
    samples = []
    handler = noop if kind == "async" else blocking_noop
    async with Runtime() as rt:
        for i in range(n):
            name = f"cold{i}"
            rt.register(name, handler, kind=kind)
            await rt.wait(await rt.invoke(name))
            [info] = await rt.instances(name)
            times = {event.event: event.timestamp for event in info.events}
            samples.append(times["ready"] - times["starting"])
            rt.unregister(name)
    return percentiles(samples)


async def memory_per_record(n: int) -> dict[str, float]:
    """Bytes held per retained terminal record (tracemalloc, after a full collection)."""
    async with Runtime(store=f"memory://?max_records={n}") as rt:
        rt.register("noop", noop, concurrency=100, max_queued=n + 1)
        await rt.wait(await rt.invoke("noop", -1))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n - 1):
            await rt.invoke("noop", i)
        await rt.join("noop")
        await asyncio.sleep(0.2)  # let idle instances freeze: no transient state counted
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tracked = sum(1 for o in gc.get_objects() if type(o).__name__ == "TaskRecord")
    return {
        "bytes_per_record": (after - before) / (n - 1),
        "records": n,
        "live_record_objects": tracked,
    }


async def concurrency_sweep(n: int, levels: list[int]) -> list[dict[str, Any]]:
    """stint-async throughput on one instance as its ``concurrency`` grows."""
    out = []
    for handler in (noop, yield_once):
        for level in levels:
            seconds = statistics.median(
                [
                    await stint_async(n, concurrency=level, instances=1, handler=handler)
                    for _ in range(3)
                ]
            )
            out.append(
                {"handler": handler.__name__, "concurrency": level, "tasks_per_s": n / seconds}
            )
    return out
