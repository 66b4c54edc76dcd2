"""A wait on a cluster answers what Redis ends up with, wherever the task ends.

A wait on a task held here is answered by its task actor, once the actor's last write
is in Redis; when that write does not go in as it was (a stop asked elsewhere reached
Redis first), or the task leaves this node before it ends (a retry another node
runs), the wait answers what the cluster decided instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from runtime import Runtime, TaskState
from runtime.cluster import tasks as cluster_tasks
from runtime.stores.redis import StoredRecord, Transition, WriteCode, WriteResult
from runtime.stores.redis.nodes import Beat
from runtime.wire import pack_record, unpack_record
from tests.conftest import eventually
from tests.redis_server import RedisServer
from tests.runtime.helpers import Gate
from tests.runtime.redis_helpers import Node, open_nodes
from tests.runtime.test_redis_outage import off_loop

pytestmark = pytest.mark.redis


async def echo(event: Any, ctx: Any) -> Any:
    return event


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Look every 10 ms (each look a Redis read) until ``check()`` holds, for 5 s."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never came")


async def stored_as(node: Node, task_id: str, status: str) -> StoredRecord:
    """The record as Redis has it, once it says ``status``."""
    found: list[StoredRecord] = []

    async def check() -> bool:
        stored = await node.records.get(task_id)
        found[:] = [stored] if stored is not None else []
        return stored is not None and stored.status == status

    await until(check, f"{task_id} in Redis as {status}")
    return found[0]


def watched(rt: Runtime, task_id: str) -> asyncio.Future[list[TaskState]]:
    """``rt.watch(task_id)`` under way: the states it yields, once it ends."""

    async def watch() -> list[TaskState]:
        return [event.status async for event in rt.watch(task_id)]

    return asyncio.ensure_future(watch())


async def waited_on_while_running(
    a: Runtime, gate: Gate, other: Node
) -> tuple[str, StoredRecord, asyncio.Future[Any]]:
    """A task of ``a`` blocked in its attempt (Running in Redis, as ``other`` reads it),
    and ``a.wait`` on it under way."""
    task_id = await a.invoke("f", 1)
    await eventually(lambda: gate.entered == 1)
    running = await stored_as(other, task_id, "Running")
    return task_id, running, asyncio.ensure_future(a.wait(task_id, timeout=4))


@pytest.fixture
def no_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters elsewhere look again only after 30 s: what they learn sooner came by the
    change feed (a change is announced only for a task someone waits on)."""
    monkeypatch.setattr(cluster_tasks, "POLL", 30.0)


async def test_a_client_is_told_of_an_end_it_waits_watches_or_joins_for(
    redis_url: str, no_poll: None
) -> None:
    gate = Gate()
    a, client = Runtime(store=redis_url), Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, client, open_nodes(redis_url, "reader") as [reader]:
        task_id = await client.invoke("f", 1)
        await eventually(lambda: gate.entered == 1)

        waiting = asyncio.ensure_future(client.wait(task_id, timeout=5))
        watching = watched(client, task_id)
        joining = asyncio.ensure_future(client.join("f", timeout=5))
        await eventually(lambda: len(client._waits.watched.get(task_id, [])) == 2)
        for key in (reader.keys.watched(task_id), reader.keys.joining):  # (their reads asked)
            await key_exists(reader, key)
        gate.open()
        assert (await waiting).status is TaskState.SUCCEEDED
        assert (await asyncio.wait_for(watching, 5))[-2:] == [
            TaskState.RUNNING,
            TaskState.SUCCEEDED,
        ]
        await joining


async def test_a_client_stop_returns_once_the_owner_wrote_stopped(
    redis_url: str, no_poll: None
) -> None:
    gate = Gate()
    a, client = Runtime(store=redis_url), Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, client:
        task_id = await client.invoke("f", 1)
        await eventually(lambda: gate.entered == 1)
        record = await asyncio.wait_for(client.stop(task_id), 5)
        assert record.status is TaskState.STOPPED and gate.cancelled == 1


async def key_exists(node: Node, key: str) -> None:
    async def check() -> bool:
        return bool(await node.conn.command("EXISTS", key))

    await until(check, key)


@contextlib.asynccontextmanager
async def failing_on_a(url: str) -> AsyncIterator[tuple[Runtime, str, Callable[[], None]]]:
    """Node ``a`` runs a task's first attempt, held until ``retry_on_b()``, which fails it
    and has its retry go to node ``b`` (a stops serving the function, b serves it)."""
    gate = Gate()

    async def fails(event: Any, ctx: Any) -> Any:
        await gate.wait()
        raise RuntimeError("the first attempt fails")

    a, b = Runtime(store=url), Runtime(store=url)
    a.register("f", fails, max_retries=1, retry_backoff=0.01)
    async with a, b:
        task_id = await a.invoke("f", 1)  # taken by a in its invoke's call
        await eventually(lambda: gate.entered == 1)

        def retry_on_b() -> None:
            a.unregister("f")
            b.register("f", echo, max_retries=1)
            gate.open()

        yield a, task_id, retry_on_b


