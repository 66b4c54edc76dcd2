"""stint through its HTTP API: a node served by ``stint serve`` in a subprocess (what a user
runs), driven by an httpx AsyncClient with keep-alive and CONCURRENCY requests in flight.

``stint_http`` times N invokes (each answered 202) and checks they all Succeeded;
``invoke_latency`` times invoke -> Succeeded per task, each task's end read from its
event stream (SSE), CONCURRENCY tasks at a time.
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
from collections.abc import Iterator
from typing import Any

import httpx

CONCURRENCY = 50
ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served(target: str = "bench.http_node:build") -> Iterator[str]:
    """Run ``stint serve TARGET --port 0`` from the checkout; yields its URL."""
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
        for line in process.stderr:
            found = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if found:
                break
        else:
            raise RuntimeError("stint serve did not start")
        yield found.group(1)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0)


async def _invoke(client: httpx.AsyncClient, payload: Any) -> str:
    response = await client.post("/v1/functions/noop/invocations", json={"payload": payload})
    if response.status_code != 202:
        raise AssertionError(f"invoke answered {response.status_code}: {response.text}")
    task_id: str = response.json()["task_id"]
    return task_id


async def _each(n: int, work: Any) -> None:
    """Run ``work(i)`` for i in range(n), CONCURRENCY at a time."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def stint_http(n: int) -> float:
    """N invokes through the API; seconds until the last 202 (then all checked Succeeded)."""
    with served() as url:
        async with _client(url) as client:
            await _each(CONCURRENCY * 4, lambda i: _invoke(client, i))  # warm connections
            ids: list[str] = []

            async def one(i: int) -> None:
                ids.append(await _invoke(client, i))

            start = time.perf_counter()
            await _each(n, one)
            elapsed = time.perf_counter() - start
            await _check_succeeded(client, ids)
    return elapsed


async def _check_succeeded(client: httpx.AsyncClient, ids: list[str]) -> None:
    async def done(task_id: str) -> None:
        while (await client.get(f"/v1/tasks/{task_id}")).json()["status"] != "Succeeded":
            await asyncio.sleep(0.01)

    await done(ids[-1])
    for i in range(0, len(ids), max(1, len(ids) // 100)):  # a sample of 100
        await done(ids[i])


async def _until_succeeded(client: httpx.AsyncClient, task_id: str) -> None:
    async with client.stream("GET", f"/v1/tasks/{task_id}/events") as events:
        async for line in events.aiter_lines():
            if line.startswith("data:") and '"Succeeded"' in line:
                return
    raise AssertionError(f"task {task_id} ended without Succeeded")


async def invoke_latency(n: int) -> dict[str, float]:
    """invoke -> Succeeded per task through the API, CONCURRENCY tasks in flight, seconds."""
    from .probes import percentiles

    samples: list[float] = []
    with served() as url:
        async with _client(url) as client:

            async def one(i: int) -> None:
                start = time.perf_counter()
                await _until_succeeded(client, await _invoke(client, i))
                samples.append(time.perf_counter() - start)

            await _each(CONCURRENCY * 2, one)  # warm
            samples.clear()
            await _each(n, one)
    return percentiles(samples)
