"""The memory store's retention: bounded by count and age, never dropping unfinished tasks."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import ManualClock, TaskState
from runtime.errors import TaskNotFoundError
from tests.conftest import RuntimeFactory

from .helpers import Gate, until_status


@pytest.fixture
def store_url() -> str:
    return "memory://"  # these tests are about the memory store


async def echo(event: Any, ctx: Any) -> Any:
    return event


async def test_retention_by_count_drops_the_oldest_finished(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime(store="memory://?max_records=3")
    gate = Gate()

    rt.register("echo", echo)
    rt.register("blocking", gate.handler)
    unfinished = await rt.invoke("blocking", task_id="keep")
    await until_status(rt, unfinished, TaskState.RUNNING)
    for i in range(5):
        await rt.wait(await rt.invoke("echo", i, task_id=f"t{i}"), timeout=5)
    kept = [r.task_id for r in await rt.list(limit=100)]
    assert kept == ["t4", "t3", "t2", "keep"]
    with pytest.raises(TaskNotFoundError):
        await rt.get("t0")
    gate.open()


async def test_retention_by_age(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(store="memory://?max_age=60", clock=clock)
    rt.register("echo", echo)
    await rt.wait(await rt.invoke("echo", task_id="old"), timeout=5)
    clock.advance(30)
    await rt.wait(await rt.invoke("echo", task_id="new"), timeout=5)
    clock.advance(31)  # "old" ended 61 s ago, "new" 31 s ago: the retention timer fires
    assert [r.task_id for r in await rt.list()] == ["new"]
    assert rt.store.evict() == 0  # nothing left to drop


async def test_finished_records_are_invisible_to_the_gc(make_runtime: RuntimeFactory) -> None:
    import gc

    from runtime.stores.memory import MemoryStore

    rt = await make_runtime(store="memory://")
    rt.register("echo", echo)
    ids = [await rt.invoke("echo", {"n": i}) for i in range(200)]
    await rt.join("echo", timeout=5)
    gc.collect()
    store = rt.store
    assert isinstance(store, MemoryStore)
    kept = [store._records[task_id] for task_id in ids]
    assert not any(gc.is_tracked(entry) for entry in kept)  # packed: (str, str, bytes)
    record = await rt.get(ids[7])  # and they read back whole
    assert record.payload == {"n": 7} and record.result == {"n": 7}
    assert [str(e.status) for e in record.events] == [
        "Enqueued",
        "Dequeued",
        "Running",
        "Succeeded",
    ]


def test_record_wire_form_round_trips_and_refuses_garbage() -> None:
    from runtime import codec
    from runtime.record import ErrorInfo, TaskRecord
    from runtime.wire import WireFormatError, pack_record, unpack_record

    record = TaskRecord("t1", "fn", codec.encode([1, b"x"]), 1.5)
    record.error = ErrorInfo("ValueError", "bad", "Traceback ...")
    record.attempts, record.retries = 2, 1
    again = unpack_record(pack_record(record))
    assert again.to_dict() == record.to_dict()
    for garbage in (b"", b"\x93\x01\x02\x03", b"\xc1", pack_record(record)[:-3]):
        with pytest.raises(WireFormatError):
            unpack_record(garbage)
    packed = pack_record(record)
    version_at = packed.index(b"task-record") + len(b"task-record")
    assert packed[version_at] == 2  # the version follows the tag
    newer = packed[:version_at] + b"\x63" + packed[version_at + 1 :]
    with pytest.raises(WireFormatError, match="version 99"):
        unpack_record(newer)