async def test_a_wait_on_a_task_retried_on_another_node_returns_its_end(
    redis_url: str, no_poll: None
) -> None:
    async with failing_on_a(redis_url) as (a, task_id, retry_on_b):
        waiting = asyncio.ensure_future(a.wait(task_id, timeout=4))
        await asyncio.sleep(0)  # the wait starts while a holds the task
        retry_on_b()
        # Before, the wait waited for a's task actor, which gave the task back for its
        # retry and never ended it: WaitTimeoutError (or, without a timeout, forever).
        record = await waiting
        assert record.status is TaskState.SUCCEEDED and record.result == 1


async def test_a_wait_answered_here_agrees_with_a_stop_that_won_in_redis(redis_url: str) -> None:
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, running, waiting = await waited_on_while_running(a, gate, other)
        # Another node's stop reaches Redis before a's end (its control message not yet
        # read: none is sent here), so a's Succeeded is refused and a writes Stopped.
        stop = Transition(
            task_id, "Running", running.owner, running.epoch, "Stopping", running.blob, 0, None, "s"
        )
        [result] = await other.records.transition([stop], node="other")
        assert result.ok
        gate.open()
        record = await waiting
        # Before, the wait answered the actor's Succeeded, and every read after said Stopped.
        assert record.status is TaskState.STOPPED
        assert (await a.get(task_id)).status is TaskState.STOPPED
        assert (await other.records.get(task_id)).status == "Stopped"  # type: ignore[union-attr]


async def test_a_watch_here_ends_as_redis_has_it_when_a_stop_won_there(redis_url: str) -> None:
    """Before, a watch on this node yielded the actor's Succeeded (this node's copy, its
    write refused in Redis a moment later, where Stopped won) and ended there."""
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, running, waiting = await waited_on_while_running(a, gate, other)

        watching = watched(a, task_id)
        await eventually(lambda: len(a._waits.watched.get(task_id, [])) == 2)
        stop = Transition(
            task_id, "Running", running.owner, running.epoch, "Stopping", running.blob, 0, None, "s"
        )
        [result] = await other.records.transition([stop], node="other")
        assert result.ok
        gate.open()
        seen = await asyncio.wait_for(watching, 5)
        assert seen[-2:] == [TaskState.STOPPING, TaskState.STOPPED]
        assert TaskState.SUCCEEDED not in seen
        assert (await waiting).status is TaskState.STOPPED


async def end_as_the_reclaimer(other: Node, running: StoredRecord) -> None:
    """``other``, which took the task over (epoch + 1), ends it Failed."""
    failed = unpack_record(running.blob)
    failed.status = TaskState.FAILED
    failed.ended_at = failed.started_at
    theirs = Transition(
        running.task_id, "Running", "other", running.epoch + 1, "Failed", pack_record(failed),
        0, None, "f",
    )  # fmt: skip
    [result] = await other.records.transition([theirs], node="other")
    assert result.ok


async def test_a_wait_on_a_task_reclaimed_from_this_node_answers_the_reclaimers_end(
    redis_url: str,
) -> None:
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, running, waiting = await waited_on_while_running(a, gate, other)
        # "other" reclaims it (as after a lapse of a's lease): a's end will be fenced.
        key = other.keys.task(task_id)
        await other.conn.command("HSET", key, "owner", "other", "epoch", running.epoch + 1)
        gate.open()
        await eventually(lambda: task_id not in a._live)
        await end_as_the_reclaimer(other, running)
        record = await waiting
        # Before, the wait answered a's Succeeded, refused in Redis: every read said Failed.
        assert record.status is TaskState.FAILED
        assert (await a.get(task_id)).status is TaskState.FAILED


async def test_a_watch_on_a_task_retried_on_another_node_sees_its_end_at_once(
    redis_url: str, no_poll: None
) -> None:
    async with failing_on_a(redis_url) as (a, task_id, retry_on_b):
        watching = watched(a, task_id)
        await eventually(lambda: task_id in a._waits.watched)  # it waits on a's task actor
        retry_on_b()
        # Before, the Retrying event took the watcher's future, so a gave the task back as
        # watched by nobody, and the watcher read a's copy (its write not in yet): b's
        # Running and Succeeded were not announced, and came only with the next poll.
        statuses = await asyncio.wait_for(watching, 4)
        assert statuses[-3:] == [TaskState.RETRYING, TaskState.RUNNING, TaskState.SUCCEEDED]


async def test_a_wait_on_a_task_this_node_lost_hears_of_its_end_elsewhere(
    redis_url: str, no_poll: None
) -> None:
    """A write of a task held here is refused (fenced: another node reclaimed it) while
    its attempt still runs: the task actor is dropped without ending. Before, nothing
    told the wait here, which had read the local copy (and asked Redis for nothing): it
    heard of the reclaimer's end only at its next poll."""
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, running, waiting = await waited_on_while_running(a, gate, other)
        await eventually(lambda: task_id in a._waits.watched)
        key = other.keys.task(task_id)
        await other.conn.command("HSET", key, "owner", "other", "epoch", running.epoch + 1)
        fenced = WriteResult(WriteCode.FENCED, f"other {running.epoch + 1}")
        stale = Transition(task_id, "Running", "a", running.epoch, "Running", b"", 0, None, "")
        a._cluster.refused(task_id, stale, fenced)  # type: ignore[union-attr]  # (the writer's report)
        await eventually(lambda: task_id not in a._live)
        try:
            await end_as_the_reclaimer(other, running)
            assert (await waiting).status is TaskState.FAILED
        finally:
            gate.open()


