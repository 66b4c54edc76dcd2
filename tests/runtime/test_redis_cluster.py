"""Nodes of a cluster in a real Redis: heartbeats, reclaiming a dead node, stop requests."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from runtime.errors import StoreError
from runtime.stores.redis import (
    ACK,
    FINAL,
    NOTIFY,
    Beat,
    ChangeFeed,
    Claimed,
    ControlChannel,
    InvokeCode,
    NodeRegistry,
    QueueStats,
    StopRequest,
    Transition,
    WriteCode,
)
from tests.conftest import eventually
from tests.runtime.redis_helpers import Node, keys_of, open_nodes

pytestmark = pytest.mark.redis


# --- nodes -------------------------------------------------------------------------------------


async def test_live_nodes_are_listed_with_what_they_publish(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b", join=False) as [a, b]:
        await a.nodes.join(functions=["f", "g"], in_flight=0)
        await b.nodes.join()
        await a.nodes.beat(functions=["f", "g"], in_flight=3)
        listed = await a.nodes.nodes()
        assert [n.node_id for n in listed] == ["a", "b"]
        info = listed[0]
        assert (info.functions, info.in_flight, info.pid) == (("f", "g"), 3, a.nodes.pid)
        assert info.host == a.nodes.host and info.started_at == a.nodes.started_at
        assert info.heartbeat_at >= info.started_at
        ttl = await a.conn.command("PTTL", a.keys.node("a"))
        assert 0 < ttl <= a.conn.options.lease * 1000


async def test_a_node_id_in_use_is_refused(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "a2") as [a, other]:
        twin = NodeRegistry(other.conn, "a")
        with pytest.raises(StoreError, match="in use by a live node"):
            await twin.join()
        assert [n.node_id for n in await a.nodes.nodes()] == ["a", "a2"]


async def test_a_lapsed_node_comes_back_if_nobody_reclaimed_it(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        await a.conn.command("DEL", a.keys.node("a"))  # the lease ran out
        assert await b.nodes.dead_nodes() == ["a"]
        with caplog.at_level(logging.WARNING, "stint"):
            assert await a.nodes.beat() is Beat.CAME_BACK
        assert "lost its lease" in caplog.text and a.nodes.came_back == 1
        assert await b.nodes.dead_nodes() == []
        assert (await a.move(claimed, "Running")).ok  # nothing was reclaimed: still its own


async def test_a_lapsed_node_waits_while_it_is_being_reclaimed(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.conn.command("DEL", a.keys.node("a"))
        await b.conn.command("SET", b.keys.reclaim_lock("a"), "b", "PX", 10_000)
        assert await a.nodes.beat() is Beat.BEING_RECLAIMED
        with pytest.raises(StoreError, match="being reclaimed"):
            await a.nodes.join()


async def test_lease_validity_follows_the_last_renewal(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", join=False) as [a]:
        now = [100.0]
        registry = NodeRegistry(a.conn, "a", monotonic=lambda: now[0])
        assert not registry.lease_valid()
        await registry.join()
        assert registry.lease_valid()
        now[0] += registry.lease - 0.01
        assert registry.lease_valid()
        now[0] += 0.02
        assert not registry.lease_valid()
        await registry.beat()
        assert registry.lease_valid()
        await registry.leave()
        assert not registry.lease_valid()


@pytest.mark.realtime
async def test_a_heartbeat_really_expires_after_the_lease(redis_url: str) -> None:
    async with open_nodes(redis_url + "&lease=0.3", "a", "b") as [a, b]:
        async with asyncio.timeout(3):
            while await b.nodes.dead_nodes() != ["a", "b"]:
                await asyncio.sleep(0.02)
        assert await a.nodes.nodes() == []


# --- reclaim -------------------------------------------------------------------------------------


async def _dead_node_with_work(a: Node) -> dict[str, Claimed]:
    """a holds 30 tasks of f (more than 4 reclaim pages) and 3 of g, in every unfinished state."""
    await a.register("f", "g")
    await a.invoke("f", *[f"f{i:02d}" for i in range(32)])
    await a.invoke("g", "g1", "g2", "g3")
    held = {c.task_id: c for c in await a.fetch("f", 32) + await a.fetch("g", 3)}
    states = ["Enqueued", "Dequeued", "Running", "Stopping"]
    now: dict[str, str] = {}
    for i, task_id in enumerate(sorted(held)):
        now[task_id] = states[i % 4]
        if now[task_id] != "Enqueued":
            assert (await a.move(held[task_id], "Dequeued")).ok
            if now[task_id] != "Dequeued":
                assert (await a.move((task_id, held[task_id].epoch, "Dequeued"), now[task_id])).ok
    # two finished: not a's any more, nothing to reclaim
    for task_id in ("f30", "f31"):
        done = await a.move((task_id, held[task_id].epoch, now[task_id]), "Succeeded", ACK | FINAL)
        assert done.ok
        held.pop(task_id)
    return held


async def test_reclaim_takes_over_every_task_of_a_dead_node(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        held = await _dead_node_with_work(a)
        await a.nodes.leave()
        pages: list[int] = []
        report = await b.reclaimer.reclaim("a", on_claimed=lambda items: pages.append(len(items)))
        assert report.outcome == "done"
        assert sorted(c.task_id for c in report.claimed) == sorted(held)
        assert sum(pages) == len(held) and len(pages) > 4  # followed page after page
        for item in report.claimed:
            before = await b.records.get(item.task_id)
            assert before is not None and (before.owner, before.epoch) == ("b", item.epoch)
            assert item.previous_owner == "a" and item.recovered
            assert item.epoch == held[item.task_id].epoch + 1
            assert item.function == item.task_id[0]
        by_status = {c.task_id: c.status for c in report.claimed}
        assert by_status["f00"] == "Enqueued" and by_status["f02"] == "Running"
        # a's late writes are refused
        late = await a.move(("f02", held["f02"].epoch, "Running"), "Succeeded", ACK | FINAL)
        assert late.code is WriteCode.FENCED and late.detail == f"b {held['f02'].epoch + 1}"
        # b holds the entries now; a is forgotten
        assert await b.nodes.dead_nodes() == []
        assert b.keys.reclaim_lock("a") not in await keys_of(b.conn)
        consumers = await b.conn.client.xinfo_consumers(b.keys.stream("f"), "workers")
        assert [c["name"] for c in consumers] == [b"b"]
        assert b.reclaimer.reclaimed == len(held) and b.reclaimer.nodes_reclaimed == 1


async def test_b_can_finish_what_it_reclaimed(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await _dead_node_with_work(a)
        await a.nodes.leave()
        report = await b.reclaimer.reclaim("a")
        for item in report.claimed:
            assert (await b.move(item, "Stopped", ACK | FINAL)).ok
        stats = await b.queue.stats(["f", "g"])
        assert all(s.pending == 0 and s.depth == 0 for s in stats.values())


async def test_a_live_node_is_never_reclaimed_however_long_it_runs(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "long")
        [claimed] = await a.fetch("f", 1)
        await a.move(claimed, "Running")
        await b.conn.command("SADD", b.keys.nodes, "a")
        report = await b.reclaimer.reclaim("a")
        assert (report.outcome, report.claimed) == ("alive", [])
        assert await b.fetch("f", 1) == []
        assert (await a.move(("long", claimed.epoch, "Running"), "Succeeded", ACK | FINAL)).ok


async def test_one_node_at_a_time_reclaims(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b", "c") as [a, b, c]:
        held = await _dead_node_with_work(a)
        await a.nodes.leave()
        reports = await asyncio.gather(b.reclaimer.reclaim("a"), c.reclaimer.reclaim("a"))
        claimed = [item.task_id for r in reports for item in r.claimed]
        assert sorted(claimed) == sorted(held)  # each task exactly once
        assert sorted(r.outcome for r in reports) in (["busy", "done"], ["done", "gone"])
        assert (await b.reclaimer.reclaim("a")).outcome == "gone"


async def test_reclaim_stops_when_the_dead_node_comes_back(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        held = await _dead_node_with_work(a)
        await a.nodes.leave()
        came_back = asyncio.Event()

        def first_page(items: list[Claimed]) -> None:
            if not came_back.is_set():
                came_back.set()
                # a's heartbeat reappears (written directly: a's own beat would wait for the lock)
                asyncio.get_running_loop().create_task(
                    a.conn.command("SET", a.keys.node("a"), "x", "PX", 10_000)
                )

        report = await b.reclaimer.reclaim("a", on_claimed=first_page)
        assert report.outcome == "alive"
        assert 0 < len(report.claimed) < len(held)
        assert b.keys.reclaim_lock("a") in await keys_of(b.conn)  # expires by itself


async def test_entries_read_but_never_claimed_are_reclaimed_as_queued(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        stream = a.keys.stream("f")
        await a.conn.command(
            "XREADGROUP", "GROUP", "workers", "a", "COUNT", 1, "STREAMS", stream, ">"
        )
        await a.nodes.leave()
        report = await b.reclaimer.reclaim("a")
        [item] = report.claimed
        assert (item.task_id, item.status, item.previous_owner) == ("t1", "Enqueued", "")


async def test_a_reclaimed_node_that_comes_back_holds_nothing_it_lost(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        held = await _dead_node_with_work(a)
        await a.nodes.leave()
        await b.reclaimer.reclaim("a")
        assert await a.nodes.beat() is Beat.CAME_BACK
        for claimed in held.values():
            result = await a.move(claimed, "Running")
            assert result.code is WriteCode.FENCED


async def test_a_dead_nodes_control_stream_goes_with_it(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        assert (await b.move(claimed, "Stopping", NOTIFY, owner="a")).ok
        await a.nodes.leave()
        report = await b.reclaimer.reclaim("a")
        [item] = report.claimed
        assert item.status == "Stopping"  # recovery makes it Stopped
        assert a.keys.control("a") not in await keys_of(b.conn)


# --- control channel -----------------------------------------------------------------------------


async def test_stop_requests_reach_the_owner_in_order_and_go_once_handled(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        c1, c2 = await a.fetch("f", 2)
        channel = ControlChannel(a.conn, "a")
        assert await channel.read(timeout=0.01) == []
        reading = asyncio.ensure_future(channel.read(timeout=4))
        await asyncio.sleep(0.02)
        assert (await b.move(c1, "Stopping", NOTIFY, owner="a")).ok
        [first] = await reading
        assert (first.task_id, first.by) == ("t1", "b")
        assert (await b.move(c2, "Stopping", NOTIFY, owner="a")).ok
        [second] = await channel.read(timeout=1)
        assert second.task_id == "t2"
        await channel.done([first.entry_id, second.entry_id])
        assert await a.conn.command("XLEN", a.keys.control("a")) == 0
        assert await ControlChannel(a.conn, "a").read(timeout=0.01) == []


async def test_unhandled_requests_are_read_again_by_a_new_reader(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        await b.move(claimed, "Stopping", NOTIFY, owner="a")
        assert [r.task_id for r in await ControlChannel(a.conn, "a").read(timeout=1)] == ["t1"]
        again = await ControlChannel(a.conn, "a").read(timeout=1)
        assert [type(r) for r in again] == [StopRequest]


async def test_a_malformed_control_message_is_logged_and_skipped(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.conn.command("XADD", a.keys.control("a"), "*", "junk", "1")
        await a.conn.command("XADD", a.keys.control("a"), "*", "t", "t9", "by", "z")
        with caplog.at_level(logging.ERROR, "stint"):
            requests = await ControlChannel(a.conn, "a").read(timeout=1)
        assert [(r.task_id, r.by) for r in requests] == [("t9", "z")]
        assert "malformed control message" in caplog.text


# --- functions -----------------------------------------------------------------------------------


async def test_functions_are_registered_cluster_wide(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        assert await a.functions.register("f", "async", b"cfg1", now=5.0)
        assert not await b.functions.register("f", "thread", b"cfg2", now=6.0)
        info = await a.functions.get("f")
        assert info is not None
        assert (info.kind, info.config, info.registered_at, info.updated_at, info.updated_by) == (
            "thread",
            b"cfg2",
            5.0,
            6.0,
            "b",
        )
        await b.functions.register("g", "process", b"", now=7.0)
        assert await a.functions.names() == ["f", "g"]
        assert [i.name for i in await a.functions.all()] == ["f", "g"]
        assert await a.functions.get("nope") is None


async def test_a_deleted_function_takes_no_new_tasks(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "before")
        assert await a.functions.delete("f")
        assert not await a.functions.delete("f")
        assert await a.invoke("f", "after") == [InvokeCode.NO_FUNCTION]
        assert await a.functions.names() == []
        assert [c.task_id for c in await a.fetch("f", 5)] == ["before"]  # the caller's to end


async def test_a_listener_that_raises_does_not_end_the_change_feed(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        heard: list[str] = []

        def listener(ids: list[str]) -> None:
            heard.extend(ids)
            if ids == ["t1"]:
                raise ValueError("a bug in the listener")

        feed = ChangeFeed(a.conn, listener)
        await feed.start()
        try:
            await a.register("f")
            with caplog.at_level(logging.ERROR, "stint"):
                await a.publish_change("f", "t1")
                await a.publish_change("f", "t2")
                await eventually(lambda: heard == ["t1", "t2"])
            assert "listener raised" in caplog.text
        finally:
            await feed.close()


async def test_a_reclaim_racing_the_dead_nodes_late_writes_lets_exactly_one_win(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a", "b", "c") as [a, b, c]:
        await a.register("f")
        ids = [f"t{i:03d}" for i in range(150)]
        await a.invoke("f", *ids)
        held = await a.fetch("f", len(ids))
        running = [Transition(h.task_id, "Enqueued", "a", h.epoch, "Running", b"r") for h in held]
        assert all(r.ok for r in await a.records.transition(running, node="a"))
        await a.nodes.leave()  # a is dead to the others, but still writes
        won_by_a: set[str] = set()
        reclaimed: set[str] = set()

        async def late_writes() -> None:
            for start in range(0, len(held), 10):
                chunk = held[start : start + 10]
                items = [
                    Transition(h.task_id, "Running", "a", h.epoch, "Succeeded", b"a", ACK | FINAL)
                    for h in chunk
                ]
                results = await a.records.transition(items, node="a")
                won_by_a.update(h.task_id for h, r in zip(chunk, results, strict=True) if r.ok)
                assert all(r.ok or r.code is WriteCode.FENCED for r in results)
                await asyncio.sleep(0)

        async def reclaim(node: Node) -> None:
            report = await node.reclaimer.reclaim("a")
            for item in report.claimed:
                assert (await node.move(item, "Failed", ACK | FINAL)).ok
                reclaimed.add(item.task_id)

        await asyncio.gather(late_writes(), reclaim(b), reclaim(c))
        assert won_by_a.isdisjoint(reclaimed)
        assert won_by_a | reclaimed == set(ids)
        for record in await b.records.get_many(ids):
            assert record is not None
            expected = "Succeeded" if record.task_id in won_by_a else "Failed"
            assert record.status == expected
        assert await b.queue.stats(["f"]) == {"f": QueueStats(0, 0)}


# --- a runtime as a client of the cluster --------------------------------------------------


async def test_a_burst_of_invokes_on_a_client_node_reads_the_functions_once(
    redis_url: str,
) -> None:
    from runtime import Runtime, TaskState

    async def echo(event: object, ctx: object) -> object:
        return event

    server = Runtime(store=redis_url)
    server.register("echo", echo, concurrency=50)
    async with server, Runtime(store=redis_url) as client:
        assert client._cluster is not None
        functions = client._cluster.node.store.functions
        reads = 0
        read_all = functions.all

        async def counted() -> Any:
            nonlocal reads
            reads += 1
            return await read_all()

        functions.all = counted  # type: ignore[method-assign]
        # a client node knows the function only from the cluster's registry: every invoke
        # of the burst read all of it (300 reads, each its own connection) before
        ids = await asyncio.gather(*(client.invoke("echo", i) for i in range(300)))
        assert reads == 1
        done = await asyncio.gather(*(client.wait(task_id, timeout=10) for task_id in ids))
        assert {record.status for record in done} == {TaskState.SUCCEEDED}
