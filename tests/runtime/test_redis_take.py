"""A node that invokes what it serves takes its own new tasks in the invoke's call.

The invoke script queues the tasks and, for as many free slots as the node has,
claims new entries of their streams at once (``RecordStore.invoke_and_take``), so a
task invoked where it runs starts without a fetch. What the node may take is
promised to one call at a time (``SharedSource.reserve``): a take and a fetch in
flight together never claim more than the free slots.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime import Runtime, TaskExistsError, TaskState
from runtime.cluster.source import SharedSource
from runtime.stores.redis import Claimed, QueueStats, StoreUnavailableError
from runtime.stores.redis.queue import Fetched
from tests.conftest import eventually
from tests.runtime.helpers import Gate
from tests.runtime.redis_helpers import open_nodes

pytestmark = pytest.mark.redis


async def echo(event: Any, ctx: Any) -> Any:
    return event


def count_fetches(rt: Runtime) -> list[int]:
    """Counts the node's fetch calls from now on (in a one-item list)."""
    assert rt._cluster is not None
    queue = rt._cluster.node.source._queue
    calls = [0]
    fetch = queue.fetch

    async def counted(wanted: Any) -> Any:
        calls[0] += 1
        return await fetch(wanted)

    queue.fetch = counted  # type: ignore[method-assign]
    return calls


def hold_take_replies(rt: Runtime) -> tuple[asyncio.Event, asyncio.Event]:
    """From now on an invoke's call is applied in Redis (stored, and taken by ``rt``) but
    its reply reaches ``rt`` only once the second event is set; the first is set when the
    call is applied."""
    assert rt._cluster is not None
    records = rt._cluster.node.store.records
    invoke_and_take = records.invoke_and_take
    in_flight, reply = asyncio.Event(), asyncio.Event()

    async def reply_held(*args: Any) -> Any:
        answer = await invoke_and_take(*args)
        in_flight.set()
        await reply.wait()
        return answer

    records.invoke_and_take = reply_held  # type: ignore[method-assign]
    return in_flight, reply


async def test_a_task_invoked_where_it_is_served_runs_without_a_fetch(redis_url: str) -> None:
    rt = Runtime(store=redis_url)
    rt.register("echo", echo, concurrency=10)
    async with rt:
        await rt.wait(await rt.invoke("echo", 0), timeout=5)  # the instance is warm
        fetches = count_fetches(rt)
        for i in range(20):
            record = await rt.wait(await rt.invoke("echo", i), timeout=5)
            assert record.status is TaskState.SUCCEEDED and record.result == i
        # Before, each task took a wake-up by its new entry, a fetch for it, and a fetch
        # more each time its slot came free (one that found nothing): 40 and more.
        assert fetches[0] <= 2


async def test_a_node_that_runs_what_it_invokes_is_not_woken_by_its_own_tasks(
    redis_url: str,
) -> None:
    """The node waits on the function's bell, which its own invokes (taking all they
    queued) do not ring: before, each invoke's stream entry woke the node's wait, which
    then read the reply and blocked again (a round trip and a wake-up per task)."""
    rt = Runtime(store=redis_url)
    rt.register("echo", echo, concurrency=10)
    async with rt:
        await rt.wait(await rt.invoke("echo", 0), timeout=5)
        assert rt._cluster is not None
        queue = rt._cluster.node.source._queue
        woken = [0]
        wait_for_entries = queue.wait_for_entries

        async def counted(*args: Any, **kwargs: Any) -> Any:
            found = await wait_for_entries(*args, **kwargs)
            woken[0] += bool(found)
            return found

        queue.wait_for_entries = counted  # type: ignore[method-assign]
        for i in range(20):
            assert (await rt.wait(await rt.invoke("echo", i), timeout=5)).result == i
        assert woken[0] == 0


