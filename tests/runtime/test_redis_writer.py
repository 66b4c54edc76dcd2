"""Group commit to a real Redis: coalesced writes, fenced and conflicting writes reported."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from runtime.errors import StoreError
from runtime.stores.redis import (
    ACK,
    FINAL,
    NOTIFY,
    RELEASE,
    InvokeBatcher,
    InvokeCode,
    NewTask,
    QueueStats,
    RecordWriter,
    StoreUnavailableError,
    Transition,
    WriteCode,
    WriteResult,
    parse_redis_url,
)
from runtime.stores.redis.client import MAX_CONNECTIONS, Backoff, QueueingPool
from runtime.stores.redis.writer import FIRST_INVOKE_BATCH, HOLD, INVOKE_BATCH, INVOKE_CALLS
from tests.conftest import eventually
from tests.runtime.redis_helpers import Node, open_nodes

pytestmark = pytest.mark.redis

Refusal = tuple[str, str, WriteCode, str]


def make_writer(
    node: Node,
    refused: list[Refusal] | None = None,
    records: Any = None,
    hold: float = 0.0,
    backoff: Backoff | None = None,
) -> RecordWriter:
    """A writer for ``node`` (on ``records`` if given: a stand-in that wraps the node's)."""

    def on_refused(task_id: str, item: Transition, result: WriteResult) -> None:
        if refused is not None:
            refused.append((task_id, item.new_status, result.code, result.detail))

    return RecordWriter(
        records or node.records,
        node.node_id,
        pack=str.encode,
        on_refused=on_refused,
        hold=hold,
        backoff=backoff,
    )


async def status_of(node: Node, task_id: str) -> tuple[str, bytes]:
    record = await node.records.get(task_id)
    assert record is not None
    return record.status, record.blob


async def test_transitions_of_one_task_coalesce_into_one_write(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        packed: list[str] = []

        def pack(record: str) -> bytes:
            packed.append(record)
            return record.encode()

        writer = RecordWriter(a.records, "a", pack=pack)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Dequeued", "rec-dequeued")
        writer.put("t1", "Running", "rec-running")
        writer.put("t1", "Succeeded", "rec-succeeded", ACK | FINAL)
        assert writer.pending == 1
        await writer.flush()
        assert await status_of(a, "t1") == ("Succeeded", b"rec-succeeded")
        assert (writer.batches, writer.written, packed) == (1, 1, ["rec-succeeded"])
        assert writer.ownership("t1") is None and writer.owned == 0  # finished: not held
        assert await a.queue.stats(["f"]) == {"f": QueueStats(0, 0)}
        assert await writer.close() == 0


async def test_changes_made_during_a_write_form_the_next_batch(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        ids = [f"t{i}" for i in range(50)]
        await a.invoke("f", *ids)
        writer = make_writer(a)
        for claimed in await a.fetch("f", 50):
            writer.own(claimed.task_id, claimed.epoch, claimed.status)
        for task_id in ids:
            writer.put(task_id, "Dequeued", f"{task_id}-d")
        await asyncio.sleep(0)  # the first batch leaves
        for task_id in ids:
            writer.put(task_id, "Running", f"{task_id}-r")
        await writer.flush()
        assert writer.batches == 2 and writer.written == 100
        assert writer.ownership("t7") == (1, "Running")
        assert await status_of(a, "t7") == ("Running", b"t7-r")


async def test_a_change_without_flags_waits_for_the_attempts_end_to_share_its_write(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "quick", "slow")
        writer = make_writer(a, hold=HOLD)
        for claimed in await a.fetch("f", 2):
            writer.own(claimed.task_id, claimed.epoch, claimed.status)
        writer.put("quick", "Running", "r")
        for _ in range(3):
            await asyncio.sleep(0)
        assert writer.batches == 0  # held: the attempt may end within HOLD
        writer.put("quick", "Succeeded", "s", FINAL)  # a flagged change starts it at once
        await writer.flush()
        assert (writer.batches, writer.written) == (1, 1)
        assert await status_of(a, "quick") == ("Succeeded", b"s")
        writer.put("slow", "Running", "r")  # nothing follows: written once HOLD is over
        await eventually(lambda: writer.written == 2, timeout=2)
        assert await status_of(a, "slow") == ("Running", b"r")


async def test_flush_does_not_wait_out_a_held_change(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        writer = make_writer(a, hold=3600.0)
        [claimed] = await a.fetch("f", 1)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Running", "r")
        await writer.flush(timeout=5)
        assert await status_of(a, "t1") == ("Running", b"r")


async def test_a_release_gives_the_task_up(redis_url: str) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        writer = make_writer(a)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Running", "r")
        writer.put("t1", "Retrying", "retry", RELEASE)
        await writer.flush()
        assert writer.ownership("t1") is None
        [again] = await b.fetch("f", 1)
        assert (again.status, again.epoch) == ("Retrying", claimed.epoch + 2)


async def test_memory_stays_flat_however_many_transitions(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1", "t2")
        writer = make_writer(a)
        for claimed in await a.fetch("f", 2):
            writer.own(claimed.task_id, claimed.epoch, claimed.status)
        for i in range(10_000):
            writer.put(f"t{1 + i % 2}", "Dequeued", f"v{i}")
        assert writer.pending == 2
        await writer.flush()
        assert await status_of(a, "t2") == ("Dequeued", b"v9999")


async def test_a_fenced_write_is_reported_and_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        refused: list[Refusal] = []
        writer = make_writer(a, refused)
        writer.own("t1", claimed.epoch, claimed.status)
        await a.nodes.leave()
        [reclaimed] = (await b.reclaimer.reclaim("a")).claimed
        with caplog.at_level(logging.WARNING, "stint"):
            writer.put("t1", "Succeeded", "late", ACK | FINAL)
            await writer.flush()
        assert refused == [("t1", "Succeeded", WriteCode.FENCED, f"b {reclaimed.epoch}")]
        assert writer.fenced == 1 and writer.ownership("t1") is None
        assert "its late write (Succeeded) was refused" in caplog.text
        assert (await status_of(a, "t1"))[0] == "Enqueued"


async def test_a_conflict_reports_the_current_status_and_the_next_put_starts_from_it(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        refused: list[Refusal] = []
        writer = make_writer(a, refused)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Running", "running")
        await writer.flush()
        # another node asks for a stop: the record is Stopping now
        assert (await b.move(("t1", claimed.epoch, "Running"), "Stopping", NOTIFY, owner="a")).ok
        writer.put("t1", "Succeeded", "raced", ACK | FINAL)
        await writer.flush()
        assert refused == [("t1", "Succeeded", WriteCode.CONFLICT, "Stopping")]
        assert writer.ownership("t1") == (claimed.epoch, "Stopping")
        writer.put("t1", "Stopped", "stopped", ACK | FINAL)
        await writer.flush()
        assert await status_of(a, "t1") == ("Stopped", b"stopped")
        assert writer.conflicts == 1


async def test_a_change_put_while_a_refused_write_was_in_flight_is_reported_not_lost(
    redis_url: str,
) -> None:
    """Found by tests/runtime/test_redis_multiprocess.py: a node's Stopping (for a stop asked
    elsewhere) was refused, and the Stopped put while it was in flight went with it."""
    async with open_nodes(redis_url, "a", "b") as [a, b]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        refused: list[Refusal] = []
        writer = make_writer(a, refused)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Running", "running")
        await writer.flush()
        assert (await b.move(("t1", claimed.epoch, "Running"), "Stopping", NOTIFY, owner="a")).ok
        writer.put("t1", "Stopping", "stopping")
        await asyncio.sleep(0)  # that write leaves
        writer.put("t1", "Stopped", "stopped", ACK | FINAL)
        await writer.flush()
        assert refused == [("t1", "Stopped", WriteCode.CONFLICT, "Stopping")]
        assert writer.pending == 0 and writer.ownership("t1") == (claimed.epoch, "Stopping")


async def test_a_burst_of_calls_beyond_the_pool_waits_for_a_connection(redis_url: str) -> None:
    """Found by the 5,000-task multi-process test: redis-py 8's pool refused call 101 of a
    burst ("Too many connections"), which a thousand concurrent invokes took for an outage."""
    async with open_nodes(redis_url, "a", join=False) as [a]:
        burst = 3 * MAX_CONNECTIONS
        replies = await asyncio.gather(*(a.conn.command("PING") for _ in range(burst)))
        assert replies == [True] * burst and a.conn.failures == 0
        assert a.conn.client.connection_pool.max_connections == MAX_CONNECTIONS


async def test_a_caller_waits_for_a_connection_only_as_long_as_the_pool_allows(
    redis_url: str,
) -> None:
    options = parse_redis_url(redis_url)
    pool = QueueingPool(max_connections=1, wait=0.2, host=options.host, port=options.port)
    held = await pool.get_connection()
    waiting = asyncio.ensure_future(pool.get_connection())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # every connection is busy: it waits, not fails
    await pool.release(held)
    assert await asyncio.wait_for(waiting, 1) is held  # the one given back
    with pytest.raises(RedisConnectionError, match="No connection available"):
        await pool.get_connection()  # still held: no more than `wait` s
    await pool.release(held)
    await pool.disconnect()


async def test_a_missing_record_is_reported(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        refused: list[Refusal] = []
        writer = make_writer(a, refused)
        writer.own("ghost", 1, "Running")
        writer.put("ghost", "Succeeded", "x")
        await writer.flush()
        assert refused == [("ghost", "Succeeded", WriteCode.MISSING, "")]
        assert writer.missing == 1


async def test_a_put_for_a_task_not_held_is_logged_and_dropped(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        writer = make_writer(a)
        with caplog.at_level(logging.ERROR, "stint"):
            writer.put("stranger", "Running", "x")
            await writer.flush()
        assert "does not hold" in caplog.text and writer.written == 0


async def test_a_write_whose_reply_was_lost_is_resent_and_recognised(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        real = a.records.transition
        calls: list[list[Transition]] = []

        async def applied_then_lost(items: Any, *, node: str) -> list[WriteResult]:
            calls.append(list(items))
            results = await real(items, node=node)
            if len(calls) == 1:
                raise StoreUnavailableError("connection broke after the script ran")
            return results

        a.records.transition = applied_then_lost  # type: ignore[method-assign]
        writer = make_writer(a)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Retrying", "retry", RELEASE)  # not repeatable without the token
        await writer.flush()
        assert len(calls) == 2 and calls[0] == calls[1]  # the same write, same token
        assert writer.resends == 1 and writer.written == 1
        assert await status_of(a, "t1") == ("Retrying", b"retry")


class HeldWrites:
    """Stands in for ``node.records``: each transition call waits for its own release."""

    def __init__(self, node: Node) -> None:
        self.records = node.records
        self.calls: list[tuple[list[str], asyncio.Future[None]]] = []
        self.fail = False  # the next answers are lost (StoreUnavailableError)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.records, name)

    async def transition(self, items: Any, *, node: str) -> Any:
        gate = asyncio.get_running_loop().create_future()
        self.calls.append(([item.task_id for item in items], gate))
        await gate
        if self.fail:
            raise StoreUnavailableError("Redis went away")
        return await self.records.transition(items, node=node)

    def release(self, index: int) -> None:
        self.calls[index][1].set_result(None)


async def two_writes_in_flight(node: Node, held: HeldWrites, writer: RecordWriter) -> None:
    """t1 and t2 owned, each finished by its own write call, both held in flight."""
    await own_all(node, writer, "t1", "t2")
    writer.put("t1", "Succeeded", "s1", FINAL)
    await eventually(lambda: len(held.calls) == 1)
    writer.put("t2", "Succeeded", "s2", FINAL)  # not held up by the call in flight
    await eventually(lambda: len(held.calls) == 2)


async def own_all(node: Node, writer: RecordWriter, *ids: str) -> None:
    await node.invoke("f", *ids)
    for claimed in await node.fetch("f", len(ids)):
        writer.own(claimed.task_id, claimed.epoch, claimed.status)


async def test_a_second_write_goes_while_the_first_is_in_flight(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held)
        await two_writes_in_flight(a, held, writer)
        await own_all(a, writer, "t3")
        writer.put("t3", "Succeeded", "s3", FINAL)  # two in flight: waits for an answer
        for _ in range(5):
            await asyncio.sleep(0)
        assert [ids for ids, _ in held.calls] == [["t1"], ["t2"]]
        held.release(1)
        await eventually(lambda: len(held.calls) == 3)
        assert held.calls[2][0] == ["t3"]
        held.release(0)
        held.release(2)
        await writer.flush()
        assert (writer.batches, writer.written, writer.conflicts) == (3, 3, 0)
        for task_id in ("t1", "t2", "t3"):
            assert (await status_of(a, task_id))[0] == "Succeeded"


async def test_a_change_of_a_task_being_written_waits_for_that_write(redis_url: str) -> None:
    """Its compare-and-set expects what the write in flight leaves: sent beside it, it
    would conflict with it."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held)
        await own_all(a, writer, "t1", "t2")
        writer.put("t1", "Running", "r1", ACK)
        await eventually(lambda: len(held.calls) == 1)
        writer.put("t1", "Succeeded", "s1", FINAL)  # t1 is being written: it waits
        writer.put("t2", "Succeeded", "s2", FINAL)  # t2 goes beside it
        await eventually(lambda: len(held.calls) == 2)
        assert held.calls[1][0] == ["t2"]
        held.release(1)
        held.release(0)
        await eventually(lambda: len(held.calls) == 3)
        assert held.calls[2][0] == ["t1"]
        held.release(2)
        await writer.flush()
        assert (writer.written, writer.conflicts, writer.pending) == (3, 0, 0)
        assert await status_of(a, "t1") == ("Succeeded", b"s1")


async def test_both_calls_in_flight_are_resent_after_an_outage(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held, backoff=Backoff(base=0.001, cap=0.001))
        await two_writes_in_flight(a, held, writer)
        held.fail = True
        held.release(0)
        held.release(1)
        await eventually(lambda: len(held.calls) == 4)  # each batch sent again
        assert writer.pending == 2 and writer.resends == 2
        held.fail = False
        held.release(2)
        held.release(3)
        await writer.flush()
        assert sorted(ids[0] for ids, _ in held.calls[2:]) == ["t1", "t2"]
        assert (writer.written, writer.pending) == (2, 0)
        assert (await status_of(a, "t2"))[0] == "Succeeded"


async def test_forget_all_drops_the_batches_waiting_to_be_resent(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held, backoff=Backoff(base=0.05, cap=0.05))
        await two_writes_in_flight(a, held, writer)
        held.fail = True
        held.release(0)
        held.release(1)
        await eventually(lambda: writer.pending == 2)  # both wait out the backoff
        assert writer.forget_all() == 2
        assert writer.pending == 0
        await writer.flush(timeout=5)  # the drains drop their batches: nothing is resent
        assert len(held.calls) == 2 and writer.written == 0
        assert (await status_of(a, "t1"))[0] == "Enqueued"


async def test_close_counts_a_batch_cut_short_while_it_waits_to_be_resent(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held, backoff=Backoff(base=30.0, cap=30.0))
        await own_all(a, writer, "t1")
        writer.put("t1", "Succeeded", "s1", FINAL)
        await eventually(lambda: len(held.calls) == 1)
        held.fail = True
        held.release(0)
        await eventually(lambda: writer.pending == 1)
        assert await writer.close(timeout=0.05) == 1  # not written: said so


async def test_close_counts_a_batch_cut_short_on_its_first_attempt(redis_url: str) -> None:
    """Redis hangs (no error yet): the write in flight when close gives up is unwritten
    too. Before, only a batch that had failed once was counted: close answered 0 and the
    store logged nothing about the change it dropped."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held)
        await own_all(a, writer, "t1")
        writer.put("t1", "Succeeded", "s1", FINAL)
        await eventually(lambda: len(held.calls) == 1)  # in flight, never answered
        assert writer.pending == 1
        assert await writer.close(timeout=0.05) == 1


async def test_forget_all_drops_a_batch_whose_send_is_in_flight(redis_url: str) -> None:
    """The lease lapsed while a (re)send was on its way: when it fails, the batch is
    dropped, not resent. Before, the failure put the forgotten batch back to be resent
    (for as long as Redis stayed away, and flush waited for it)."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        held = HeldWrites(a)
        writer = make_writer(a, records=held, backoff=Backoff(base=0.001, cap=0.001))
        await own_all(a, writer, "t1", "t2")
        writer.put("t1", "Succeeded", "s1", FINAL)
        await eventually(lambda: len(held.calls) == 1)
        held.fail = True
        held.release(0)
        await eventually(lambda: len(held.calls) == 2)  # resent: in flight again
        writer.put("t2", "Succeeded", "s2", FINAL)
        await eventually(lambda: len(held.calls) == 3)  # a first attempt, in flight
        assert writer.forget_all() == 2 and writer.pending == 0
        held.release(1)
        held.release(2)
        await writer.flush(timeout=5)
        assert len(held.calls) == 3 and (writer.written, writer.pending) == (0, 0)
        assert (await status_of(a, "t1"))[0] == "Enqueued"


async def test_forget_all_drops_everything(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        writer = make_writer(a)
        writer.own("t1", 1, "Running")
        writer.own("t2", 1, "Running")
        writer.put("t1", "Succeeded", "x")
        assert writer.forget_all() == 2
        assert writer.pending == 0 and writer.owned == 0
        await writer.flush()
        writer.own("t3", 1, "Running")
        writer.forget("t3")
        assert writer.owned == 0


async def test_invokes_of_one_burst_share_round_trips(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        sizes: list[int] = []
        invoke_and_take = a.records.invoke_and_take

        async def counted(tasks: list[NewTask], *args: Any) -> Any:
            sizes.append(len(tasks))
            return await invoke_and_take(tasks, *args)

        a.records.invoke_and_take = counted  # type: ignore[method-assign]
        batcher = InvokeBatcher(a.records)
        futures = [batcher.add(NewTask(f"t{i}", "f", float(i), b"x")) for i in range(1000)]
        futures.append(batcher.add(NewTask("t1", "f", 0.0, b"dup")))
        futures.append(batcher.add(NewTask("u", "unknown", 0.0, b"x")))
        codes = await asyncio.gather(*futures)
        assert codes[:1000] == [InvokeCode.STORED] * 1000
        assert codes[1000:] == [InvokeCode.EXISTS, InvokeCode.NO_FUNCTION]
        # Calls grow from a small one (the node gets work back at once), each at most twice
        # the largest before it (how fast depends on which answer comes first).
        assert sizes[:2] == [FIRST_INVOKE_BATCH, 2 * FIRST_INVOKE_BATCH]
        assert all(b <= min(INVOKE_BATCH, 2 * max(sizes[:i])) for i, b in enumerate(sizes[1:], 1))
        assert sum(sizes) == 1002 and max(sizes) >= 4 * FIRST_INVOKE_BATCH
        assert batcher.batches == len(sizes)
        await batcher.close()


async def test_a_refusal_hook_makes_an_unstored_invoke_raise(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")

        def refusal(task: NewTask, code: InvokeCode) -> Exception:
            return LookupError(f"{task.task_id}: {code.name}")

        batcher = InvokeBatcher(a.records, refusal=refusal)
        stored = batcher.add(NewTask("t1", "f", 1.0, b"x"))
        duplicate = batcher.add(NewTask("t1", "f", 2.0, b"x"))
        unknown = batcher.add(NewTask("u", "nobody", 3.0, b"x"))
        assert await stored is InvokeCode.STORED
        with pytest.raises(LookupError, match="t1: EXISTS"):
            await duplicate
        with pytest.raises(LookupError, match="u: NO_FUNCTION"):
            await unknown
        await batcher.close()


async def test_a_burst_is_stored_by_two_calls_in_flight_at_once(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        records = a.records
        in_flight, most = 0, 0

        class Counted:
            def __getattr__(self, name: str) -> Any:
                return getattr(records, name)

            async def invoke_and_take(self, *args: Any) -> Any:
                nonlocal in_flight, most
                in_flight += 1
                most = max(most, in_flight)
                try:
                    return await records.invoke_and_take(*args)
                finally:
                    in_flight -= 1

        batcher = InvokeBatcher(Counted())  # type: ignore[arg-type]
        futures = [batcher.add(NewTask(f"t{i}", "f", float(i), b"x")) for i in range(1000)]
        assert set(await asyncio.gather(*futures)) == {InvokeCode.STORED}
        assert most == INVOKE_CALLS == 2  # while one call's reply is handled, the next runs
        assert batcher.batches <= 1000 // INVOKE_BATCH + 4  # calls growing to INVOKE_BATCH
        await batcher.close()


async def test_cancelling_the_batcher_fails_its_callers_rather_than_leaving_them(
    redis_url: str,
) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        batcher = InvokeBatcher(a.records)
        first = batcher.add(NewTask("t1", "f", 1.0, b"x"))
        [drain] = batcher._in_flight
        drain.cancel()
        with pytest.raises(StoreError, match="not stored"):
            await first


async def test_close_waits_for_the_batch_under_way(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        batcher = InvokeBatcher(a.records)
        future = batcher.add(NewTask("t1", "f", 1.0, b"x"))
        await batcher.close()
        assert future.done() and future.result() is InvokeCode.STORED
        assert not batcher._in_flight


async def test_a_close_cancelled_by_its_caller_ends_cancelled(redis_url: str) -> None:
    """Before, close swallowed its own caller's cancellation (it suppressed the
    CancelledError of its shielded wait) and went on waiting for the batch."""
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        release = asyncio.Event()
        records = a.records

        class Held:
            def __getattr__(self, name: str) -> Any:
                return getattr(records, name)

            async def invoke_and_take(self, *args: Any) -> Any:
                await release.wait()
                return await records.invoke_and_take(*args)

        batcher = InvokeBatcher(Held())  # type: ignore[arg-type]
        future = batcher.add(NewTask("t1", "f", 1.0, b"x"))
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)  # close waits for the batch under way
        try:
            closing.cancel()
            await eventually(closing.done, timeout=2)  # (before: it waited on, for the batch)
            assert closing.cancelled()
            assert not future.done()  # the batch itself goes on
        finally:
            release.set()
        assert await future is InvokeCode.STORED
        await batcher.close()


class RepliesLate:
    """A RecordStore whose transition replies reach the writer only when let go (as when
    another connection's reply is read first): the writes themselves are applied."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.applied = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    async def transition(self, items: Any, *, node: str) -> Any:
        results = await self._records.transition(items, node=node)
        self.applied.set()
        await self.go.wait()
        return results


async def test_a_task_taken_again_before_its_release_is_settled_stays_held(
    redis_url: str,
) -> None:
    # A retry gives the task back (RELEASE) and the node's fetch can take it again and
    # be answered before the writer's batch is: settling the release then dropped the
    # new ownership, and every later write of the task was "not held" (it never ended).
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        [claimed] = await a.fetch("f", 1)
        refused: list[Refusal] = []
        late = RepliesLate(a.records)
        writer = make_writer(a, refused, records=late)
        writer.own("t1", claimed.epoch, claimed.status)
        writer.put("t1", "Retrying", "rec-retrying", ACK | RELEASE)
        writing = asyncio.ensure_future(writer.flush())
        await late.applied.wait()  # released in Redis; the reply not read yet
        [again] = await a.fetch("f", 1)
        writer.own("t1", again.epoch, again.status)
        late.go.set()
        await writing
        assert writer.ownership("t1") == (again.epoch, again.status)
        writer.put("t1", "Succeeded", "rec-done", ACK | FINAL)
        await writer.flush()
        assert await status_of(a, "t1") == ("Succeeded", b"rec-done") and refused == []
        await writer.close()
