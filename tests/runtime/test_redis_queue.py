"""The shared queue in a real Redis: fetch only what fits, never twice, due moves exactly once."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.stores.redis import (
    ACK,
    FINAL,
    RELEASE,
    UNQUEUE,
    InvokeCode,
    NewTask,
    QueueStats,
    RecordStore,
    RedisQueue,
    Transition,
    scripts,
)
from runtime.stores.redis import queue as queue_module
from runtime.stores.redis.queue import parse_fetched
from tests.runtime.redis_helpers import make_all_due, open_nodes

pytestmark = pytest.mark.redis


async def test_fetch_takes_only_as_many_as_asked_and_claims_them(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2", "t3")
        first = await a.fetch("f", 2)
        assert [(c.task_id, c.epoch, c.status, c.previous_owner) for c in first] == [
            ("t1", 1, "Enqueued", ""),
            ("t2", 1, "Enqueued", ""),
        ]
        assert not first[0].recovered and first[0].function == "f"
        record = await a.records.get("t1")
        assert record is not None and (record.owner, record.epoch) == ("a", 1)
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=1, pending=2)}
        assert [c.task_id for c in await a.fetch("f", 5)] == ["t3"]
        assert await a.fetch("f", 5) == []


async def test_two_nodes_never_get_the_same_task(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        ids = [f"t{i}" for i in range(200)]
        await a.invoke("f", *ids)
        got_a: list[str] = []
        got_b: list[str] = []

        async def drain(node: object, into: list[str]) -> None:
            while batch := await node.fetch("f", 3):  # type: ignore[attr-defined]
                into += [c.task_id for c in batch]
                await asyncio.sleep(0)

        await asyncio.gather(drain(a, got_a), drain(b, got_b))
        assert sorted(got_a + got_b) == sorted(ids)
        assert not set(got_a) & set(got_b)
        assert got_a and got_b


async def test_one_call_fetches_for_several_functions(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f", "g", "idle")
        await a.invoke("f", "f1", "f2")
        await a.invoke("g", "g1")
        fetched = await a.queue.fetch({"f": 1, "g": 4, "idle": 2, "none": 0})
        assert {fn: [c.task_id for c in items] for fn, items in fetched.claimed.items()} == {
            "f": ["f1"],
            "g": ["g1"],
            "idle": [],
        }
        assert fetched.last_ids["idle"] == "0-0"
        assert (await a.queue.fetch({})).claimed == {}


async def test_a_task_stopped_while_queued_is_never_delivered(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "stopped", "kept", "ended-elsewhere")
        stop = await a.move(("stopped", 0, "Enqueued"), "Stopped", FINAL | UNQUEUE, owner="")
        assert stop.ok
        # a terminal record whose entry is still queued (no UNQUEUE): skipped and acknowledged
        await a.conn.command("HSET", a.keys.task("ended-elsewhere"), "status", "Stopped")
        assert [c.task_id for c in await b.fetch("f", 10)] == ["kept"]
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=0, pending=1)}


async def test_an_entry_delivered_before_the_stop_is_skipped_at_claim(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        stream = a.keys.stream("f")
        # delivered to a's consumer by a bare read (as a crash between read and claim would)
        await a.conn.command(
            "XREADGROUP", "GROUP", "workers", "a", "COUNT", 1, "STREAMS", stream, ">"
        )
        assert (await a.move(("t1", 0, "Enqueued"), "Stopped", FINAL | UNQUEUE, owner="")).ok
        assert await a.queue.adopt(["f"], known=set()) == []
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=0, pending=0)}


async def test_a_lapsed_node_takes_no_work(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        await a.nodes.leave()  # as if its heartbeat expired
        fetched = await a.queue.fetch({"f": 1})
        assert fetched.lapsed and fetched.claimed == {}
        assert [c.task_id for c in await b.fetch("f", 1)] == ["t1"]


async def test_wait_for_entries_wakes_on_new_work_and_times_out(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f", "g")
        fetched = await a.queue.fetch({"f": 1, "g": 1})
        assert await a.queue.wait_for_entries(fetched.bells, timeout=0.01) == set()
        waiting = asyncio.ensure_future(a.queue.wait_for_entries(fetched.bells, timeout=4))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await b.invoke("g", "g1")
        assert await waiting == {"g"}
        assert [c.task_id for c in await a.fetch("g", 1)] == ["g1"]


async def test_work_arriving_between_fetch_and_wait_is_not_missed(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        fetched = await a.queue.fetch({"f": 1})
        await b.invoke("f", "t1")  # lands before the wait starts
        assert await a.queue.wait_for_entries(fetched.bells, timeout=4) == {"f"}


async def test_cancelling_a_wait_loses_nothing(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        fetched = await a.queue.fetch({"f": 1})
        waiting = asyncio.ensure_future(a.queue.wait_for_entries(fetched.bells, timeout=4))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await a.invoke("f", "t1")
        assert [c.task_id for c in await a.fetch("f", 1)] == ["t1"]


async def test_an_invoke_whose_own_take_empties_the_stream_wakes_nobody(redis_url: str) -> None:
    """Nodes wait on a function's bell, not on its stream: an invoke whose taking node
    takes every entry it queued rings nothing (neither that node nor any other wakes);
    one that leaves entries rings, and the waiting node finds them."""
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        fetched = await b.queue.fetch({"f": 1})
        waiting = asyncio.ensure_future(b.queue.wait_for_entries(fetched.bells, timeout=4))

        async def invoke_and_take(ids: list[str], take: int) -> int:
            tasks = [NewTask(t, "f", 1.0, b"x") for t in ids]
            codes, raw = await a.records.invoke_and_take(tasks, "a", {"f": take})
            assert set(codes) == {InvokeCode.STORED}
            return len(parse_fetched(raw).claimed["f"])

        assert await invoke_and_take(["t1", "t2"], take=5) == 2
        await asyncio.sleep(0.05)
        assert not waiting.done()  # all taken by the invoking node: nobody was woken
        assert await invoke_and_take(["t3", "t4"], take=1) == 1
        assert await waiting == {"f"}  # one left: the bell rang
        assert [c.task_id for c in await b.fetch("f", 5)] == ["t4"]


async def test_a_retry_and_a_due_start_ring_the_bell(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        fetched = await b.queue.fetch({"f": 1})
        assert fetched.claimed == {"f": []}
        waiting = asyncio.ensure_future(b.queue.wait_for_entries(fetched.bells, timeout=4))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        assert (await a.move(claimed, "Retrying", RELEASE)).ok  # queued again at once
        assert await waiting == {"f"}
        assert [c.task_id for c in await b.fetch("f", 1)] == ["t1"]

        await a.invoke("f", "d1", delay_ms=10**9)
        fetched = await b.queue.fetch({"f": 1})
        waiting = asyncio.ensure_future(b.queue.wait_for_entries(fetched.bells, timeout=4))
        await make_all_due(a.conn)
        assert (await a.queue.move_due())[0] == 1
        assert await waiting == {"f"}


async def test_a_deleted_function_leaves_no_bell(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        assert await a.conn.command("EXISTS", a.keys.bell("f")) == 1
        await a.functions.delete("f")
        assert await a.conn.command("EXISTS", a.keys.bell("f")) == 0


async def test_due_tasks_move_to_the_stream_exactly_once_with_concurrent_movers(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        ids = [f"t{i}" for i in range(300)]
        await a.invoke("f", *ids, delay_ms=10**9)
        await make_all_due(a.conn)
        await a.invoke("f", "future", delay_ms=10**9)  # in 11 days

        async def mover(node: object) -> int:
            total = 0
            for _ in range(20):
                moved, _next = await node.queue.move_due(limit=7)  # type: ignore[attr-defined]
                total += moved
                await asyncio.sleep(0)
            return total

        totals = await asyncio.gather(*(mover(n) for n in (a, b, a, b)))
        assert sum(totals) == len(ids)
        assert await a.conn.command("XLEN", a.keys.stream("f")) == len(ids)
        moved, next_in = await a.queue.move_due()
        assert moved == 0 and next_in is not None and 10**6 - 60 < next_in <= 10**6
        claimed = await a.fetch("f", 1000)
        assert sorted(c.task_id for c in claimed) == sorted(ids)


async def test_a_due_member_of_a_task_gone_or_taken_is_dropped(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "gone", "stopped", delay_ms=10**9)
        await make_all_due(a.conn)
        await a.conn.command("DEL", a.keys.task("gone"))
        await a.conn.command("HSET", a.keys.task("stopped"), "status", "Stopped")
        assert await a.queue.move_due() == (0, None)
        assert await a.queue.due_count() == 0


async def test_adopt_recovers_tasks_whose_fetch_reply_was_lost(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2", "t3")
        # the fetch ran on the server but its reply never arrived
        await a.conn.run(scripts.fetch, [a.keys.base, "a", "f", 2])
        held = {"t2"}  # suppose a did get t2 some other way
        adopted = await a.queue.adopt(["f"], known=held, page=1)
        assert [(c.task_id, c.function, c.epoch, c.previous_owner) for c in adopted] == [
            ("t1", "f", 2, "a")
        ]
        assert adopted[0].recovered
        assert await a.queue.adopt(["f"], known={"t1", "t2"}) == []
        assert [c.task_id for c in await a.fetch("f", 5)] == ["t3"]


async def test_adopt_drops_entries_deleted_meanwhile(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        stream = a.keys.stream("f")
        [[_, [(eid, _)]]] = await a.conn.command(
            "XREADGROUP", "GROUP", "workers", "a", "COUNT", 1, "STREAMS", stream, ">"
        )
        await a.conn.command("XDEL", stream, eid)
        assert await a.queue.adopt(["f"], known=set()) == []
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=0, pending=0)}


async def test_a_lost_consumer_group_is_recreated(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        await a.conn.command("XGROUP", "DESTROY", a.keys.stream("f"), "workers")
        assert [c.task_id for c in await a.fetch("f", 1)] == ["t1"]


async def test_a_duplicate_delivery_goes_back_to_the_live_owner(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        stream = a.keys.stream("f")
        await a.conn.command("XGROUP", "DESTROY", stream, "workers")  # the group is lost
        assert await b.fetch("f", 1) == []  # a still runs t1: b must not
        pending = await a.conn.client.xpending_range(stream, "workers", "-", "+", 10)
        assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [
            (claimed.stream_id, "a")
        ]
        assert (await a.move(claimed, "Running")).ok


async def test_a_duplicate_delivery_of_a_dead_owners_task_is_taken_over(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        await a.conn.command("XGROUP", "DESTROY", a.keys.stream("f"), "workers")
        await a.nodes.leave()
        [taken] = await b.fetch("f", 1)
        assert (taken.task_id, taken.previous_owner, taken.epoch) == ("t1", "a", claimed.epoch + 1)
        assert (await a.move(claimed, "Running")).code.name == "FENCED"


async def test_stats_and_due_count(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        assert await a.queue.stats(["f", "never"]) == {
            "f": QueueStats(0, 0),
            "never": QueueStats(0, 0),
        }
        await a.invoke("f", "t1", "t2", "t3")
        await a.invoke("f", "d1", delay_ms=10**9)
        await a.fetch("f", 1)
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=2, pending=1)}
        assert await a.queue.due_count() == 1
        assert await a.queue.stats([]) == {}


async def test_skipped_entries_do_not_count_against_what_a_fetch_takes(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "s1", "s2", "s3", "t1", "t2", "t3")
        for task_id in ("s1", "s2", "s3"):  # ended while their entries still wait
            await a.conn.command("HSET", a.keys.task(task_id), "status", "Stopped")
        assert [c.task_id for c in await a.fetch("f", 2)] == ["t1", "t2"]
        # and nothing is left undelivered below the last id a waiter would wait after
        fetched = await a.queue.fetch({"f": 5})
        assert [c.task_id for c in fetched.claimed["f"]] == ["t3"]
        assert await a.queue.wait_for_entries(fetched.bells, timeout=0.01) == set()


async def test_acknowledged_entries_are_trimmed_behind_the_oldest_pending_one(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", *[f"t{i:04d}" for i in range(1000)])
        claimed = await a.fetch("f", 1000)
        stream = a.keys.stream("f")
        results = await a.records.transition(  # t0000 runs on: it pins what follows it
            [
                Transition(c.task_id, c.status, "a", c.epoch, "Succeeded", b"", ACK | FINAL)
                for c in claimed[1:]
            ],
            node="a",
        )
        assert all(r.ok for r in results)
        assert await a.conn.command("XLEN", stream) == 1000
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=0, pending=1)}
        assert (await a.move(claimed[0], "Succeeded", ACK | FINAL)).ok
        assert await a.conn.command("XLEN", stream) < 100  # whole nodes go
        await a.invoke("f", "next")
        assert [c.task_id for c in await a.fetch("f", 5)] == ["next"]


async def test_depth_is_counted_when_deletions_hide_the_lag(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2", "t3", "t4")
        await a.fetch("f", 1)
        assert (await a.move(("t3", 0, "Enqueued"), "Stopped", FINAL | UNQUEUE, owner="")).ok
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=2, pending=1)}


async def test_delays_run_on_redis_clock_and_a_zero_delay_queues_at_once(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "now", delay_ms=0)
        await a.invoke("f", "soon", delay_ms=30)
        assert [c.task_id for c in await a.fetch("f", 5)] == ["now"]
        moved, next_in = await a.queue.move_due()
        assert moved == 0 and next_in is not None and 0 <= next_in <= 0.03
        async with asyncio.timeout(5):  # due by Redis' clock in 30 ms
            while (await a.queue.move_due())[0] == 0:
                await asyncio.sleep(0.005)
        assert [c.task_id for c in await a.fetch("f", 5)] == ["soon"]
        assert await a.queue.move_due() == (0, None)


async def test_only_a_runtime_with_a_pinned_clock_reads_the_clock_key(redis_url: str) -> None:
    """A ManualClock's runtime pins its time in Redis (keys.clock) and says so to the
    scripts (pinned_clock); any other runtime's scripts use Redis' TIME, not the key."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.conn.command("SET", a.keys.clock, 1_000)  # far in the past
        pinned = RecordStore(a.conn, pinned_clock=True)
        await pinned.invoke_many([NewTask("pinned", "f", 1.0, b"x", 500)])
        await a.invoke("f", "real", delay_ms=500)  # a.records: not pinned
        sep = "\x00"
        assert await a.conn.command("ZSCORE", a.keys.due, f"f{sep}pinned") == 1_500
        real_ms = await a.conn.command("ZSCORE", a.keys.due, f"f{sep}real")
        assert real_ms > 1_000_000_000_000  # Redis' TIME (ms since the epoch) + 500
        pinned_queue = RedisQueue(a.conn, "a", pinned_clock=True)
        assert await pinned_queue.move_due() == (0, 0.5)  # by the pinned clock
        await a.conn.command("SET", a.keys.clock, 1_500)
        assert (await pinned_queue.move_due())[0] == 1
        # by Redis' TIME: "real" is due in about 0.5 s
        assert await a.queue.move_due() == (0, pytest.approx(real_ms / 1000 - time.time(), abs=5))
        assert [c.task_id for c in await a.fetch("f", 5)] == ["pinned"]


async def test_one_fetch_takes_at_most_max_fetch_per_function(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "MAX_FETCH", 3)
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", *[f"t{i}" for i in range(5)])
        assert len(await a.fetch("f", 100)) == 3