async def test_an_invoke_takes_no_more_than_the_free_slots(redis_url: str) -> None:
    gate = Gate()
    rt = Runtime(store=redis_url)
    rt.register("held", gate.handler, concurrency=2, max_instances=1)
    async with rt:
        assert rt._cluster is not None
        queue = rt._cluster.node.store.queue
        ids = await asyncio.gather(*(rt.invoke("held", i) for i in range(5)))
        await eventually(lambda: gate.entered == 2)
        assert await queue.stats(["held"]) == {"held": QueueStats(depth=3, pending=2)}
        gate.open()
        done = await asyncio.gather(*(rt.wait(task_id, timeout=5) for task_id in ids))
        assert {record.status for record in done} == {TaskState.SUCCEEDED}


async def test_a_take_whose_reply_was_lost_is_taken_back_and_runs(redis_url: str) -> None:
    rt = Runtime(store=redis_url)
    rt.register("echo", echo)
    async with rt:
        await rt.wait(await rt.invoke("echo", 0), timeout=5)
        assert rt._cluster is not None
        records = rt._cluster.node.store.records
        invoke_and_take = records.invoke_and_take

        async def reply_lost(*args: Any) -> Any:
            await invoke_and_take(*args)  # Redis stored and claimed it ...
            raise StoreUnavailableError("connection lost")  # ... and the reply never came

        records.invoke_and_take = reply_lost  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailableError):
            await rt.invoke("echo", "lost", task_id="lost")
        records.invoke_and_take = invoke_and_take  # type: ignore[method-assign]
        # Held by this node in Redis, yet by no actor here: the fetch loop takes it back.
        record = await rt.wait("lost", timeout=10)
        assert record.status is TaskState.SUCCEEDED and record.result == "lost"


