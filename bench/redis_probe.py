"""``python -m bench.redis_probe``: what the Redis layer costs, below the runtime.

Round-trip latency, then batched throughput of the three calls a task makes
(``invoke_many``, ``fetch``, one coalesced ``transition``), and the invoke group
commit under concurrent callers. Without ``--url`` it starts a throwaway
``redis-server`` on a free loopback port with AOF on (``appendfsync everysec``,
Redis' production default). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

from runtime.loop import run
from runtime.stores.redis import (
    ACK,
    FINAL,
    Claimed,
    FunctionRegistry,
    InvokeBatcher,
    NewTask,
    NodeRegistry,
    RecordStore,
    RedisConnection,
    RedisQueue,
    Transition,
    parse_redis_url,
)

BLOB = bytes(180)  # about what a packed no-op record weighs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_probe", description=__doc__)
    parser.add_argument("--url", help="a Redis to use (default: start one)")
    parser.add_argument("-n", "--tasks", type=int, default=10_000, help="tasks (10000)")
    parser.add_argument("-b", "--batch", type=int, action="append", help="batch sizes")
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    args = parser.parse_args(argv)
    batches = args.batch or [1, 10, 100, 1000]
    with redis_server(args.url) as url:
        rows = run(_probe(url, args.tasks, batches), loop=args.loop)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


MISSING = "redis-server not found: install it with `apt-get install -y redis-server`"


@contextlib.contextmanager
def redis_server(url: str | None = None, prefix: str = "probe") -> Iterator[str]:
    """``url`` as given, or a throwaway redis-server (AOF on, ``everysec``) on a free
    loopback port for as long as the block runs: yields its URL with ``prefix``."""
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(MISSING)
    with tempfile.TemporaryDirectory() as directory:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(port)
            yield f"redis://127.0.0.1:{port}/0?prefix={prefix}"
        finally:
            process.terminate()
            process.wait()


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise SystemExit(f"redis-server did not start on port {port}")


async def _probe(url: str, n: int, batches: list[int]) -> list[tuple[str, str]]:
    conn = RedisConnection(parse_redis_url(url), client_name="stint-probe")
    await conn.connect()
    rows: list[tuple[str, str]] = []
    try:
        await conn.command("FLUSHDB")
        samples = []
        for _ in range(2000):
            start = time.perf_counter()
            await conn.command("PING")
            samples.append(time.perf_counter() - start)
        rows.append(("PING round trip", _latency(samples)))
        for batch in batches:
            rows += await _pipeline(conn, n, batch)
            await conn.command("FLUSHDB")
        rows += await _group_commit(conn, n, concurrency=1000)
        await conn.command("FLUSHDB")
        rows += await _group_commit(conn, min(n, 2000), concurrency=1)
    finally:
        await conn.close()
    return rows


async def _pipeline(conn: RedisConnection, n: int, batch: int) -> list[tuple[str, str]]:
    """invoke_many, fetch and a final transition, each in batches of ``batch``."""
    node = "probe-node"
    records, queue = RecordStore(conn), RedisQueue(conn, node)
    await FunctionRegistry(conn, node).register("noop", "async", b"", now=time.time())
    await NodeRegistry(conn, node).join()
    tasks = [NewTask(f"t{batch}-{i}", "noop", time.time(), BLOB) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, batch):
        await records.invoke_many(tasks[i : i + batch])
    invoked = time.perf_counter()
    claimed: list[Claimed] = []
    while len(claimed) < n:
        fetched = await queue.fetch({"noop": batch})
        claimed += fetched.claimed["noop"]
    fetched_at = time.perf_counter()
    for i in range(0, n, batch):
        await records.transition(
            [
                Transition(c.task_id, c.status, node, c.epoch, "Succeeded", BLOB, ACK | FINAL)
                for c in claimed[i : i + batch]
            ],
            node=node,
        )
    done = time.perf_counter()
    per_task = done - start
    return [
        (f"batch {batch:>4}: invoke_many", _rate(n, invoked - start)),
        (f"batch {batch:>4}: fetch (read + claim)", _rate(n, fetched_at - invoked)),
        (f"batch {batch:>4}: transition (final)", _rate(n, done - fetched_at)),
        (f"batch {batch:>4}: all three, per task", _rate(n, per_task)),
    ]


async def _group_commit(conn: RedisConnection, n: int, concurrency: int) -> list[tuple[str, str]]:
    """``concurrency`` callers invoking one task at a time through the InvokeBatcher."""
    await FunctionRegistry(conn, "probe-node").register("noop", "async", b"", now=time.time())
    batcher = InvokeBatcher(RecordStore(conn))
    samples: list[float] = []
    ids = iter(range(n))

    async def caller() -> None:
        for i in ids:
            start = time.perf_counter()
            await batcher.add(NewTask(f"g{concurrency}-{i}", "noop", time.time(), BLOB))
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    label = f"invoke, {concurrency} concurrent callers"
    return [
        (label, f"{_rate(n, elapsed)}, {batcher.batches} round trips"),
        (f"{label}: latency", _latency(samples)),
    ]


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} /s"


def _latency(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"


if __name__ == "__main__":
    raise SystemExit(main())
