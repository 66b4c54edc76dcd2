"""What a node of a cluster adds to its metrics, against a real Redis: the queues as Redis
sees them, reclaims, fenced writes and reconnects (docs/metrics.md, "Cluster metrics")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from runtime import Runtime
from runtime.stores.redis.store import RedisStore
from tests.conftest import eventually
from tests.redis_server import RedisServer

from .helpers import Gate
from .test_metrics import OPENMETRICS, doc_rows, fetch, names, parse, scraped

pytestmark = pytest.mark.redis

LEASE = "&lease=0.5"  # a dead node is seen (and reclaimed) within a fraction of a second


@asynccontextmanager
async def running(url: str, **options: Any) -> AsyncIterator[Runtime]:
    rt = Runtime(url, close_timeout=2, **options)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


def store_of(rt: Runtime) -> RedisStore:
    assert isinstance(rt.store, RedisStore)
    return rt.store


async def sample(rt: Runtime, name: str, **labels: str) -> float | None:
    """One sample of ``rt``'s scrape, or None if it is not there."""
    return (await scrape(rt)).get((name, tuple(sorted(labels.items()))))


async def scrape(rt: Runtime) -> dict[Any, float]:
    return parse(await rt.metrics_text())


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """``eventually`` for a check that awaits (a scrape)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


def fast_queue_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node reads the queues every 2 s; a test need not wait that long."""
    monkeypatch.setattr("runtime.cluster.node._STATS_EVERY", 0.02)


async def test_a_cluster_nodes_scrape_is_the_catalogue_plus_the_cluster_families(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_queue_stats(monkeypatch)
    async with running(redis_url) as rt:
        rt.register("f", Gate().handler)
        await until_sampled(rt, "stint_cluster_queue_depth", function="f")
        host, port = await rt.serve_metrics(port=0)
        cluster = {row[0].strip("`"): row for row in doc_rows("## Cluster metrics")}
        assert cluster
        for accept in (None, OPENMETRICS):
            text = await asyncio.to_thread(fetch, host, port, accept)
            families = scraped(text, openmetrics=accept is not None)
            catalogue = {row[0].strip("`") for row in doc_rows("## Catalogue")}
            assert sorted(families) == sorted(catalogue | set(cluster))
            for name, (_, doc_type, labels, _) in cluster.items():
                family_type, family_labels, count = families[name]
                assert (name, family_type) == (name, doc_type)
                assert (name, sorted(family_labels)) == (name, sorted(names(labels)))
                assert count > 0, f"{name} has no series"


async def until_sampled(rt: Runtime, name: str, **labels: str) -> float:
    async with asyncio.timeout(5):
        while (found := await sample(rt, name, **labels)) is None:
            await asyncio.sleep(0.01)
    return found


async def test_a_local_store_shows_no_cluster_families() -> None:
    async with Runtime() as rt:
        text = await rt.metrics_text()
    assert "stint_cluster" not in text and "stint_store_" not in text


async def test_the_queue_gauges_show_a_queued_task_of_a_function_no_node_serves(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_queue_stats(monkeypatch)
    async with running(redis_url) as rt:
        rt.register("f", Gate().handler)
        await rt.invoke("f", None)  # waits until f is registered cluster-wide
        rt.unregister("f")  # this node stops serving f: nobody does
        await rt.invoke("f", None)
        await rt.invoke("f", None)

        async def both_waiting() -> bool:
            samples = await scrape(rt)
            depth = samples.get(("stint_cluster_queue_depth", (("function", "f"),)))
            pending = samples.get(("stint_cluster_queue_pending", (("function", "f"),)))
            return (depth, pending) in ((2.0, 1.0), (3.0, 0.0))

        # the first task may have been fetched before the unregister (then it is pending)
        await until(both_waiting)


async def test_a_reclaim_and_the_dead_nodes_late_write_are_counted(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a runs a task and dies (no heartbeat): b takes the task over; a, still running it,
    finishes it, and its late write is refused."""
    url = redis_url + LEASE
    gate = Gate()
    async with running(url, node_id="a") as a:
        a.register("f", gate.handler)
        await a.invoke("f", None)
        await eventually(lambda: gate.entered == 1)
        async with running(url, node_id="b") as b:
            assert await sample(b, "stint_cluster_tasks_reclaimed_total") == 0
            assert await sample(a, "stint_cluster_fenced_writes_total") == 0
            await die(a)

            async def reclaimed() -> bool:
                samples = await scrape(b)
                tasks = samples[("stint_cluster_tasks_reclaimed_total", ())]
                return (tasks, samples[("stint_cluster_nodes_reclaimed_total", ())]) == (1, 1)

            await until(reclaimed)
            gate.open()  # a's attempt ends: its write of the outcome is fenced

            async def fenced() -> bool:
                return await sample(a, "stint_cluster_fenced_writes_total") == 1

            await until(fenced)
            assert await sample(a, "stint_cluster_tasks_reclaimed_total") == 0
            assert await sample(b, "stint_cluster_fenced_writes_total") == 0


async def die(rt: Runtime) -> None:
    """``rt`` stops renewing its lease and drops it: to the others it is dead at once
    (as after a crash, without the wait for the lease to run out)."""
    assert rt._cluster is not None
    heartbeat = rt._cluster.node._actors[0]
    heartbeat.stop()
    await store_of(rt).nodes.leave()


async def test_a_redis_restart_is_counted_as_a_reconnect(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    async with running(f"{server.url}?prefix=m{LEASE}") as rt:
        assert await sample(rt, "stint_store_reconnects_total") == 0
        conn = store_of(rt).conn
        await off_loop(server.stop)
        await eventually(lambda: not conn.connected)  # the heartbeat found it gone
        await off_loop(server.start)

        async def reconnected() -> bool:
            return await sample(rt, "stint_store_reconnects_total") == 1

        await until(reconnected)


async def off_loop(action: Callable[[], None]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, action)