async def test_slots_are_promised_to_one_call_at_a_time(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        source = SharedSource(a.queue, lambda items: None, lambda: True)
        source.want("f", 3)
        assert source.reserve({"f": 5, "g": 2}) == {"f": 3}  # g: no slots at all
        assert source.reserve({"f": 1}) == {}  # all three are promised
        source.taken({"f": 3}, Fetched({"f": []}, {"f": "0-0"}))
        assert source.reserve({"f": 2}) == {"f": 2}  # it took none: free again
        source.taken({"f": 2}, None)  # failed: what it took may be lost
        assert source.reserve({"f": 1}) == {}  # no take until that is looked for


async def test_a_look_for_lost_replies_waits_for_the_takes_in_flight(redis_url: str) -> None:
    async with open_nodes(redis_url, "a") as [a]:
        await a.register("f")
        await a.invoke("f", "t1")
        adopted: list[Claimed] = []
        source = SharedSource(
            a.queue, adopted.extend, lambda: True, lambda: {c.task_id for c in adopted}
        )
        source.want("f", 1)
        take = source.reserve({"f": 1})
        [claimed] = await a.fetch("f", 1)  # as the take in flight does, its reply not in yet
        look = asyncio.ensure_future(source.take_back(["f"]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not look.done()  # t1 is not lost: its take's reply is on its way
        source.taken(take, Fetched({"f": [claimed]}, {"f": claimed.stream_id}))
        assert adopted == [claimed]
        assert await asyncio.wait_for(look, 5) == []  # held now: nothing was lost


async def test_a_function_deleted_while_a_take_is_under_way_strands_no_task(
    redis_url: str,
) -> None:
    rt = Runtime(store=redis_url)
    rt.register("echo", echo)
    async with rt:
        await rt.wait(await rt.invoke("echo", 0), timeout=5)
        in_flight, reply = hold_take_replies(rt)
        invoking = asyncio.ensure_future(rt.invoke("echo", 1, task_id="late"))
        await in_flight.wait()
        deleting = asyncio.ensure_future(rt.delete_function("echo"))
        # Before, the delete ended meanwhile, finding "late" held by this node; the take's
        # reply then gave it back to the queue of a function nobody may serve: Enqueued
        # for ever. Now the delete waits for the take, and finds it queued again.
        await asyncio.wait([deleting], timeout=0.3)
        reply.set()
        await deleting
        await invoking
        record = await rt.wait("late", timeout=5)
        assert record.status is TaskState.INVALID


async def test_a_take_answered_after_close_began_stores_the_task_for_other_nodes(
    redis_url: str,
) -> None:
    url = redis_url + "&lease=0.5"  # a node that left is reclaimed within a quarter second
    a = Runtime(store=url)
    a.register("echo", echo)
    await a.start()
    await a.wait(await a.invoke("echo", 0), timeout=5)
    assert a._cluster is not None
    store = a._cluster.node.store
    in_flight, reply = hold_take_replies(a)
    writer_close = store.writer.close

    async def reply_once_closing(timeout: float | None = None) -> int:
        reply.set()  # the runtime's actors are closed by now
        return await writer_close(timeout)

    store.writer.close = reply_once_closing  # type: ignore[method-assign]
    invoking = asyncio.ensure_future(a.invoke("echo", 1, task_id="late"))
    await in_flight.wait()
    await a.close()
    # Before, handing "late" to the closed runtime raised, and the invoke failed with "the
    # invoke was not stored" although it was: a caller would invoke it again.
    assert await invoking == "late"
    b = Runtime(store=url)
    b.register("echo", echo)
    async with b:  # "late" stayed a's in Redis: b reclaims it from the node that left
        record = await b.wait("late", timeout=5)
        assert record.status is TaskState.SUCCEEDED and record.result == 1


async def test_a_stop_that_reaches_the_node_before_its_take_does_stops_the_task(
    redis_url: str,
) -> None:
    gate = Gate()

    async def held(event: Any, ctx: Any) -> Any:
        if event:
            await gate.wait()
        return event

    a, b = Runtime(store=redis_url), Runtime(store=redis_url)
    a.register("held", held)
    async with a, b:
        await a.wait(await a.invoke("held", 0), timeout=5)  # a's pool has told its free slots
        assert a._cluster is not None
        store = a._cluster.node.store
        in_flight, reply = hold_take_replies(a)
        invoking = asyncio.ensure_future(a.invoke("held", 1, task_id="t"))
        await in_flight.wait()
        stopping = asyncio.ensure_future(b.stop("t"))  # Stopping, and a's control message
        control = store.conn.keys.control(store.node_id)
        for _ in range(500):  # a reads the request (no actor holds "t" there yet) and drops it
            stored = await store.records.get("t")
            asked = stored is not None and stored.status == "Stopping"
            if asked and not await store.conn.command("XLEN", control):
                break
            await asyncio.sleep(0.01)
        reply.set()
        assert await invoking == "t"
        # Before, a's actor found its first write refused (Stopping) and ran the attempt
        # on, waiting for a control message it had already dropped: stuck in Stopping.
        try:
            record = await asyncio.wait_for(stopping, 5)
        finally:
            gate.open()  # (on failure: the close need not wait for the attempt)
        assert record.status is TaskState.STOPPED
        assert gate.entered <= 1 and gate.entered == gate.cancelled


async def test_a_task_id_invoked_twice_in_one_take_runs_the_stored_event(redis_url: str) -> None:
    rt = Runtime(store=redis_url)
    rt.register("echo", echo, concurrency=10)
    async with rt:
        await rt.wait(await rt.invoke("echo", 0), timeout=5)  # its free slots are known
        first, second = await asyncio.gather(
            rt.invoke("echo", "first", task_id="same"),
            rt.invoke("echo", "second", task_id="same"),
            return_exceptions=True,
        )
        assert first == "same" and isinstance(second, TaskExistsError)
        # Before, the take handed over the record of the last invoke of that id, which
        # Redis refused: the task ran the refused invoke's event.
        record = await rt.wait("same", timeout=5)
        assert record.result == "first"


async def test_a_lost_take_of_a_function_no_longer_served_here_is_taken_back(
    redis_url: str,
) -> None:
    a, b = Runtime(store=redis_url), Runtime(store=redis_url)
    a.register("echo", echo)
    b.register("echo", echo)
    async with a, b:
        await a.wait(await a.invoke("echo", 0), timeout=5)
        assert a._cluster is not None
        records = a._cluster.node.store.records
        invoke_and_take = records.invoke_and_take

        async def reply_lost(*args: Any) -> Any:
            await invoke_and_take(*args)  # Redis stored it and a claimed it ...
            raise StoreUnavailableError("connection lost")  # ... and the reply never came

        records.invoke_and_take = reply_lost  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailableError):
            await a.invoke("echo", "lost", task_id="lost")
        records.invoke_and_take = invoke_and_take  # type: ignore[method-assign]
        a.unregister("echo")  # before a's fetch loop looked for what the lost reply took
        # Before, a looked for lost tasks only among the functions it had free slots for:
        # none now, so "lost" stayed a's in Redis, held by no actor, for as long as a lived.
        record = await b.wait("lost", timeout=5)
        assert record.status is TaskState.SUCCEEDED and record.result == "lost"


async def test_a_function_registered_while_the_node_waits_is_watched_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait for new entries lasts _WAIT; one started before "two" was served covered only
    # "one", and was reused: "two"'s first task waited for it to run out (1 s by default).
    import runtime.cluster.source as source_module

    monkeypatch.setattr(source_module, "_WAIT", 30.0)
    rt = Runtime(store=redis_url)
    rt.register("one", echo)
    async with rt, Runtime(store=redis_url) as client:
        await rt.wait(await rt.invoke("one", 1), timeout=5)  # the node now waits on "one"
        assert rt._cluster is not None
        queue = rt._cluster.node.source._queue
        asked: list[set[str]] = []
        fetch = queue.fetch

        async def recorded(wanted: Any) -> Any:
            asked.append(set(wanted))
            return await fetch(wanted)

        queue.fetch = recorded  # type: ignore[method-assign]
        rt.register("two", echo)
        await eventually(lambda: any("two" in functions for functions in asked))
        record = await client.wait(await client.invoke("two", 2), timeout=2)
        assert record.status is TaskState.SUCCEEDED and record.result == 2


async def test_no_task_waits_for_the_poll_whoever_queues_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path that queues entries a node did not take rings the function's bell, so
    with the poll (_WAIT) pushed out of reach every task still runs at once: bursts from a
    pure client, from a node beyond its free slots, from a node that does not serve the
    function, retries and delayed starts, spread over two serving nodes."""
    import runtime.cluster.source as source_module

    monkeypatch.setattr(source_module, "_WAIT", 30.0)
    attempts: dict[int, int] = {}

    async def fails_once(event: Any, ctx: Any) -> Any:
        attempts[event] = attempts.get(event, 0) + 1
        if attempts[event] == 1:
            raise RuntimeError("the first attempt fails")
        return event

    a, b = Runtime(store=redis_url), Runtime(store=redis_url)
    for rt in (a, b):
        rt.register("f", echo, concurrency=2)
        rt.register("flaky", fails_once, concurrency=2, retry_backoff=0.0, retry_backoff_max=0.0)
    b.register("only_b", echo, concurrency=2)
    gate = Gate()  # what a takes of "held" stays there: the rest is b's to run
    a.register("held", gate.handler, concurrency=1, max_instances=1)
    b.register("held", echo, concurrency=2)

    async def all_succeed(rt: Runtime, ids: list[str]) -> None:
        done = await asyncio.gather(*(rt.wait(task_id, timeout=3) for task_id in ids))
        assert {record.status for record in done} == {TaskState.SUCCEEDED}

    async with a, b, Runtime(store=redis_url) as client:
        await all_succeed(client, [await client.invoke("f", 0)])  # both nodes wait now
        held = list(await asyncio.gather(*(a.invoke("held", i) for i in range(10))))
        await eventually(lambda: gate.entered == 1)
        waits = [asyncio.ensure_future(a.wait(task_id)) for task_id in held]
        try:  # all but the one a runs (held) run on b, without a poll
            await eventually(lambda: sum(w.done() for w in waits) == 9, timeout=3)
        finally:
            gate.open()
            await asyncio.gather(*waits)
        await all_succeed(
            client, list(await asyncio.gather(*(client.invoke("f", i) for i in range(150))))
        )
        await all_succeed(a, list(await asyncio.gather(*(a.invoke("f", i) for i in range(150)))))
        await all_succeed(
            a, list(await asyncio.gather(*(a.invoke("only_b", i) for i in range(20))))
        )
        await all_succeed(client, [await client.invoke("flaky", i) for i in range(10)])
        delayed = [await client.invoke("f", i, delay=0.1) for i in range(10)]
        await all_succeed(client, delayed)
