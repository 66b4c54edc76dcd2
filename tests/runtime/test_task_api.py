"""The rest of the task API (issue 10): watch, paged listing, re-run, retry policy, the
thread-safe client, and the rules a new user tripped over. Every store runs each test."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import (
    ConfigError,
    InvalidTaskIdError,
    ManualClock,
    NonRetryableError,
    Runtime,
    RuntimeClosedError,
    TaskList,
    TaskNotFinishedError,
    TaskNotFoundError,
    TaskState,
    WrongLoopError,
    WrongThreadError,
    start_in_thread,
)
from runtime.ids import TaskIdGenerator, derived_id
from tests.conftest import RuntimeFactory

from .helpers import Gate, list_all, until_status

S = TaskState


async def echo(event: Any, ctx: Any) -> Any:
    return event


# --- watch -------------------------------------------------------------------------------


async def test_watch_yields_the_history_then_live_events_to_the_end(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING)
    seen: list[str] = []

    async def watch() -> None:
        async for event in rt.watch(task_id):
            seen.append(str(event.status))  # noqa: PERF401 - as they come, not at the end

    watchers = [asyncio.ensure_future(watch()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert seen == ["Enqueued", "Dequeued", "Running"] * 3  # the history, then they wait
    gate.open()
    async with asyncio.timeout(5):
        await asyncio.gather(*watchers)
    assert seen.count("Succeeded") == 3 and len(seen) == 12
    assert not rt._waits.watched  # nobody left registered


async def test_watch_of_a_finished_task_yields_its_history_and_ends(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    task_id = await rt.invoke("fn", 1)
    record = await rt.wait(task_id, timeout=5)
    events = [event async for event in rt.watch(task_id)]
    assert events == record.events


async def test_a_watcher_that_stops_early_leaves_nothing_behind(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING)
    watch = rt.watch(task_id)
    history = [await watch.__anext__() for _ in range(3)]
    assert [e.status for e in history] == [S.ENQUEUED, S.DEQUEUED, S.RUNNING]
    pending = asyncio.ensure_future(watch.__anext__())  # now waiting for a live event
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    async for _ in rt.watch(task_id):
        break  # stops iterating early
    del watch
    gc.collect()
    assert not rt._waits.watched
    gate.open()
    assert (await rt.wait(task_id, timeout=5)).status is S.SUCCEEDED


async def test_watch_of_an_unknown_task_raises(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    with pytest.raises(TaskNotFoundError):
        await rt.watch("nope").__anext__()


# --- listing -----------------------------------------------------------------------------


async def test_list_pages_with_cursors_in_both_orders(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    rt.register("other", echo)
    ids = [await rt.invoke("fn", i, task_id=f"job-{i:02d}") for i in range(25)]
    await rt.invoke("other", 0)
    await rt.join()
    pages: list[TaskList] = []
    cursor = None
    while True:
        page = await rt.list(function="fn", limit=10, cursor=cursor)
        pages.append(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [r.task_id for p in pages for r in p] == ids[::-1]
    ascending = await list_all(rt, function="fn", order="asc")
    assert [r.task_id for r in ascending] == ids
    everything = await rt.list(limit=1000)
    assert everything.next_cursor is None and len(everything) == 26


async def test_list_filters_by_creation_time(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    rt.register("fn", echo)
    early = await rt.invoke("fn", 1)
    middle_time = clock.time() + 5
    clock.advance(10)
    late = await rt.invoke("fn", 2)
    await rt.join()
    assert [r.task_id for r in await rt.list(created_after=middle_time)] == [late]
    assert [r.task_id for r in await rt.list(created_before=middle_time)] == [early]
    assert not await rt.list(created_after=middle_time, created_before=middle_time)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit=0"),
        ({"limit": 1001}, "limit=1001"),
        ({"limit": True}, "limit=True"),
        ({"order": "newest"}, "order="),
        ({"status": "Done"}, "unknown status"),
        ({"created_after": "yesterday"}, "created_after="),
        ({"cursor": "garbage!"}, "not a cursor"),
        ({"cursor": 12}, "not a cursor"),
    ],
)
async def test_list_refuses_bad_arguments(
    make_runtime: RuntimeFactory, kwargs: dict[str, Any], message: str
) -> None:
    rt = await make_runtime()
    with pytest.raises(ConfigError, match=message):
        await rt.list(**kwargs)


async def test_a_cursor_only_continues_its_own_listing(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    for i in range(3):
        await rt.invoke("fn", i)
    page = await rt.list(limit=1)
    assert page.next_cursor is not None
    with pytest.raises(ConfigError, match="other filters or order"):
        await rt.list(function="fn", limit=1, cursor=page.next_cursor)
    with pytest.raises(ConfigError, match="other filters or order"):
        await rt.list(limit=1, order="asc", cursor=page.next_cursor)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.integers(0, 40),
    limit=st.integers(1, 12),
    during=st.lists(st.integers(0, 4), max_size=8),
    order=st.sampled_from(["desc", "asc"]),
)
def test_paging_yields_each_task_exactly_once_under_concurrent_invokes(
    store_url: str, before: int, limit: int, during: list[int], order: str
) -> None:
    async def scenario(url: str) -> None:
        async with Runtime(store=url) as rt:
            rt.register("fn", echo)
            existing = [await rt.invoke("fn", i) for i in range(before)]
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await rt.list(limit=limit, order=order, cursor=cursor)
                seen += [r.task_id for r in page]
                for _ in range(during[pages] if pages < len(during) else 0):
                    await rt.invoke("fn", -1)  # new tasks while paging
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert len(seen) == len(set(seen))  # never twice
            assert set(existing) <= set(seen)  # none that existed is missed
            if order == "desc":
                assert seen[: len(existing)] == existing[::-1] or set(seen) == set(existing)
            else:
                assert seen[: len(existing)] == existing

    with tempfile.TemporaryDirectory() as folder:  # a fresh file for every example
        url = store_url if store_url.startswith("memory") else f"sqlite:///{folder}/t.db"
        asyncio.run(scenario(url))


# --- re-run ------------------------------------------------------------------------------


async def test_rerun_runs_a_failed_task_again(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    broken = {"on": True}

    async def flaky(event: Any, ctx: Any) -> Any:
        if broken["on"]:
            raise NonRetryableError("down")
        return event

    rt.register("fn", flaky)
    first = await rt.invoke("fn", {"n": 1}, task_id="first")
    assert (await rt.wait(first, timeout=5)).status is S.FAILED
    failed = await list_all(rt, status="Failed")
    assert [r.task_id for r in failed] == ["first"]
    broken["on"] = False
    again = await rt.rerun("first", new_task_id="again")
    record = await rt.wait(again, timeout=5)
    assert again == "again" and record.status is S.SUCCEEDED and record.result == {"n": 1}
    assert record.events[0].detail == "accepted: re-run of first"
    generated = await rt.rerun("again")
    assert generated != "again" and (await rt.wait(generated, timeout=5)).result == {"n": 1}


async def test_rerun_refuses_an_unfinished_or_unknown_task(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    with pytest.raises(TaskNotFinishedError, match="still"):
        await rt.rerun(task_id)
    with pytest.raises(TaskNotFoundError):
        await rt.rerun("missing")
    gate.open()
    await rt.wait(task_id, timeout=5)


# --- retry policy ------------------------------------------------------------------------


async def test_retry_on_and_no_retry_on_choose_what_retries(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def raise_it(event: Any, ctx: Any) -> None:
        raise {"conn": ConnectionError, "value": ValueError, "timeout": TimeoutError}[event]("x")

    rt.register(
        "fn", raise_it, retry_backoff=0, max_retries=2,
        retry_on=(OSError,), no_retry_on=(TimeoutError,),
    )  # fmt: skip
    conn = await rt.wait(await rt.invoke("fn", "conn"), timeout=5)
    value = await rt.wait(await rt.invoke("fn", "value"), timeout=5)
    timeout = await rt.wait(await rt.invoke("fn", "timeout"), timeout=5)
    assert (conn.status, conn.attempts) == (S.FAILED, 3)  # an OSError: retried
    assert (value.status, value.attempts) == (S.FAILED, 1)  # not in retry_on
    assert (timeout.status, timeout.attempts) == (S.FAILED, 1)  # an OSError, but excluded
    assert "not retryable" in value.events[-1].detail


@pytest.mark.parametrize(
    "options",
    [{"retry_on": (ValueError, "KeyError")}, {"no_retry_on": [ValueError]}, {"retry_on": 3}],
)
def test_retry_policy_is_checked_at_registration(options: dict[str, Any]) -> None:
    rt = Runtime()
    with pytest.raises(ConfigError, match="exception classes"):
        rt.register("fn", echo, **options)


def test_one_exception_class_is_accepted_alone() -> None:
    rt = Runtime()
    rt.register("fn", echo, retry_on=ConnectionError)
    assert rt.functions["fn"].config.retry_on == (ConnectionError,)


# --- registration and ids ----------------------------------------------------------------


def test_function_decorator_without_parentheses_registers_under_its_name() -> None:
    rt = Runtime()

    @rt.function
    async def resize(event: Any, ctx: Any) -> None:
        return None

    @rt.function(name="named", max_retries=1)
    async def other(event: Any, ctx: Any) -> None:
        return None

    assert set(rt.functions) == {"resize", "named"} and callable(resize) and callable(other)
    with pytest.raises(ConfigError, match="name"):
        rt.function(12)  # type: ignore[call-overload]


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_a_handler_must_take_event_and_context(kind: str) -> None:
    rt = Runtime()

    async def one_async(event: Any) -> None:
        return None

    def one_sync(event: Any) -> None:
        return None

    with pytest.raises(ConfigError, match=r"'fn'.*handler\(event, context\)"):
        rt.register("fn", one_async if kind == "async" else one_sync, kind=kind)

    async def flexible(*args: Any) -> None:
        return None

    rt.register("ok", flexible)  # *args takes both


async def test_generated_ids_cannot_be_taken_by_hand(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    generated = await rt.invoke("fn")
    with pytest.raises(InvalidTaskIdError, match="reserved"):
        await rt.invoke("fn", task_id=generated)
    with pytest.raises(InvalidTaskIdError, match="reserved"):
        await rt.invoke("fn", task_id="t0123456789ab-1")
    assert await rt.invoke("fn", task_id="t-custom.v2") == "t-custom.v2"


async def test_a_generated_id_that_is_taken_already_is_generated_anew(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated id can collide with a task an earlier runtime stored (same random
    prefix): the invoke picks new ids instead of failing, and the stored task is untouched."""
    rt = await make_runtime()
    rt.register("fn", echo)
    with monkeypatch.context() as patch:  # two generators with one prefix
        patch.setattr(os, "urandom", lambda n: b"\x01" * n)
        earlier, again = TaskIdGenerator(), TaskIdGenerator()
    rt._new_id = earlier
    first = await rt.invoke("fn", "first")
    await rt.wait(first)
    rt._new_id = again  # its next id is ``first``
    second = await rt.invoke("fn", "second")
    assert second != first
    assert rt._new_id is not again  # a new prefix
    assert (await rt.wait(second)).result == "second"
    assert (await rt.get(first)).result == "first"


