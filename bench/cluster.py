"""stint on Redis: one node, two node processes, and the invoke -> Succeeded latency.

Every run starts a throwaway ``redis-server`` of its own (AOF on, ``appendfsync
everysec``, on a free loopback port: :func:`bench.redis_probe.redis_server`), so
runs share no state; its start is outside the timed part. Without the binary
these variants and the probe are skipped (``__main__`` says why).

Besides its time, each run records what it cost where (:data:`COSTS`): CPU
seconds of the redis-server (``INFO cpu``) and of the stint processes, and the
time Redis spent in commands (``INFO commandstats``), per task. Those are what the
scaling model in docs/performance.md is built from: unlike a rate, they hardly
move when other processes share the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from runtime import Runtime
from runtime.stores.redis import RedisConnection, parse_redis_url

from .http import ROOT, _cpu_seconds
from .redis_probe import MISSING, redis_server
from .variants import WINDOW, _check_all_succeeded, noop

#: Why the Redis variants cannot run here, or None.
UNAVAILABLE: str | None = None if shutil.which("redis-server") else MISSING
#: variant name -> one dict per run: CPU and command time per task (see module doc).
COSTS: dict[str, list[dict[str, float]]] = {}


async def stint_redis(n: int) -> float:
    """One node (this process) on Redis: invokes in waves of WINDOW, each waited for."""
    with redis_server(prefix="bench") as url:
        rt = Runtime(store=url)
        _register(rt, n)
        async with rt:
            await _warm(rt)
            async with _costs("stint-redis", url, n, [os.getpid()]):
                elapsed = await _waves(rt, n)
            await _check_all_succeeded(rt, n + WINDOW)
    return elapsed


async def stint_redis_2(n: int) -> float:
    """Two node processes serve the function; this process only invokes and waits."""
    with redis_server(prefix="bench") as url, _nodes(url, 2) as pids:
        async with Runtime(store=url) as rt:
            await _warm(rt)
            async with _costs("stint-redis-2", url, n, [os.getpid(), *pids]):
                elapsed = await _waves(rt, n)
            await _check_all_succeeded(rt, n + WINDOW)
    return elapsed


async def round_trip_latency(n: int) -> dict[str, float]:
    """invoke -> Succeeded of one no-op at a time on a one-node cluster (no load), seconds."""
    from .probes import percentiles, round_trips

    with redis_server(prefix="bench") as url:
        rt = Runtime(store=url)
        rt.register("noop", noop, min_instances=1, freeze_after=3600)
        async with rt:
            await round_trips(rt, 100)  # warm: the instance, the connections, the scripts
            return percentiles(await round_trips(rt, n))


async def _waves(rt: Runtime, n: int) -> float:
    """Seconds to invoke N no-ops in waves of WINDOW and wait for all: a wave's invokes are
    made at once (``gather``: callers that do not wait for each other, as a durable store
    needs to commit many in one round trip), then the cluster is joined."""
    start = time.perf_counter()
    for base in range(0, n, WINDOW):
        await asyncio.gather(*(rt.invoke("noop", i) for i in range(base, min(n, base + WINDOW))))
        await rt.join("noop")
    return time.perf_counter() - start


def _register(rt: Runtime, n: int) -> None:
    rt.register("noop", noop, concurrency=100, max_instances=10, max_queued=n + WINDOW + 1)


async def _warm(rt: Runtime) -> None:
    """One wave first (scripts loaded, instances started), counted by the check at the end."""
    await asyncio.gather(*(rt.invoke("noop", -i) for i in range(1, WINDOW + 1)))
    await rt.join("noop")


@contextlib.asynccontextmanager
async def _costs(name: str, url: str, n: int, pids: list[int]) -> AsyncIterator[None]:
    """Record the CPU and Redis command time per task of the block, into COSTS[name]."""
    conn = RedisConnection(parse_redis_url(url), client_name="stint-bench")
    await conn.connect()
    try:
        await conn.command("CONFIG", "RESETSTAT")
        server_before = await _server_cpu(conn)
        before = [_cpu_seconds(pid) for pid in pids]
        yield
        stint_cpu = sum(_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
        server_cpu = await _server_cpu(conn) - server_before
        command_us = await _command_microseconds(conn)
    finally:
        await conn.close()
    COSTS.setdefault(name, []).append(
        {
            "redis_cpu_us_per_task": server_cpu / n * 1e6,
            "redis_commands_us_per_task": command_us / n,
            "stint_cpu_us_per_task": stint_cpu / n * 1e6,
        }
    )


async def _info(conn: RedisConnection, section: str) -> dict[str, Any]:
    info: dict[str, Any] = await conn.command("INFO", section)  # redis-py parses it
    return info


async def _server_cpu(conn: RedisConnection) -> float:
    cpu = await _info(conn, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _command_microseconds(conn: RedisConnection) -> float:
    """Time Redis spent in scripts since RESETSTAT (a script's time includes the commands it
    calls, which are counted again under their own names: those are left out)."""
    stats = await _info(conn, "commandstats")
    return sum(
        float(stats[key]["usec"]) for key in ("cmdstat_evalsha", "cmdstat_eval") if key in stats
    )


@contextlib.contextmanager
def _nodes(url: str, count: int) -> Iterator[list[int]]:
    """``count`` node processes (``python -m bench.redis_node URL``), each ready to serve."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.redis_node", url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a bench node did not start: see its output above")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            with contextlib.suppress(OSError):
                process.communicate(input="", timeout=30)  # stdin closed: the node stops


def summary(name: str) -> dict[str, Any] | None:
    """Median per-task costs of a variant's runs (None if it did not run)."""
    import statistics

    runs = COSTS.get(name)
    if not runs:
        return None
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def cost_line(name: str) -> str | None:
    costs = summary(name)
    if costs is None:
        return None
    return (
        f"{name}: per task, redis-server {costs['redis_cpu_us_per_task']:.1f} µs CPU "
        f"({costs['redis_commands_us_per_task']:.1f} µs in scripts), stint processes "
        f"{costs['stint_cpu_us_per_task']:.1f} µs CPU"
    )


async def _serve_until_stdin_closes() -> None:  # pragma: no cover - runs in a node process
    rt = Runtime(store=sys.argv[1])
    _register(rt, 10_000_000)  # before the start, which records it in the cluster
    async with rt:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