async def test_a_node_back_from_a_lapse_lets_go_of_what_was_reclaimed_and_its_waiters_hear(
    redis_url: str, no_poll: None
) -> None:
    """A node whose lease lapsed (its loop blocked, a SIGSTOP, a partition) while an
    attempt ran: another node reclaimed the task and ended it. Before, the node came
    back still holding its copy, and learned otherwise only when that attempt wrote (it
    may run on for long): its wait and watch read that copy (asking Redis for nothing)
    and heard nothing of the reclaimer's end, and its get said Running."""
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, running, waiting = await waited_on_while_running(a, gate, other)

        watching = watched(a, task_id)
        await eventually(lambda: len(a._waits.watched.get(task_id, [])) == 2)
        assert a._cluster is not None
        store = a._cluster.store
        await other.conn.command("DEL", other.keys.node(store.node_id))  # the lease lapsed
        key = other.keys.task(task_id)  # "other" reclaimed the task, and ended it
        await other.conn.command("HSET", key, "owner", "other", "epoch", running.epoch + 1)
        await end_as_the_reclaimer(other, running)
        try:
            assert await store.nodes.beat() is Beat.CAME_BACK
            a._cluster.node._came_back()  # (what the heartbeat does when told so)
            assert (await asyncio.wait_for(waiting, 4)).status is TaskState.FAILED
            await asyncio.wait_for(watching, 4)  # (it ends as Redis has the task)
            assert (await a.get(task_id)).status is TaskState.FAILED
            assert task_id not in a._live
        finally:
            gate.open()


async def test_a_node_back_from_a_lapse_keeps_what_is_still_its_own(redis_url: str) -> None:
    gate = Gate()
    a = Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, open_nodes(redis_url, "other") as [other]:
        task_id, _, waiting = await waited_on_while_running(a, gate, other)
        assert a._cluster is not None
        assert await a._cluster.store.lost() == []
        a._cluster.node._came_back()
        await a._cluster.store.writer.flush(timeout=5.0)
        assert task_id in a._live and a._cluster.store.holds(task_id)
        gate.open()
        assert (await asyncio.wait_for(waiting, 4)).status is TaskState.SUCCEEDED


async def test_a_wait_a_watch_and_a_join_ride_out_an_outage(
    make_redis_server: Callable[[], RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away for several polls while a task runs elsewhere. Before, a wait raised
    StoreUnavailableError at its second failed read (its promise: keep waiting until
    its own timeout), and a watch (the HTTP event stream, 'stint invoke --wait') and a
    join at their first."""
    monkeypatch.setattr(cluster_tasks, "POLL", 0.05)
    server = make_redis_server()
    url = server.url + "?prefix=w&lease=5"
    gate = Gate()
    a, client = Runtime(store=url), Runtime(store=url)
    a.register("f", gate.handler)
    async with a, client:
        task_id = await client.invoke("f", 1)
        await eventually(lambda: gate.entered == 1)

        waiting = asyncio.ensure_future(client.wait(task_id, timeout=20))
        watching = watched(client, task_id)
        joining = asyncio.ensure_future(client.join("f", timeout=20))
        await eventually(lambda: len(client._waits.watched.get(task_id, [])) == 2)
        assert client._cluster is not None
        conn = client._cluster.store.conn
        await off_loop(server.stop)
        await eventually(lambda: conn.failures >= 6, timeout=10)  # every one has read, and failed
        await off_loop(server.start)
        gate.open()
        assert (await asyncio.wait_for(waiting, 10)).status is TaskState.SUCCEEDED
        assert (await asyncio.wait_for(watching, 10))[-1] is TaskState.SUCCEEDED
        await asyncio.wait_for(joining, 10)


async def test_a_join_counts_again_when_the_change_feed_is_back(
    redis_url: str, no_poll: None
) -> None:
    """The change feed reports a gap (it resubscribed after a break: what was published
    meanwhile went unheard). Before, only the waits and watches looked again; a join
    heard of an end announced during the gap only at its next poll."""
    gate = Gate()
    a, client = Runtime(store=redis_url), Runtime(store=redis_url)
    a.register("f", gate.handler)
    async with a, client, open_nodes(redis_url, "reader") as [reader]:
        task_id = await client.invoke("f", 1)
        await eventually(lambda: gate.entered == 1)
        await stored_as(reader, task_id, "Running")
        joining = asyncio.ensure_future(client.join("f", timeout=5))
        await key_exists(reader, reader.keys.joining)
        assert client._cluster is not None
        feed = client._cluster.node._feed
        feed._on_change = lambda ids: None  # (the break: what is published goes unheard)
        gate.open()
        await stored_as(reader, task_id, "Succeeded")
        client._cluster._gap()  # what the feed calls once subscribed again
        await asyncio.wait_for(joining, 4)
