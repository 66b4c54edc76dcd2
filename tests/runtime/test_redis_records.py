"""Records in a real Redis: atomic create, compare-and-set with fencing, reads, lists, retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from runtime.errors import ConfigError, StoreError
from runtime.stores.redis import (
    ACK,
    FINAL,
    NOTIFY,
    RELEASE,
    UNQUEUE,
    ChangeFeed,
    InvokeCode,
    NewTask,
    QueueStats,
    Transition,
    WriteCode,
    records,
    scripts,
)
from runtime.stores.redis.queue import parse_fetched
from runtime.stores.redis.records import BATCH
from tests.conftest import eventually
from tests.runtime.redis_helpers import Node, blob, keys_of, open_nodes, zmembers

pytestmark = pytest.mark.redis


# --- invoke_many ---------------------------------------------------------------------------


async def test_invoke_stores_indexes_and_queues_each_task(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        assert await a.invoke("f", "t1", "t2") == [InvokeCode.STORED, InvokeCode.STORED]
        record = await a.records.get("t1")
        assert record is not None
        assert (record.blob, record.status, record.function) == (blob("t1"), "Enqueued", "f")
        assert (record.owner, record.epoch, record.created_at) == ("", 0, 1000.0)
        assert record.stream_id  # queued: its entry is in the stream
        k = a.keys
        for index in (k.idx_all, k.idx_function("f"), k.idx_status("Enqueued")):
            assert await zmembers(a.conn, index) == ["t1", "t2"]
        assert await zmembers(a.conn, k.idx_function_status("f", "Enqueued")) == ["t1", "t2"]
        assert await a.conn.command("XLEN", k.stream("f")) == 2


async def test_an_existing_id_or_unknown_function_stores_nothing(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        before = await keys_of(a.conn)
        codes = await a.records.invoke_many(
            [
                NewTask("t1", "f", 5.0, b"other"),  # taken
                NewTask("t2", "nobody-registered-this", 5.0, b"x"),
                NewTask("t3", "f", 5.0, b"ok"),
                NewTask("t3", "f", 6.0, b"again"),  # the same id twice in one batch
            ]
        )
        assert codes == [
            InvokeCode.EXISTS,
            InvokeCode.NO_FUNCTION,
            InvokeCode.STORED,
            InvokeCode.EXISTS,
        ]
        assert (await a.records.get("t1")).blob == blob("t1")  # type: ignore[union-attr]
        assert (await a.records.get("t3")).blob == b"ok"  # type: ignore[union-attr]
        assert await a.records.get("t2") is None
        new_keys = set(await keys_of(a.conn)) - set(before)
        assert new_keys == {a.keys.task("t3")}  # nothing of t2, nothing new for t1
        assert await a.conn.command("XLEN", a.keys.stream("f")) == 2


async def test_max_queued_counts_the_entries_of_a_stream_whose_group_was_lost(
    redis_url: str,
) -> None:
    """Before, a stream without its group (Redis lost it) counted 0 entries undelivered:
    ``max_queued`` let every invoke in, and the queue's depth read 0."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")

        def capped(task_id: str) -> NewTask:
            return NewTask(task_id, "f", 1.0, blob(task_id), None, max_queued=2)

        assert await a.records.invoke_many([capped("t1")]) == [InvokeCode.STORED]
        await a.conn.command("XGROUP", "DESTROY", a.keys.stream("f"), "workers")
        codes = await a.records.invoke_many([capped("t2"), capped("t3")])
        assert codes == [InvokeCode.STORED, InvokeCode.QUEUE_FULL]
        assert (await a.queue.stats(["f"]))["f"] == QueueStats(depth=2, pending=0)


async def test_a_delayed_task_waits_in_the_due_set(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "later", delay_ms=10**9)
        record = await a.records.get("later")
        assert record is not None and record.stream_id == ""
        assert await a.conn.command("XLEN", a.keys.stream("f")) == 0
        assert await a.queue.due_count() == 1