def test_derived_ids_follow_the_id_rule() -> None:
    assert derived_id("abc", "on_success") == "abc.on_success"
    long = "x" * 128
    derived = derived_id(long, "on_failure")
    assert len(derived) <= 128 and derived.endswith(".on_failure")
    assert derived != derived_id("x" * 127 + "y", "on_failure")


# --- loops and threads -------------------------------------------------------------------


async def test_calls_before_start_raise_runtime_closed() -> None:
    rt = Runtime()
    rt.register("fn", echo)
    for call in (rt.get("x"), rt.wait("x"), rt.list(), rt.join(), rt.stop("x"), rt.invoke("fn")):
        with pytest.raises(RuntimeClosedError, match="not started"):
            await call
    with pytest.raises(RuntimeClosedError, match="not started"):
        rt.watch("x")


async def test_a_runtime_used_from_another_event_loop_says_so(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    task_id = await rt.invoke("fn")
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(rt.get(task_id))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert len(errors) == 1 and isinstance(errors[0], WrongLoopError)
    assert "rt.client()" in str(errors[0])


def test_the_threaded_client_from_plain_threads() -> None:
    rt = Runtime(tick_interval=0.01)

    async def double(event: Any, ctx: Any) -> Any:
        return event * 2

    rt.register("double", double)
    with start_in_thread(rt) as running:
        client = running.client
        results: list[Any] = []

        def work(n: int) -> None:
            task_id = client.invoke("double", n)
            results.append(client.wait(task_id, timeout=10).result)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [i * 2 for i in range(8)]
        assert len(client.list(function="double")) == 8
        assert client.get(client.invoke("double", 5, task_id="five")).task_id == "five"
        with pytest.raises(TaskNotFoundError):
            client.get("nope")

        async def on_the_loop() -> None:
            with pytest.raises(WrongThreadError, match="own event loop thread"):
                client.get("five")

        asyncio.run_coroutine_threadsafe(on_the_loop(), running._loop).result(5)  # type: ignore[arg-type]
    assert not rt.started
    with pytest.raises(RuntimeClosedError):
        client.get("five")


async def test_rt_client_serves_threads_while_the_loop_runs(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    client = rt.client()
    loop = asyncio.get_running_loop()
    task_id = await loop.run_in_executor(None, client.invoke, "fn", 7)
    record = await loop.run_in_executor(None, client.wait, task_id, 5)
    assert record.result == 7
    with pytest.raises(WrongThreadError):
        client.get(task_id)  # on the loop's own thread: refused, not a deadlock


def test_rt_client_needs_a_started_runtime() -> None:
    with pytest.raises(RuntimeClosedError):
        Runtime().client()


def test_start_in_thread_reports_a_failed_start(tmp_path: Any) -> None:
    rt = Runtime(store=f"sqlite:///{tmp_path}/nowhere/x.db")
    with pytest.raises(Exception, match="nowhere"):
        start_in_thread(rt)


# --- delayed invocation ------------------------------------------------------------------


async def test_a_delayed_task_waits_until_it_is_due(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    calls: list[float] = []

    async def record_time(event: Any, ctx: Any) -> None:
        calls.append(clock.time())

    rt.register("fn", record_time)
    start = clock.time()
    task_id = await rt.invoke("fn", delay=30)
    record = await rt.get(task_id)
    assert record.status is S.ENQUEUED and record.due_at == pytest.approx(start + 30)
    assert "due at" in record.events[0].detail and "in 30 s" in record.events[0].detail
    clock.advance(29)
    await asyncio.sleep(0.02)
    assert calls == [] and (await rt.get(task_id)).status is S.ENQUEUED
    clock.advance(1)
    done = await rt.wait(task_id, timeout=5)
    assert done.status is S.SUCCEEDED and calls == [pytest.approx(start + 30)]
    assert done.events[1].timestamp >= start + 30  # dequeued no earlier than due


async def test_max_event_age_counts_from_the_due_time(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    gate = Gate()

    async def handler(event: Any, ctx: Any) -> None:
        if event == "block":
            await gate.wait()

    rt.register("fn", handler, max_instances=1, max_event_age=10)
    blocker = await rt.invoke("fn", "block")
    await until_status(rt, blocker, S.RUNNING)
    late = await rt.invoke("fn", "x", delay=100)
    clock.advance(105)  # due 5 s ago, though accepted 105 s ago
    await asyncio.sleep(0.02)
    gate.open()
    assert (await rt.wait(late, timeout=5)).status is S.SUCCEEDED


async def test_a_delayed_task_can_be_stopped_and_never_runs(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    calls: list[Any] = []

    async def handler(event: Any, ctx: Any) -> None:
        calls.append(event)

    rt.register("fn", handler)
    task_id = await rt.invoke("fn", 1, delay=60)
    record = await rt.stop(task_id)
    assert [str(e.status) for e in record.events] == ["Enqueued", "Stopping", "Stopped"]
    clock.advance(61)
    await asyncio.sleep(0.02)
    assert calls == []


@pytest.mark.parametrize("delay", [-1, 3601, float("nan"), "5", True])
async def test_delay_is_checked(make_runtime: RuntimeFactory, delay: Any) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    with pytest.raises(ConfigError, match="delay="):
        await rt.invoke("fn", delay=delay)
    assert not await rt.list()  # nothing stored


async def test_max_delay_is_a_function_setting(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    rt.register("fn", echo, max_delay=86_400)
    task_id = await rt.invoke("fn", delay=86_400)
    assert (await rt.get(task_id)).status is S.ENQUEUED
    with pytest.raises(ConfigError, match="max_delay"):
        Runtime().register("fn", echo, max_delay=-1)


async def test_many_delayed_tasks_cost_no_timer_each(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime(store="memory://")  # the timers do not depend on the store
    rt.register("fn", echo, max_queued=20_000)
    for i in range(5_000):
        await rt.invoke("fn", i, delay=100 + (i % 50))
    assert rt.actor_system is not None
    assert len(rt.actor_system.scheduler) < 10  # one timer per pool, whatever the count


async def test_a_delayed_task_survives_a_restart_with_the_same_due_time(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'delayed.db'}"
    first_clock = ManualClock(start=1_800_000_000.0)
    async with Runtime(store=url, clock=first_clock, tick_interval=0.01) as rt:
        rt.register("fn", echo)
        task_id = await rt.invoke("fn", 7, delay=100)
        due_at = (await rt.get(task_id)).due_at
    later = ManualClock(start=1_800_000_050.0)  # restarted 50 s later: 50 s to go
    async with Runtime(store=url, clock=later, tick_interval=0.01) as rt:
        rt.register("fn", echo)
        record = await rt.get(task_id)
        assert record.due_at == due_at and record.status is S.ENQUEUED
        later.advance(49)
        await asyncio.sleep(0.05)
        assert (await rt.get(task_id)).status is S.ENQUEUED
        later.advance(2)
        done = await rt.wait(task_id, timeout=5)
        assert done.status is S.SUCCEEDED and done.result == 7


# --- destinations ------------------------------------------------------------------------


async def test_on_success_invokes_the_destination_once_with_the_result(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    got: list[Any] = []

    async def sink(event: Any, ctx: Any) -> None:
        got.append((ctx.task_id, event))

    rt.register("sink", sink)
    rt.register("fn", echo, on_success="sink")
    task_id = await rt.invoke("fn", {"x": 1}, task_id="src")
    record = await rt.wait(task_id, timeout=5)
    assert record.events[-1].detail == "on_success: invoking 'sink' as task src.on_success"
    assert (await rt.wait("src.on_success", timeout=5)).status is S.SUCCEEDED
    assert got == [
        (
            "src.on_success",
            {
                "task_id": "src",
                "function": "fn",
                "status": "Succeeded",
                "result": {"x": 1},
                "attempts": 1,
            },
        )
    ]
    first = await rt.get("src.on_success")
    assert first.events[0].detail == "accepted: destination of src"


async def test_on_failure_covers_failed_expired_and_invalid(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    rt = await make_runtime(clock=clock)
    got: dict[str, Any] = {}
    gate = Gate()

    async def sink(event: Any, ctx: Any) -> None:
        got[event["task_id"]] = event

    async def broken(event: Any, ctx: Any) -> None:
        if event == "block":
            await gate.wait()
            return
        raise NonRetryableError("bad input")

    rt.register("sink", sink)
    rt.register("fn", broken, on_failure="sink", max_instances=1, max_event_age=5)
    await rt.wait(await rt.invoke("fn", "x", task_id="failed"), timeout=5)
    await until_status(rt, await rt.invoke("fn", "block", task_id="blocker"), S.RUNNING)
    await rt.invoke("fn", "x", task_id="expired")
    clock.advance(6)
    gate.open()
    await rt.wait("expired", timeout=5)
    await rt.join()
    assert got["failed"]["error"]["type"] == "NonRetryableError"
    assert got["failed"]["status"] == "Failed" and got["failed"]["attempts"] == 1
    assert (
        got["expired"]["status"] == "Expired"
        and "max_event_age" in got["expired"]["error"]["message"]
    )
    assert "blocker" not in got  # it succeeded: no on_success configured
    gate2 = Gate()
    rt.register("doomed", gate2.handler, on_failure="sink", max_instances=1)
    await until_status(rt, await rt.invoke("doomed", task_id="running"), S.RUNNING)
    await rt.invoke("doomed", task_id="invalid")
    if rt.store.shared:  # unregister leaves it to other nodes: deleting makes it Invalid
        await rt.delete_function("doomed")
    else:
        rt.unregister("doomed")
    assert (await rt.wait("invalid", timeout=5)).status is S.INVALID
    gate2.open()
    await rt.join()
    gone = "deleted" if rt.store.shared else "unregistered"
    assert got["invalid"]["status"] == "Invalid" and gone in got["invalid"]["error"]["message"]


async def test_a_missing_destination_is_an_event_not_an_error(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rt = await make_runtime()
    rt.register("fn", echo, on_success="gone")
    record = await rt.wait(await rt.invoke("fn", 1), timeout=5)
    assert record.status is S.SUCCEEDED
    assert "not invoked: no function named 'gone'" in record.events[-1].detail
    assert "not registered" in caplog.text


async def test_a_destination_runs_at_most_once(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    got: list[Any] = []

    async def sink(event: Any, ctx: Any) -> None:
        got.append(event)

    rt.register("sink", sink)
    rt.register("fn", echo, on_success="sink")
    await rt.invoke("sink", "by hand", task_id="src.on_success")  # the derived id is taken
    await rt.wait(await rt.invoke("fn", 1, task_id="src"), timeout=5)
    await rt.join()
    assert got == ["by hand"]


async def test_a_stopped_task_has_no_destination(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("sink", echo)
    rt.register("fn", gate.handler, on_failure="sink", on_success="sink")
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING)
    record = await rt.stop(task_id)
    assert "on_" not in record.events[-1].detail
    await rt.join()
    assert [r.function for r in await rt.list()] == ["fn"]


def test_destinations_must_be_function_names() -> None:
    with pytest.raises(ConfigError, match="on_success"):
        Runtime().register("fn", echo, on_success=echo)


# --- what operators and the service read ---------------------------------------------------


async def test_function_stats_nodes_and_ping(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime(node_id="node-a")
    gate = Gate()
    rt.register("fn", gate.handler, max_instances=1)
    running = await rt.invoke("fn")
    await until_status(rt, running, S.RUNNING)
    await rt.invoke("fn")
    stats = await rt.function_stats()
    assert stats["fn"] == {
        "kind": "async",
        "queued": 1,
        "running": 1,
        "unfinished": 2,
        "instances": {"Busy": 1},
    }
    [node] = await rt.nodes()
    assert node.node_id == "node-a" and node.functions == ("fn",)
    if rt.store.shared:  # in_flight is as of its last heartbeat (every lease/3): not checked
        assert node.heartbeat_at >= node.started_at
    else:
        assert node.in_flight == 2
    await rt.ping_store()
    gate.open()
    await rt.join()


def test_node_id_is_checked() -> None:
    with pytest.raises(ConfigError, match="node_id"):
        Runtime(node_id="bad id")
    assert Runtime().node_id.count("-") >= 2  # host-pid-random


def test_an_import_path_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="import path"):
        Runtime().register("fn", "tests.runtime.kind_handlers:echo\n", kind="process")
