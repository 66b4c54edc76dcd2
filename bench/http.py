"""stint through its HTTP API: a node served by ``stint serve`` in a subprocess (what a user
runs), driven by an aiohttp client with keep-alive and CONCURRENCY requests in flight.

``stint_http`` times N invokes (each answered 202) and checks they all Succeeded;
``invoke_latency`` times invoke -> Succeeded per task, each task's end read from its
event stream (SSE), CONCURRENCY tasks at a time.

The client is aiohttp, not httpx: on this machine httpx's AsyncClient managed ~900
requests/s on one connection and fewer with 50 (its pool, not the server, was the
limit), so it would have measured itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp

CONCURRENCY = 50
ROOT = pathlib.Path(__file__).resolve().parents[1]
INVOKE = "/v1/functions/noop/invocations"


@contextlib.contextmanager
def served(target: str = "bench.http_node:build") -> Iterator[str]:
    """Run ``stint serve TARGET --port 0`` from the checkout; yields its URL."""
    with serving(target) as (url, _):
        yield url


@contextlib.contextmanager
def serving(target: str = "bench.http_node:build") -> Iterator[tuple[str, int]]:
    """Run ``stint serve TARGET --port 0`` from the checkout; yields its URL and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", target, "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    try:
        url = None
        for line in process.stderr:
            found = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            raise RuntimeError("stint serve did not start")
        yield url, process.pid
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _session(url: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    return aiohttp.ClientSession(url, connector=connector)


async def _invoke(session: aiohttp.ClientSession, payload: Any) -> str:
    async with session.post(INVOKE, json={"payload": payload}) as response:
        if response.status != 202:
            raise AssertionError(f"invoke answered {response.status}: {await response.text()}")
        task_id: str = (await response.json())["task_id"]
        return task_id


async def _each(n: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``work(i)`` for i in range(n), CONCURRENCY at a time."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def stint_http(n: int) -> float:
    """N invokes through the API; seconds until the last 202 (then all checked Succeeded)."""
    with served() as url:
        async with _session(url) as session:
            ids: list[str] = []

            async def one(i: int) -> None:
                ids.append(await _invoke(session, i))

            await _each(CONCURRENCY * 4, one)  # warm the connections and the instances
            ids.clear()
            start = time.perf_counter()
            await _each(n, one)
            elapsed = time.perf_counter() - start
            for task_id in ids[:: max(1, len(ids) // 100)] + ids[-1:]:  # a sample, and the last
                await _until_succeeded(session, task_id)
    return elapsed


async def _until_succeeded(session: aiohttp.ClientSession, task_id: str) -> None:
    async with session.get(f"/v1/tasks/{task_id}/events") as events:
        async for line in events.content:
            if line.startswith(b"data:") and b'"status":"Succeeded"' in line:
                return
    raise AssertionError(f"task {task_id} ended without Succeeded")


async def invoke_latency(n: int) -> dict[str, float]:
    """invoke -> Succeeded per task through the API, CONCURRENCY tasks in flight, seconds."""
    from .probes import percentiles

    samples: list[float] = []
    with served() as url:
        async with _session(url) as session:

            async def one(i: int) -> None:
                start = time.perf_counter()
                await _until_succeeded(session, await _invoke(session, i))
                samples.append(time.perf_counter() - start)

            await _each(CONCURRENCY * 2, one)  # warm
            samples.clear()
            await _each(n, one)
    return percentiles(samples)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_cpu_per_invoke(n: int) -> dict[str, float]:
    """The node's CPU time per invoke (parsing, the app, the runtime running the task),
    under the same load as ``stint_http``: what one core can serve is 1 / this.

    Unlike a rate, it hardly moves when other processes share the machine."""
    with serving() as (url, pid):
        async with _session(url) as session:

            async def one(i: int) -> None:
                await _invoke(session, i)

            await _each(CONCURRENCY * 4, one)
            before, start = _cpu_seconds(pid), time.perf_counter()
            await _each(n, one)
            wall = time.perf_counter() - start
            await asyncio.sleep(0.2)  # the last tasks run
            cpu = _cpu_seconds(pid) - before
    return {"cpu_seconds_per_invoke": cpu / n, "invokes_per_s": n / wall, "n": n}