async def test_a_big_batch_spans_several_script_calls_in_one_pipeline(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        ids = [f"t{i}" for i in range(2 * BATCH + 7)]
        assert set(await a.invoke("f", *ids)) == {InvokeCode.STORED}
        assert await a.conn.command("ZCARD", a.keys.idx_all) == len(ids)


# --- transitions: compare-and-set, fencing -------------------------------------------------


async def test_transition_moves_status_indexes_and_blob(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        result = await a.move(claimed, "Dequeued")
        assert result.code is WriteCode.WRITTEN and result.ok
        record = await a.records.get("t1")
        assert record is not None
        assert (record.status, record.blob, record.owner) == (
            "Dequeued",
            blob("t1", "Dequeued"),
            "a",
        )
        assert await zmembers(a.conn, a.keys.idx_status("Enqueued")) == []
        assert await zmembers(a.conn, a.keys.idx_status("Dequeued")) == ["t1"]
        assert await zmembers(a.conn, a.keys.idx_function_status("f", "Dequeued")) == ["t1"]
        assert await zmembers(a.conn, a.keys.idx_function_status("f", "Enqueued")) == []


async def test_a_stale_owner_or_epoch_is_fenced_and_changes_nothing(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        stale_epoch = await a.move(("t1", claimed.epoch - 1, "Enqueued"), "Running")
        assert stale_epoch.code is WriteCode.FENCED
        assert stale_epoch.detail == f"a {claimed.epoch}"
        other_node = await b.move(("t1", claimed.epoch, "Enqueued"), "Running")
        assert other_node.code is WriteCode.FENCED
        record = await a.records.get("t1")
        assert record is not None and (record.status, record.blob) == ("Enqueued", blob("t1"))


async def test_a_status_mismatch_is_a_conflict_that_names_the_current_status(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        result = await a.move(("t1", claimed.epoch, "Running"), "Succeeded")
        assert (result.code, result.detail) == (WriteCode.CONFLICT, "Enqueued")


async def test_missing_record(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        result = await a.move(("ghost", 1, "Running"), "Succeeded")
        assert result.code is WriteCode.MISSING and not result.ok


async def test_a_resent_write_is_recognised_by_its_token(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        first = await a.move(claimed, "Dequeued", token="w1")
        again = await a.move(claimed, "Dequeued", token="w1")  # the reply was "lost"
        assert (first.code, again.code, again.detail) == (
            WriteCode.WRITTEN,
            WriteCode.REPEATED,
            "Dequeued",
        )
        other = await a.move(claimed, "Dequeued", token="w2")  # a different write: refused
        assert other.code is WriteCode.CONFLICT


async def test_final_acks_the_entry_and_sets_the_record_to_expire(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        assert (await a.move(claimed, "Succeeded", ACK | FINAL)).ok
        stream = a.keys.stream("f")
        assert await a.conn.command("XLEN", stream) == 0  # acknowledged entries are deleted
        assert (await a.conn.command("XPENDING", stream, "workers"))["pending"] == 0
        ttl_ms = await a.conn.command("PTTL", a.keys.task("t1"))
        assert 0 < ttl_ms <= a.records.max_age_ms
        record = await a.records.get("t1")
        assert record is not None and record.stream_id == ""
        assert await a.conn.command("ZCARD", a.keys.ended) == 1


async def test_release_requeues_now_or_when_due_and_bumps_the_epoch(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "now", "later")
        first = await a.fetch("f", 2)
        assert (await a.move(first[0], "Enqueued", RELEASE)).ok
        assert (await a.move(first[1], "Retrying", RELEASE, delay_ms=10**9)).ok
        released = await a.records.get("now")
        assert released is not None and (released.owner, released.epoch) == ("", first[0].epoch + 1)
        assert await a.queue.due_count() == 1
        [again] = await b.fetch("f", 5)  # only the one queued now, on any node
        assert (again.task_id, again.epoch, again.previous_owner) == ("now", first[0].epoch + 2, "")
        late = await a.move(first[0], "Running")  # a's old ownership is gone
        assert late.code is WriteCode.FENCED


async def test_unqueue_takes_a_queued_task_out_of_stream_and_due_set(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "queued")
        await a.invoke("f", "delayed", delay_ms=10**9)
        for task_id in ("queued", "delayed"):
            assert (await a.move((task_id, 0, "Enqueued"), "Stopped", FINAL | UNQUEUE, owner="")).ok
        assert await a.conn.command("XLEN", a.keys.stream("f")) == 0
        assert await a.queue.due_count() == 0
        assert await a.fetch("f", 5) == []


async def test_notify_tells_the_owner_on_its_control_stream(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        result = await b.move(claimed, "Stopping", NOTIFY, owner="a")  # b asks, a owns
        assert result.ok
        entries = await a.conn.command("XRANGE", a.keys.control("a"), "-", "+")
        assert [e[1] for e in entries] == [{b"t": b"t1", b"by": b"b"}]
        record = await a.records.get("t1")
        assert record is not None and (record.status, record.owner) == ("Stopping", "a")


async def test_one_batch_mixes_outcomes_item_by_item(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        c1, c2 = await a.fetch("f", 2)
        results = await a.records.transition(
            [
                Transition("t1", "Enqueued", "a", c1.epoch, "Dequeued", b"1"),
                Transition("t2", "Enqueued", "a", c2.epoch + 5, "Dequeued", b"2"),
                Transition("t3", "Enqueued", "a", 1, "Dequeued", b"3"),
                Transition("t1", "Dequeued", "a", c1.epoch, "Running", b"1r"),  # sees the first
            ],
            node="a",
        )
        assert [r.code for r in results] == [
            WriteCode.WRITTEN,
            WriteCode.FENCED,
            WriteCode.MISSING,
            WriteCode.WRITTEN,
        ]


@contextlib.asynccontextmanager
async def feed_of(node: Node) -> AsyncIterator[list[str]]:
    """The ids the change feed announces while the block runs, in order."""
    heard: list[str] = []
    feed = ChangeFeed(node.conn, heard.extend)
    await feed.start()
    try:
        yield heard
    finally:
        await feed.close()


async def announced_before(node: Node, heard: list[str], marker: str) -> list[str]:
    """What the feed announced before a change of ``marker`` (a task waited on): all that
    was going to be announced has been by then (one connection, one channel, in order)."""
    await node.publish_change("f", marker)
    await eventually(lambda: marker in heard)
    return heard[: heard.index(marker)]


async def test_a_change_is_published_only_for_a_task_waited_on_and_never_an_invoke(
    redis_url: str,
) -> None:
    """Every node reads every message: a change is announced only when someone off the
    task's owner asked (a wait's or a watch's read) or a join runs. An invoke never is:
    nothing can wait on a task before it exists."""
    async with open_nodes(redis_url, "a") as [a], feed_of(a) as heard:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        assert await a.records.get("t2", watch=True) is not None
        [c1, c2] = await a.fetch("f", 2)
        assert (await a.move(c1, "Running")).ok
        assert (await a.move(c2, "Running")).ok
        assert await announced_before(a, heard, "marker") == ["t2"]
        ttl = await a.conn.command("PTTL", a.keys.watched("t2"))
        assert 0 < ttl <= scripts.WATCH_TTL_MS


async def test_while_a_join_runs_every_change_is_published(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a], feed_of(a) as heard:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        [c1, c2] = await a.fetch("f", 2)
        assert (await a.move(c1, "Running")).ok
        assert await a.records.count_unfinished("f", join=True) == 2
        assert (await a.move(c2, "Running")).ok
        assert await announced_before(a, heard, "marker") == ["t2"]
        assert 0 < await a.conn.command("PTTL", a.keys.joining) <= scripts.WATCH_TTL_MS


async def test_a_release_waited_on_here_publishes_the_changes_elsewhere(redis_url: str) -> None:
    """A node that gives up a task someone there waits on (told until then by its task
    actor) asks for its changes in the release itself: a node that takes it then is heard."""
    async with open_nodes(redis_url, "a", "b") as [a, b], feed_of(a) as heard:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        [c1, c2] = await a.fetch("f", 2)
        assert (await a.move(c1, "Enqueued", RELEASE | scripts.WATCHED)).ok
        assert (await a.move(c2, "Enqueued", RELEASE)).ok
        taken = {c.task_id: c for c in await b.fetch("f", 2)}
        assert (await b.move(taken["t1"], "Running")).ok
        assert (await b.move(taken["t2"], "Running")).ok
        assert await announced_before(a, heard, "marker") == ["t1", "t1"]


# --- reads -----------------------------------------------------------------------------------


async def test_get_many_in_order(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        found = await a.records.get_many(["t2", "nope", "t1"])
        assert [r.task_id if r else None for r in found] == ["t2", None, "t1"]
        assert await a.records.get_many([]) == []


async def test_list_newest_first_with_every_filter(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f", "g")
        await a.invoke("f", "f1", created=1.0)
        await a.invoke("g", "g2", created=2.0)
        await a.invoke("f", "f3", created=3.0)
        await a.invoke("f", "x4", created=4.0)
        [c] = await a.fetch("g", 1)
        await a.move(c, "Running")

        async def ids(**filters: object) -> list[str]:
            page = await a.records.list(**filters)  # type: ignore[arg-type]
            assert page.cursor is None
            return [b.decode().split("|")[0] for b in page.blobs]

        assert await ids() == ["x4", "f3", "g2", "f1"]
        assert await ids(order="asc") == ["f1", "g2", "f3", "x4"]
        assert await ids(function="f") == ["x4", "f3", "f1"]
        assert await ids(status="Running") == ["g2"]
        assert await ids(function="f", status="Enqueued") == ["x4", "f3", "f1"]
        assert await ids(function="g", status="Enqueued") == []
        assert await ids(prefix="f") == ["f3", "f1"]
        assert await ids(created_after=1.0, created_before=4.0) == ["f3", "g2"]
        assert await ids(created_after=1.0, created_before=4.0, order="asc") == ["g2", "f3"]
        assert await ids(function="nobody") == []


async def test_list_pages_with_a_cursor_through_equal_timestamps(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        ids = [f"t{i:02d}" for i in range(25)]
        await a.invoke("f", *ids, created=7.0)  # all at once: order falls to the ids
        for order, expected in (("desc", sorted(ids, reverse=True)), ("asc", sorted(ids))):
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await a.records.list(order=order, limit=4, cursor=cursor)
                seen += [b.decode().split("|")[0] for b in page.blobs]
                pages += 1
                cursor = page.cursor
                if cursor is None:
                    break
            assert seen == expected
            assert pages == 7


async def test_list_resumes_when_the_cursor_record_is_gone(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "a1", "a2", "a3", "a4", created=5.0)
        page = await a.records.list(limit=2)
        assert [b.decode()[:2] for b in page.blobs] == ["a4", "a3"]
        await a.conn.command("ZREM", a.keys.idx_all, "a3")  # the cursor's member went
        rest = await a.records.list(limit=10, cursor=page.cursor)
        assert [b.decode()[:2] for b in rest.blobs] == ["a2", "a1"]


async def test_list_skips_and_removes_index_entries_of_expired_records(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", *[f"t{i}" for i in range(6)])
        for task_id in ("t1", "t2", "t4"):
            await a.conn.command("DEL", a.keys.task(task_id))  # as an expiry would
        page = await a.records.list(limit=2)
        assert [b.decode()[:2] for b in page.blobs] == ["t5", "t3"]
        page = await a.records.list(limit=10, cursor=page.cursor)
        assert [b.decode()[:2] for b in page.blobs] == ["t0"]
        assert await zmembers(a.conn, a.keys.idx_all) == ["t0", "t3", "t5"]


async def test_list_gives_a_cursor_when_its_scan_budget_runs_out(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", *[f"n{i:04d}" for i in range(30)], "match")
        budget = records.LIST_BUDGET
        records.LIST_BUDGET = 8
        try:
            page = await a.records.list(prefix="match", limit=5)
        finally:
            records.LIST_BUDGET = budget
        assert [b.decode().split("|")[0] for b in page.blobs] == ["match"]
        assert page.cursor is None


async def test_list_argument_errors(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        with pytest.raises(ConfigError, match="order"):
            await a.records.list(order="sideways")
        with pytest.raises(ConfigError, match="unknown status"):
            await a.records.list(status="Sleeping")
        with pytest.raises(ConfigError, match="cursor"):
            await a.records.list(cursor="garbage")
        assert (await a.records.list(limit=0)).blobs == []


# --- retention ---------------------------------------------------------------------------------


async def test_finished_records_expire_and_their_index_entries_follow(redis_url: str) -> None:
    async with open_nodes(redis_url + "&max_age=0.05", "a") as [a]:
        await a.register("f")
        await a.invoke("f", "done", "running")
        done, running = await a.fetch("f", 2)
        await a.move(done, "Succeeded", ACK | FINAL)
        await a.move(running, "Running")

        async def swept() -> bool:
            return await a.records.get("done") is None and await a.records.sweep() == 1

        async with asyncio.timeout(5):
            while not await swept():
                await asyncio.sleep(0.01)
        k = a.keys
        for index in (
            k.idx_all,
            k.idx_function("f"),
            k.idx_status("Succeeded"),
            k.idx_function_status("f", "Succeeded"),
        ):
            assert "done" not in await zmembers(a.conn, index)
        assert await zmembers(a.conn, k.idx_all) == ["running"]
        assert await a.conn.command("ZCARD", k.ended) == 0
        assert await a.records.sweep() == 0


async def test_sweep_leaves_a_reused_id_alone(redis_url: str) -> None:
    async with open_nodes(redis_url + "&max_age=0.05", "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [c] = await a.fetch("f", 1)
        await a.move(c, "Failed", ACK | FINAL)
        async with asyncio.timeout(5):
            while await a.records.get("t1") is not None:
                await asyncio.sleep(0.01)
        assert await a.invoke("f", "t1") == [InvokeCode.STORED]  # a new task, same id
        assert await a.records.sweep() == 0
        assert await zmembers(a.conn, a.keys.idx_all) == ["t1"]
        assert await a.conn.command("ZCARD", a.keys.ended) == 0


async def test_a_terminal_status_is_always_final(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        assert (await a.move(claimed, "Failed")).ok  # no flags given
        assert await a.conn.command("PTTL", a.keys.task("t1")) > 0
        assert await a.queue.stats(["f"]) == {"f": QueueStats(0, 0)}  # its entry acknowledged


async def test_a_malformed_record_is_a_clear_store_error(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.conn.command("HSET", a.keys.task("odd"), "rec", b"x", "status", "Running")
        with pytest.raises(StoreError, match=r"malformed.*prefix of its own"):
            await a.records.get("odd")


async def test_a_deleted_functions_queued_tasks_can_be_ended(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", *[f"q{i:03d}" for i in range(120)])
        await a.invoke("f", "later", delay_ms=10**9)
        [running] = await a.fetch("f", 1)  # held by a: not the caller's to end
        assert await a.functions.delete("f")
        ended = 0
        while batch := await a.records.unowned("f", limit=50):
            for record in batch:
                item = Transition(
                    record.task_id, record.status, "", record.epoch, "Invalid", b"deleted",
                    FINAL | UNQUEUE,
                )  # fmt: skip
                [result] = await a.records.transition([item], node="a")
                assert result.ok
                ended += 1
        assert ended == 120  # 119 queued and the delayed one
        assert await a.queue.due_count() == 0
        assert await a.fetch("f", 10) == []
        assert (await a.move(running, "Running")).ok


async def test_a_task_moved_twice_in_one_batch_ends_in_one_status_index(redis_url: str) -> None:
    # Index changes are applied per key at the end of a script: a task that moves twice
    # in one call must not be left in both new indexes (nor in its first one).
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        claimed = {c.task_id: c for c in await a.fetch("f", 2)}
        t1 = claimed["t1"]
        items = [
            Transition("t1", t1.status, "a", t1.epoch, "Dequeued", b"d"),
            Transition("t1", "Dequeued", "a", t1.epoch, "Running", b"r"),
            Transition("t2", claimed["t2"].status, "a", claimed["t2"].epoch, "Dequeued", b"d"),
        ]
        results = await a.records.transition(items, node="a")
        assert [r.code for r in results] == [WriteCode.WRITTEN] * 3
        assert await zmembers(a.conn, a.keys.idx_status("Enqueued")) == []
        assert await zmembers(a.conn, a.keys.idx_status("Dequeued")) == ["t2"]
        assert await zmembers(a.conn, a.keys.idx_status("Running")) == ["t1"]
        assert await zmembers(a.conn, a.keys.idx_function_status("f", "Running")) == ["t1"]
        assert await zmembers(a.conn, a.keys.idx_function_status("f", "Dequeued")) == ["t2"]


async def test_invoke_and_take_claims_for_the_invoking_node_in_the_same_call(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f", "g")
        tasks = [NewTask(f"t{i}", "f", 1000.0 + i, blob(f"t{i}")) for i in range(3)]
        tasks.append(NewTask("later", "f", 1003.0, blob("later"), delay_ms=60_000))
        codes, raw = await a.records.invoke_and_take(tasks, "a", {"f": 2, "g": 1})
        assert codes == [InvokeCode.STORED] * 4
        fetched = parse_fetched(raw)
        assert [c.task_id for c in fetched.claimed["f"]] == ["t0", "t1"]  # oldest first
        assert fetched.claimed["g"] == []
        assert all(c.epoch == 1 and c.status == "Enqueued" for c in fetched.claimed["f"])
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=1, pending=2)}
        assert [c.task_id for c in await a.fetch("f", 5)] == ["t2"]  # the rest stays queued


async def test_a_lapsed_node_takes_nothing_when_it_invokes(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.conn.command("DEL", a.keys.node("a"))  # its heartbeat is gone
        codes, raw = await a.records.invoke_and_take([NewTask("t1", "f", 1.0, b"x")], "a", {"f": 1})
        assert codes == [InvokeCode.STORED] and parse_fetched(raw).lapsed
        assert await a.queue.stats(["f"]) == {"f": QueueStats(depth=1, pending=0)}
