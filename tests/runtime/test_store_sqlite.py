"""The SQLite store: durability, crash recovery, locking, versions, corruption, retention,
damaged rows and failing writes (and the memory store's side of those two)."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from actors import ManualClock
from runtime import ConfigError, Runtime, TaskExistsError, TaskNotFoundError, TaskState, codec
from runtime.errors import StoreError
from runtime.record import TaskRecord
from runtime.stores.sqlite import SQLiteStore
from runtime.wire import pack_record

from .helpers import list_all, until_status

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


# damaged rows, unpackable records, full disks, failed starts (issue 8) -----------------


def stint_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("stint-sqlite")]


def quarantine(path: pathlib.Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT task_id, reason FROM quarantine"))


def finished_blob(task_id: str, state: TaskState) -> bytes:
    record = TaskRecord(task_id, "work", codec.encode(task_id), time.time())
    record.status = state
    return pack_record(record)


def quarantine_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "quarantined" in r.getMessage()
    ]


async def test_damaged_rows_are_quarantined_on_start_and_the_rest_recovers(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    await seed(db, {"good": S.ENQUEUED, "garbled": S.ENQUEUED, "liar": S.RUNNING})
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tasks SET record = ? WHERE task_id = 'garbled'", (b"\x93garbage",))
        # its status column says Running, its record says Succeeded: adopted, it would
        # be a task that never finishes
        conn.execute(
            "UPDATE tasks SET record = ? WHERE task_id = 'liar'",
            (finished_blob("liar", S.SUCCEEDED),),
        )
    async with Runtime(store=url(db)) as rt:
        rt.register("work", echo)
        assert (await rt.wait("good", timeout=5)).status is S.SUCCEEDED
        await rt.join(timeout=5)  # nothing else was adopted
        for task_id in ("garbled", "liar"):
            with pytest.raises(TaskNotFoundError, match="was quarantined"):
                await rt.get(task_id)
        assert [r.task_id for r in await rt.list()] == ["good"]
        assert rt.store.quarantined == 2  # type: ignore[attr-defined]
    reasons = quarantine(db)
    assert set(reasons) == {"garbled", "liar"}
    assert "disagree" in reasons["liar"] and "'Running'" in reasons["liar"]
    assert rows(db) == {"good": "Succeeded"}
    assert len(quarantine_warnings(caplog)) == 2  # once each
    async with Runtime(store=url(db)) as rt:  # and the next start is clean
        rt.register("work", echo)
        assert rt.store.quarantined == 0  # type: ignore[attr-defined]
        again = await rt.wait(await rt.invoke("work", "again", task_id="garbled"), timeout=5)
        assert again.result == "again"  # a quarantined id is free again


async def test_a_recovered_task_whose_payload_cannot_decode_is_quarantined(
    tmp_path: pathlib.Path,
) -> None:
    db = tmp_path / "t.db"
    await seed(db, {"enq": S.ENQUEUED})
    record = TaskRecord("enq", "work", b"\xc1", time.time())  # 0xc1: never valid msgpack
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tasks SET record = ? WHERE task_id = 'enq'", (pack_record(record),))
    async with Runtime(store=url(db)) as rt:
        rt.register("work", echo)
        await rt.join(timeout=5)
    assert "payload does not decode" in quarantine(db)["enq"]


async def test_get_and_list_skip_damaged_rows(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    async with Runtime(store=url(db)) as rt:
        rt.register("echo", echo)
        for i in range(6):
            await rt.wait(await rt.invoke("echo", i, task_id=f"t{i}"), timeout=5)
        await rt.store.flush()  # type: ignore[attr-defined]
        with sqlite3.connect(db) as conn:  # damaged behind the runtime's back
            conn.execute("UPDATE tasks SET record = x'00' WHERE task_id = 't4'")
            conn.execute("UPDATE tasks SET record = ? WHERE task_id = 't1'", (b"\xc1" * 3,))
            conn.execute("UPDATE tasks SET status = 'Failed' WHERE task_id = 't2'")
        # the damaged rows are moved aside and do not eat into the limit
        assert [r.task_id for r in await rt.list(limit=3)] == ["t5", "t3", "t0"]
        assert [r.task_id for r in await rt.list(status=S.FAILED)] == []
        with pytest.raises(TaskNotFoundError, match="was quarantined"):
            await rt.get("t4")
        assert rt.store.quarantined == 3  # type: ignore[attr-defined]
    assert set(quarantine(db)) == {"t1", "t2", "t4"}
    assert len(quarantine_warnings(caplog)) == 3


async def test_the_memory_store_drops_a_packed_record_that_does_not_unpack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runtime.stores.memory import MemoryStore

    async with Runtime() as rt:
        rt.register("echo", echo)
        for i in range(3):
            await rt.wait(await rt.invoke("echo", i, task_id=f"t{i}"), timeout=5)
        store = rt.store
        assert isinstance(store, MemoryStore)
        created = {r.task_id: r.created_at for r in await rt.list()}
        damaged = b"\x00"  # it would be a bug
        store._records["t1"] = ("echo", "Succeeded", created["t1"], damaged)
        assert [r.task_id for r in await rt.list()] == ["t2", "t0"]
        store._records["t0"] = ("echo", "Succeeded", created["t0"], damaged)
        with pytest.raises(TaskNotFoundError, match="was quarantined"):
            await rt.get("t0")
        assert store.quarantined == 2 and len(quarantine_warnings(caplog)) == 2


async def test_a_failed_start_releases_the_file(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    await seed(db, {"enq": S.ENQUEUED})
    with socket.socket() as busy:  # start fails after the store opened: the port is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rt = Runtime(store=url(db), metrics_port=busy.getsockname()[1])
        rt.register("work", echo)
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            await rt.start()
    assert not rt.started and stint_threads() == []
    async with Runtime(store=url(db)) as again:  # same process, same file: free
        again.register("work", echo)
        assert (await again.wait("enq", timeout=5)).status is S.SUCCEEDED


async def test_a_read_error_on_open_releases_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.stores import sqlite_rows

    db = tmp_path / "t.db"

    def broken(conn: sqlite3.Connection) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_rows, "read_unfinished", broken)
    with pytest.raises(StoreError, match="disk I/O error"):
        await Runtime(store=url(db)).start()
    assert stint_threads() == []
    monkeypatch.undo()
    async with Runtime(store=url(db)):
        pass


async def test_a_record_that_cannot_be_packed_is_left_out_not_the_batch(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    store = SQLiteStore(str(db), ManualClock())
    await store.open()
    bad = TaskRecord("bad", "work", codec.encode(1), 1.0)
    bad.attempts = 2**70  # msgpack cannot pack it
    good = TaskRecord("good", "work", codec.encode(2), 1.0)
    async with asyncio.timeout(5):
        results = await asyncio.gather(store.add(bad), store.add(good), return_exceptions=True)
        assert isinstance(results[0], StoreError) and "cannot be packed" in str(results[0])
        assert results[1] is None
        assert "task bad (Enqueued) cannot be written" in caplog.text
        # an update that cannot be packed is reported; the record's row keeps its last state
        good.retries = -(2**70)
        store.update(good)
        await store.flush()
        good.retries = 0
        good.status = S.SUCCEEDED
        store.finished(good)
        await store.close()
    assert rows(db) == {"good": "Succeeded"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_finished_record_that_cannot_be_packed_wakes_its_waiters(
    kind: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.stores.memory as memory_store
    from runtime.stores import sqlite_rows

    module: Any = memory_store if kind == "memory" else sqlite_rows

    def pack(record: TaskRecord) -> bytes:
        if record.task_id == "bad" and record.is_terminal:
            raise TypeError("an absurd field")
        return pack_record(record)

    monkeypatch.setattr(module, "pack_record", pack)
    store = "memory://" if kind == "memory" else url(tmp_path / "t.db")
    async with Runtime(store=store) as rt, asyncio.timeout(5):
        rt.register("echo", echo)
        assert (await rt.wait(await rt.invoke("echo", 1, task_id="bad"))).status is S.SUCCEEDED
        assert (await rt.wait(await rt.invoke("echo", 2, task_id="good"))).result == 2
        assert rt.actor_system is not None and not rt.actor_system.failures


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_error_message_with_a_lone_surrogate_is_stored(
    kind: str, tmp_path: pathlib.Path
) -> None:
    async def bad_name(event: Any, ctx: Any) -> None:
        raise FileNotFoundError(os.fsdecode(b"no such file: \xff"))  # '\udcff'

    store = "memory://" if kind == "memory" else url(tmp_path / "t.db")
    async with Runtime(store=store) as rt, asyncio.timeout(5):
        rt.register("bad", bad_name, max_retries=0)
        record = await rt.wait(await rt.invoke("bad", task_id="b"))
        assert record.error is not None and record.error.message == "no such file: \udcff"
        if kind == "sqlite":
            await rt.store.flush()  # type: ignore[attr-defined]
        stored = await rt.get("b")
        assert stored.status is S.FAILED and stored.error is not None
        assert stored.error.message == "no such file: \\udcff"  # escaped, readable


async def cap_pages(store: Any) -> None:
    """Make the store's writer connection's file full: no page may be added to it."""

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._in(store._writer, store._on_conn, cap)


async def test_a_full_disk_reports_the_real_error(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    async with Runtime(store=url(db)) as rt:
        rt.register("echo", echo)
        await rt.wait(await rt.invoke("echo", 1), timeout=5)
        await cap_pages(rt.store)
        with pytest.raises(StoreError, match="database or disk is full"):
            await rt.invoke("echo", b"x" * 100_000, task_id="big")
        assert "cannot rollback" not in caplog.text
        with pytest.raises(TaskNotFoundError):
            await rt.get("big")  # nothing was stored


async def test_close_on_a_full_disk_finishes_and_says_what_was_not_written(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    gate = asyncio.Event()

    async def big(event: Any, ctx: Any) -> bytes:
        await gate.wait()
        return b"x" * 100_000  # the record grows: its write needs new pages

    rt = Runtime(store=url(db))
    rt.register("big", big)
    await rt.start()
    await rt.invoke("big", task_id="stuck")
    await until_status(rt, "stuck", S.RUNNING)
    await rt.store.flush()  # type: ignore[attr-defined]
    await cap_pages(rt.store)
    gate.set()
    await rt.wait("stuck", timeout=5)
    async with asyncio.timeout(10):
        await rt.close()
    assert not rt.started and stint_threads() == []
    assert "1 task change(s) not written" in caplog.text
    assert "stuck (Succeeded)" in caplog.text and "database or disk is full" in caplog.text
    assert rows(db) == {"stuck": "Running"}  # its last written state
    async with Runtime(store=url(db)) as again:  # the lock is free; the task runs again
        again.register("big", echo)
        assert (await again.wait("stuck", timeout=5)).status is S.SUCCEEDED
