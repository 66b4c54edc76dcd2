"""The SQLite store: durability, crash recovery, locking, versions, corruption, retention."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from actors import ManualClock
from runtime import ConfigError, Runtime, TaskExistsError, TaskNotFoundError, TaskState, codec
from runtime.errors import StoreError
from runtime.record import TaskRecord
from runtime.stores.sqlite import SQLiteStore

from .helpers import list_all

ROOT = pathlib.Path(__file__).resolve().parents[2]
S = TaskState


async def echo(event: Any, ctx: Any) -> Any:
    return event


def url(path: pathlib.Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


def rows(path: pathlib.Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT task_id, status FROM tasks"))


async def test_invoke_returns_only_once_the_record_is_committed(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    async with Runtime(store=url(db)) as rt:
        gate = asyncio.Event()

        async def blocked(event: Any, ctx: Any) -> None:
            await gate.wait()

        rt.register("blocked", blocked)
        task_id = await rt.invoke("blocked", task_id="job-1")
        assert rows(db) == {"job-1": "Enqueued"}  # another connection sees it at once
        gate.set()
        await rt.wait(task_id, timeout=5)
    assert rows(db) == {"job-1": "Succeeded"}


async def test_records_and_events_survive_a_restart(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    async with Runtime(store=url(db)) as rt:
        rt.register("echo", echo)
        first = await rt.wait(await rt.invoke("echo", {"k": b"v"}, task_id="a1"), timeout=5)
    async with Runtime(store=url(db)) as rt:
        rt.register("echo", echo)
        again = await rt.get("a1")
        assert again.to_dict() == first.to_dict()
        await rt.wait(await rt.invoke("echo", 2, task_id="a2"), timeout=5)
        assert [r.task_id for r in await rt.list()] == ["a2", "a1"]
        assert [r.task_id for r in await rt.list(status=S.SUCCEEDED, prefix="a1")] == ["a1"]
        with pytest.raises(TaskExistsError):
            await rt.invoke("echo", task_id="a1")  # on disk only, still taken


async def seed(db: pathlib.Path, states: dict[str, TaskState]) -> None:
    """Write records as a crashed runtime would have left them."""
    store = SQLiteStore(str(db), ManualClock())
    await store.open()
    for task_id, state in states.items():
        record = TaskRecord(task_id, "work", codec.encode(task_id), time.time())
        await store.add(record)
        record.status = state
        record._events.append((str(state), time.time(), "before the crash"))
        if state in (S.RUNNING, S.RETRYING):
            record.attempts = 1
            record.started_at = time.time()
        if state is S.RETRYING:
            record.retries = 1
        store.update(record)
    await store.close()


async def test_recovery_rules(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    await seed(
        db,
        {
            "enq": S.ENQUEUED, "deq": S.DEQUEUED, "run": S.RUNNING, "retry": S.RETRYING,
            "stopping": S.STOPPING,
        },
    )  # fmt: skip
    seen: list[str] = []

    async def work(event: Any, ctx: Any) -> Any:
        seen.append(ctx.task_id)
        return event

    async with Runtime(store=url(db)) as rt:
        rt.register("work", work, retry_backoff=0)
        await rt.join(timeout=5)
        records = {r.task_id: r for r in await rt.list()}
    assert {k: r.status for k, r in records.items()} == {
        "enq": S.SUCCEEDED, "deq": S.SUCCEEDED, "run": S.SUCCEEDED, "retry": S.SUCCEEDED,
        "stopping": S.STOPPED,
    }  # fmt: skip
    run = records["run"]
    assert next(e.detail for e in run.events if "restart" in e.detail).startswith("recovered")
    assert run.error is not None and run.error.message == "runtime restarted during attempt"
    assert (run.attempts, run.retries) == (2, 1)
    assert [str(e.status) for e in run.events][-4:] == [
        "Running",
        "Retrying",
        "Running",
        "Succeeded",
    ]
    assert any("queued again" in e.detail for e in records["deq"].events)
    assert records["retry"].attempts == 2 and "stopping" not in seen


async def test_a_lost_attempt_with_no_retries_left_fails(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    await seed(db, {"run": S.RUNNING})
    async with Runtime(store=url(db)) as rt:
        rt.register("work", echo, max_retries=0)
        record = await rt.wait("run", timeout=5)
    assert (
        record.status is S.FAILED and "runtime restarted during attempt" in record.events[-1].detail
    )


async def test_tasks_of_unregistered_functions_wait_for_them(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    await seed(db, {"enq": S.ENQUEUED})
    async with Runtime(store=url(db)) as rt:
        assert (await rt.get("enq")).status is S.ENQUEUED  # nobody to run it: left alone
    rt = Runtime(store=url(db))
    rt.register("work", echo)  # registered before start
    async with rt:
        assert (await rt.wait("enq", timeout=5)).status is S.SUCCEEDED


async def test_two_runtimes_cannot_share_a_file(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    async with Runtime(store=url(db)):
        second = Runtime(store=url(db))
        with pytest.raises(StoreError, match="in use by another runtime"):
            await second.start()
    async with Runtime(store=url(db)):  # free again once the first closed
        pass


async def test_a_newer_schema_is_refused(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer stint"):
        await Runtime(store=url(db)).start()


async def test_a_corrupt_file_is_reported_and_left_alone(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    garbage = b"this is not a database" * 100
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a usable stint database"):
        await Runtime(store=url(db)).start()
    assert db.read_bytes() == garbage


async def test_retention_deletes_old_finished_records_in_batches(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.stores.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "RETENTION_BATCH", 7)  # 30 records: five batches
    db = tmp_path / "t.db"
    clock = ManualClock(start=time.time())
    async with Runtime(store=url(db, "?max_age=60"), clock=clock) as rt:
        rt.register("echo", echo)
        gate = asyncio.Event()

        async def blocked(event: Any, ctx: Any) -> None:
            await gate.wait()

        rt.register("blocked", blocked, timeout=1000)
        keep = await rt.invoke("blocked")
        for i in range(30):
            await rt.invoke("echo", i, task_id=f"old{i}")
        await rt.join("echo", timeout=5)
        await rt.store.flush()  # type: ignore[attr-defined]
        assert len(rows(db)) == 31
        clock.advance(61)  # the runtime's retention timer starts a pass in the background
        await rt.store.retain_now()  # type: ignore[attr-defined]
        assert list(rows(db)) == [keep]
        with pytest.raises(TaskNotFoundError):
            await rt.get("old3")
        assert (await rt.get(keep)).status is S.RUNNING  # unfinished: never dropped
        gate.set()


def test_store_urls() -> None:
    with pytest.raises(ConfigError, match="names no file"):
        Runtime("sqlite://")
    with pytest.raises(ConfigError, match="synchronous"):
        Runtime("sqlite:///x.db?synchronous=off")
    store = Runtime("sqlite:///x.db?synchronous=normal").store
    assert isinstance(store, SQLiteStore) and store.path == "x.db" and store.synchronous == "NORMAL"
    absolute = Runtime("sqlite:////tmp/y.db").store
    assert isinstance(absolute, SQLiteStore) and absolute.path == "/tmp/y.db"


async def wait_for_lines(path: pathlib.Path, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never reached {count} lines")


@pytest.mark.realtime
async def test_sigkill_mid_run_loses_no_accepted_task(tmp_path: pathlib.Path) -> None:
    db, accepted, executed = tmp_path / "t.db", tmp_path / "accepted", tmp_path / "executed"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.runtime.crash_child",
            str(db),
            str(accepted),
            str(executed),
            "10000",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    with child:
        try:
            await wait_for_lines(executed, 1500, child)  # well into the run
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        on_disk = dict(conn.execute("SELECT task_id, status FROM tasks"))
    accepted_ids = set(accepted.read_text().split())
    assert len(accepted_ids) >= 1500
    assert accepted_ids <= set(on_disk)  # every accepted task was durable
    succeeded_before = {t for t, status in on_disk.items() if status == "Succeeded"}
    assert 0 < len(succeeded_before) < len(on_disk)  # killed mid-run

    rerun: list[str] = []

    async def work(event: Any, ctx: Any) -> Any:
        rerun.append(ctx.task_id)
        return event

    async with Runtime(store=url(db)) as rt:
        rt.register("work", work, concurrency=100, max_instances=4)
        await rt.join(timeout=60)
        final = {r.task_id: r.status for r in await list_all(rt)}
    assert all(final[t] is S.SUCCEEDED for t in accepted_ids)
    assert not succeeded_before & set(rerun)  # nothing already Succeeded ran again
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not os.path.exists(str(db) + "-journal")
