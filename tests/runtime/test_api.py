"""The public API: registration, every error (with nothing stored or changed), reads, close."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runtime import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    PayloadError,
    QueueFullError,
    Runtime,
    RuntimeClosedError,
    StintError,
    TaskExistsError,
    TaskNotFoundError,
    TaskState,
    WaitTimeoutError,
    errors,
)
from tests.conftest import RuntimeFactory

from .helpers import Gate, until_status

S = TaskState


async def echo(event: Any, ctx: Any) -> Any:
    return event


def test_every_error_is_a_stint_error() -> None:
    names = [
        "ConfigError", "FunctionNotFoundError", "PayloadError", "InvalidTaskIdError",
        "TaskExistsError", "TaskNotFoundError", "TaskFinishedError", "QueueFullError",
        "RuntimeClosedError", "NonRetryableError",
    ]  # fmt: skip
    for name in names:
        assert issubclass(getattr(errors, name), errors.StintError)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_retries": 9}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"max_event_age": -5}, "max_event_age"),
        ({"min_instances": 11}, "min_instances"),
        ({"retry_backoff": -0.1}, "retry_backoff"),
        ({"retry_backoff": 5, "retry_backoff_max": 1}, "retry_backoff_max"),
        ({"kind": "fiber"}, "kind"),
        ({"initializer": 42}, "initializer"),
        ({"max_queued": 0}, "max_queued"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_config_names_the_key_and_range(options: dict[str, Any], key: str) -> None:
    rt = Runtime()
    with pytest.raises(ConfigError, match=key):
        rt.register("fn", echo, **options)
    assert rt.functions == {}


def test_a_blocking_handler_is_refused_for_kind_async() -> None:
    def blocking(event: Any, ctx: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="async def"):
        Runtime().register("fn", blocking)


def test_registration_before_start_and_decorator_returns_the_function() -> None:
    rt = Runtime()

    @rt.function(max_retries=1)
    async def resize(event: Any, ctx: Any) -> None:
        return None

    assert resize.__name__ == "resize" and rt.functions["resize"].config.max_retries == 1
    with pytest.raises(ConfigError, match="already registered"):
        rt.register("resize", resize)
    with pytest.raises(ConfigError, match="name"):
        rt.register("bad name!", resize)
    rt.unregister("resize")
    with pytest.raises(FunctionNotFoundError):
        rt.unregister("resize")


async def test_register_before_start_runs_after_start() -> None:
    rt = Runtime()
    rt.register("echo", echo)
    async with rt:
        record = await rt.wait(await rt.invoke("echo", 5), timeout=5)
        assert record.result == 5


async def test_unknown_function_stores_nothing(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    with pytest.raises(FunctionNotFoundError, match="register it"):
        await rt.invoke("nope")
    assert await rt.list() == []


@pytest.mark.parametrize("payload", [object(), {1, 2}, {"deep": [b"x", object()]}])
async def test_unencodable_payload_stores_nothing(
    make_runtime: RuntimeFactory, payload: Any
) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    with pytest.raises(PayloadError, match="msgpack"):
        await rt.invoke("echo", payload, task_id="t1")
    assert await rt.list() == []
    with pytest.raises(TaskNotFoundError):
        await rt.get("t1")


async def test_oversized_payload_stores_nothing(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime(max_payload_bytes=100)
    rt.register("echo", echo)
    with pytest.raises(PayloadError, match="max_payload_bytes=100"):
        await rt.invoke("echo", "x" * 200)
    assert await rt.list() == []
    assert (await rt.wait(await rt.invoke("echo", "x" * 50), timeout=5)).result == "x" * 50


@pytest.mark.parametrize("bad", ["1abc", "-a", "a b", "a/b", "", "x" * 129, "é", 12])
async def test_invalid_task_ids(make_runtime: RuntimeFactory, bad: Any) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    with pytest.raises(InvalidTaskIdError, match="must start with a letter"):
        await rt.invoke("echo", task_id=bad)
    assert await rt.list() == []


async def test_valid_task_ids(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    for good in ["a", "_x", "Job-1_b", "x" * 128]:
        assert await rt.invoke("echo", task_id=good) == good


async def test_duplicate_task_id_changes_nothing(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    await rt.wait(await rt.invoke("echo", "first", task_id="job"), timeout=5)
    before = (await rt.get("job")).to_dict()
    with pytest.raises(TaskExistsError, match="already exists"):
        await rt.invoke("echo", "second", task_id="job")
    assert (await rt.get("job")).to_dict() == before
    assert len(await rt.list()) == 1


async def test_queue_full(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("fn", gate.handler, max_instances=1, max_queued=2)
    running = await rt.invoke("fn")
    await until_status(rt, running, S.RUNNING)
    await rt.invoke("fn")
    await rt.invoke("fn")
    with pytest.raises(QueueFullError, match="max_queued=2"):
        await rt.invoke("fn", task_id="overflow")
    with pytest.raises(TaskNotFoundError):
        await rt.get("overflow")
    gate.open()


async def test_not_found_for_reads(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    for call in (rt.get, rt.wait, rt.stop):
        with pytest.raises(TaskNotFoundError, match="no task with id"):
            await call("missing")
    with pytest.raises(FunctionNotFoundError):
        await rt.instances("missing")


async def test_closed_and_unstarted_runtimes_refuse_work() -> None:
    rt = Runtime()
    rt.register("echo", echo)
    with pytest.raises(RuntimeClosedError, match="not started"):
        await rt.invoke("echo")
    await rt.start()
    await rt.close()
    with pytest.raises(RuntimeClosedError, match="closed"):
        await rt.invoke("echo")
    with pytest.raises(RuntimeClosedError):
        await rt.start()


async def test_wait_timeout_leaves_the_task_running(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    with pytest.raises(WaitTimeoutError, match=r"rt\.stop"):
        await rt.wait(task_id, timeout=0.02)
    gate.open()
    assert (await rt.wait(task_id, timeout=5)).status is S.SUCCEEDED


async def test_unencodable_result_fails_the_attempt(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def weird(event: Any, ctx: Any) -> Any:
        return object()

    rt.register("weird", weird, max_retries=0)
    record = await rt.wait(await rt.invoke("weird"), timeout=5)
    assert record.status is S.FAILED
    assert record.error is not None and record.error.type == "ResultEncodingError"


async def test_list_filters_newest_first(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("a", echo)

    async def fail(event: Any, ctx: Any) -> None:
        raise ValueError("x")

    rt.register("b", fail, max_retries=0)
    for i in range(3):
        await rt.wait(await rt.invoke("a", i, task_id=f"a{i}"), timeout=5)
    await rt.wait(await rt.invoke("b", task_id="b0"), timeout=5)
    assert [r.task_id for r in await rt.list()] == ["b0", "a2", "a1", "a0"]
    assert [r.task_id for r in await rt.list(function="a", limit=2)] == ["a2", "a1"]
    assert [r.task_id for r in await rt.list(status=S.FAILED)] == ["b0"]
    assert [r.task_id for r in await rt.list(status="Succeeded", prefix="a1")] == ["a1"]
    with pytest.raises(ConfigError, match="unknown status"):
        await rt.list(status="Done")


async def test_record_to_dict_is_json(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    record = await rt.wait(await rt.invoke("echo", {"blob": b"\x00\x01", "n": [1, 2.5]}), timeout=5)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["status"] == "Succeeded" and data["result"]["blob"] == {"base64": "AAE="}
    assert [e["status"] for e in data["events"]] == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    assert set(data) >= {
        "task_id", "function", "status", "payload", "result", "error", "attempts", "retries",
        "created_at", "started_at", "ended_at", "instance_id", "events",
    }  # fmt: skip


async def test_records_are_snapshots(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("fn", gate.handler)
    task_id = await rt.invoke("fn")
    snapshot = await until_status(rt, task_id, S.RUNNING)
    gate.open()
    await rt.wait(task_id, timeout=5)
    assert snapshot.status is S.RUNNING and len(snapshot.events) == 3


async def test_close_lets_running_tasks_finish_and_leaves_nothing() -> None:
    before = asyncio.all_tasks()
    log: list[str] = []

    async def slow(event: Any, ctx: Any) -> str:
        await asyncio.sleep(0.05)
        log.append("finished")
        return "ok"

    def pre_stop(instance: Any) -> None:
        log.append(f"pre_stop {instance.instance_id}")

    rt = Runtime(tick_interval=0.01)
    rt.register("slow", slow, pre_stop=pre_stop, max_instances=2)
    await rt.start()
    ids = [await rt.invoke("slow") for _ in range(2)]
    await until_status(rt, ids[1], S.RUNNING)
    system = rt.actor_system
    waiting = [asyncio.ensure_future(rt.wait(task_id)) for task_id in ids]
    await asyncio.sleep(0)
    await rt.close()
    assert sorted(log) == ["finished", "finished", "pre_stop slow-1", "pre_stop slow-2"]
    assert [(await w).status for w in waiting] == [S.SUCCEEDED, S.SUCCEEDED]
    with pytest.raises(RuntimeClosedError):
        await rt.get(ids[0])  # a closed runtime answers nothing more: its store is closed
    assert asyncio.all_tasks() == before
    assert system is not None and system.live_actors == 0 and not system.failures


async def test_close_interrupts_what_overruns_close_timeout() -> None:
    gate = Gate()

    rt = Runtime(close_timeout=0.05, tick_interval=0.01)
    rt.register("stuck", gate.handler)
    await rt.start()
    task_id = await rt.invoke("stuck")
    waiter = asyncio.ensure_future(rt.wait(task_id))
    await until_status(rt, task_id, S.RUNNING)
    await rt.close()
    assert gate.cancelled == 1
    with pytest.raises(RuntimeClosedError):
        await waiter


async def test_store_url_errors() -> None:
    with pytest.raises(ConfigError, match="unknown store URL"):
        Runtime("postgres://x")
    with pytest.raises(ConfigError, match="max_records"):
        Runtime("memory://?max_records=-1")
    with pytest.raises(ConfigError, match="unknown option"):
        Runtime("memory://?size=3")
    assert isinstance(Runtime("memory://?max_records=5&max_age=10").store.url, str)


def test_errors_are_catchable_by_base_class() -> None:
    assert issubclass(WaitTimeoutError, TimeoutError) and issubclass(WaitTimeoutError, StintError)


async def test_join_waits_until_no_task_is_unfinished(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("fn", gate.handler, max_instances=2)
    rt.register("other", echo)
    ids = [await rt.invoke("fn") for _ in range(3)]
    await rt.join("other", timeout=1)  # nothing unfinished there
    with pytest.raises(WaitTimeoutError, match="unfinished"):
        await rt.join("fn", timeout=0.02)
    joined = asyncio.ensure_future(rt.join())
    await asyncio.sleep(0.01)
    assert not joined.done()
    gate.open()
    await asyncio.wait_for(joined, 5)
    assert {(await rt.get(t)).status for t in ids} == {S.SUCCEEDED}
