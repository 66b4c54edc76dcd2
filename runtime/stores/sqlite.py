"""The durable store: SQLite (stdlib ``sqlite3``, WAL), with group commit and crash recovery.

Writes happen on one writer thread with its own connection. The event loop only
marks records dirty (several transitions of one task coalesce into one row
write) and packs them; whatever became dirty while the writer was busy forms the
next transaction, so a burst of invokes shares one commit (one fsync). ``add``
returns a future that completes when the transaction holding that record has
committed: ``invoke`` means "this task will run" once it returns.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from actors import Clock

from ..errors import StoreError, TaskExistsError
from ..listing import Query
from ..record import TaskRecord
from ..states import NAME
from ..wire import pack_record, unpack_record

logger = logging.getLogger("stint")

SCHEMA_VERSION = 1
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
RETENTION_BATCH = 1000
RETENTION_EVERY = 60.0  # seconds between retention passes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq        INTEGER PRIMARY KEY,
    task_id    TEXT    NOT NULL UNIQUE,
    function   TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    ended_at   REAL,
    record     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_function ON tasks (function, seq);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_function_created ON tasks (function, created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_status_created ON tasks (status, created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_end ON tasks (ended_at) WHERE ended_at IS NOT NULL;
"""
_UNFINISHED = ("Enqueued", "Dequeued", "Running", "Retrying", "Stopping")


@dataclass
class _Batch:
    """One transaction's worth of rows; ``adds`` are answered when it commits."""

    rows: list[tuple[str, str, str, float, float | None, bytes, bool]] = field(default_factory=list)
    adds: dict[str, asyncio.Future[None]] = field(default_factory=dict)


class SQLiteStore:
    """Task records in one SQLite file; see docs/stores.md for what survives what."""

    durable = True
    shared = False
    writes_updates = True

    def __init__(
        self,
        path: str,
        clock: Clock,
        *,
        synchronous: str = "FULL",
        max_age: float = DEFAULT_MAX_AGE,
        url: str = "",
    ) -> None:
        self.url = url or f"sqlite:///{path}"
        self.path = path
        self.synchronous = synchronous
        self.max_age = max_age
        self._clock = clock
        self._live: dict[str, TaskRecord] = {}  # unfinished tasks: the freshest copy is here
        self._dirty: dict[str, TaskRecord] = {}  # changed since their last write
        self._writing: dict[str, TaskRecord] = {}  # in the transaction under way
        self._last_error: BaseException | None = None
        self._inserts: dict[str, asyncio.Future[None]] = {}  # adds waiting for their commit
        self._flushing = False
        self._flush_done: asyncio.Future[None] | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._lock_file: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_retention = float("-inf")
        self._closed = False

    # opening and closing -------------------------------------------------------

    async def open(self) -> list[TaskRecord]:
        self._loop = asyncio.get_running_loop()
        self._take_lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stint-sqlite-w")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stint-sqlite-r")
        try:
            await self._in(self._writer, self._prepare)
            rows = await self._in(self._reader, self._read_unfinished)
        except BaseException:
            await self._shutdown_threads()
            self._release_lock()
            raise
        records = [unpack_record(blob) for blob in rows]
        for record in records:
            self._live[record.task_id] = record
        return records

    async def close(self) -> None:
        if self._closed or self._loop is None:
            return
        self._closed = True
        await self.flush()
        await self._shutdown_threads()
        self._release_lock()

    async def ping(self) -> None:
        if self._reader is None:
            raise StoreError(f"the store {self.url} is not open")
        try:
            await self._in(self._reader, self._select_one)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} does not answer: {exc}") from None

    def _select_one(self) -> None:
        self._connection().execute("SELECT 1").fetchone()

    def _take_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
        except OSError as exc:
            raise StoreError(f"cannot open {lock_path} ({exc.strerror}); check the path") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"{self.path} is in use by another runtime ({owner}); two runtimes must not "
                "share one database: give each its own file, or use a redis:// store to share"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    async def _shutdown_threads(self) -> None:
        for pool in (self._writer, self._reader):
            if pool is not None:
                await self._in(pool, self._close_connection)
                pool.shutdown(wait=True)
        self._writer = self._reader = None

    async def _in(self, pool: concurrent.futures.ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(pool, fn, *args)

    # thread side: connections ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def _close_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _prepare(self) -> None:
        """Open (or create) the database and check it; runs on the writer thread."""
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            conn = self._connection()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer stint (schema {version}; this one "
                    f"reads up to {SCHEMA_VERSION}); upgrade stint, or point it at another file"
                )
            if existed:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StoreError(f"{self.path} is corrupt ({check}); restore it from a backup")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._close_connection()
            raise StoreError(
                f"{self.path} is not a usable stint database ({exc}); it was left untouched: "
                "restore it from a backup or point the store at another file"
            ) from None

    def _read_unfinished(self) -> list[bytes]:
        marks = ",".join("?" * len(_UNFINISHED))
        rows = self._connection().execute(
            f"SELECT record FROM tasks WHERE status IN ({marks}) ORDER BY seq", _UNFINISHED
        )
        return [row[0] for row in rows]

    # writes ------------------------------------------------------------------------

    def add(self, record: TaskRecord) -> Awaitable[None]:
        task_id = record.task_id
        if task_id in self._live or task_id in self._dirty or task_id in self._writing:
            raise _exists(task_id)
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._live[task_id] = record
        self._inserts[task_id] = future
        self._mark(record)
        return self._await_insert(task_id, future)

    async def _await_insert(self, task_id: str, future: asyncio.Future[None]) -> None:
        try:
            await future
        except (StoreError, TaskExistsError):
            self._live.pop(task_id, None)  # nothing was stored
            raise

    def update(self, record: TaskRecord) -> None:
        self._mark(record)

    def finished(self, record: TaskRecord) -> None:
        self._live.pop(record.task_id, None)
        self._mark(record)

    def _mark(self, record: TaskRecord) -> None:
        self._dirty[record.task_id] = record
        if not self._flushing:
            self._flushing = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Pack what is dirty (on the loop, where records change) and hand it to the writer.

        One batch is in flight at a time; what changes meanwhile waits for the
        next one. That is the group commit: the busier, the bigger the batches.
        """
        if not self._dirty or self._writer is None:
            self._idle()
            return
        batch = _Batch()
        for task_id, record in self._dirty.items():
            inserting = task_id in self._inserts
            status = NAME[record.status]
            blob = pack_record(record)
            row = (
                task_id,
                record.function,
                status,
                record.created_at,
                record.ended_at,
                blob,
                inserting,
            )
            batch.rows.append(row)
            if inserting:
                batch.adds[task_id] = self._inserts.pop(task_id)
        self._writing, self._dirty = self._dirty, {}
        future = asyncio.wrap_future(self._writer.submit(self._write, batch.rows))
        future.add_done_callback(lambda done: self._committed(done, batch))

    def _committed(self, done: asyncio.Future[set[str]], batch: _Batch) -> None:
        error = done.exception()
        if error is None:
            self._last_error = None
            conflicts = done.result()
            for task_id, future in batch.adds.items():
                if future.done():
                    continue
                if task_id in conflicts:
                    future.set_exception(_exists(task_id))
                else:
                    future.set_result(None)
        else:
            self._write_failed(error, batch)
        self._writing = {}
        if self._dirty and self._writer is not None and error is None:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        else:
            self._idle()

    def _write_failed(self, error: BaseException, batch: _Batch) -> None:
        self._last_error = error
        logger.error("stint sqlite store: a write failed: %r", error)
        for task_id, future in batch.adds.items():  # those invokes fail: nothing was stored
            if not future.done():
                future.set_exception(
                    StoreError(f"could not store task {task_id} in {self.path}: {error}")
                )
        for task_id, record in self._writing.items():  # later changes are kept, and retried
            if task_id not in batch.adds:
                self._dirty.setdefault(task_id, record)

    def _idle(self) -> None:
        self._flushing = False
        waiter = self._flush_done
        if waiter is not None and not waiter.done():
            if self._last_error is not None and self._dirty:
                waiter.set_exception(StoreError(f"writes to {self.path} fail: {self._last_error}"))
            else:
                waiter.set_result(None)

    def _write(
        self, rows: list[tuple[str, str, str, float, float | None, bytes, bool]]
    ) -> set[str]:
        """One transaction for the whole batch; returns the ids whose insert hit a duplicate."""
        conn = self._connection()
        conflicts: set[str] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for task_id, function, status, created_at, ended_at, blob, inserting in rows:
                if inserting:
                    cursor = conn.execute(
                        "INSERT INTO tasks (task_id, function, status, created_at, ended_at,"
                        " record) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
                        (task_id, function, status, created_at, ended_at, blob),
                    )
                    if cursor.rowcount == 0:
                        conflicts.add(task_id)
                else:
                    conn.execute(
                        "UPDATE tasks SET status = ?, ended_at = ?, record = ? WHERE task_id = ?",
                        (status, ended_at, blob, task_id),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conflicts

    async def flush(self) -> None:
        """Wait until everything changed so far is committed (raises if writes keep failing)."""
        assert self._loop is not None
        while self._dirty or self._writing:
            self._flush_done = self._loop.create_future()
            if not self._flushing:
                self._flushing = True
                self._loop.call_soon(self._flush)
            await self._flush_done

    # reads ---------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        found = self._live.get(task_id) or self._dirty.get(task_id) or self._writing.get(task_id)
        if found is not None:
            return found
        if self._reader is None:
            return None
        blob = await self._in(self._reader, self._read_one, task_id)
        return None if blob is None else unpack_record(blob)

    def _read_one(self, task_id: str) -> bytes | None:
        row = (
            self._connection()
            .execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    async def list(self, query: Query) -> builtins.list[TaskRecord]:
        """Up to ``query.limit + 1`` matching records, in the query's order.

        Records not written yet are newer than their rows on disk: they are merged in
        from memory, and win over the rows they replace.
        """
        fresh = {**self._writing, **self._dirty, **self._live}
        wanted = [
            r
            for r in fresh.values()
            if query.matches(r) and query.after_start((r.created_at, r.task_id))
        ]
        rows: builtins.list[bytes] = []
        if self._reader is not None:
            rows = await self._in(
                self._reader, self._read_page, query, query.limit + 1 + len(fresh)
            )
        on_disk = [unpack_record(blob) for blob in rows]
        result = wanted + [r for r in on_disk if r.task_id not in fresh]
        result.sort(key=lambda r: (r.created_at, r.task_id), reverse=query.descending)
        return result[: query.limit + 1]

    def _read_page(self, query: Query, limit: int) -> builtins.list[bytes]:
        where: builtins.list[str] = []
        args: builtins.list[object] = []
        if query.function is not None:
            where.append("function = ?")
            args.append(query.function)
        if query.status is not None:
            where.append("status = ?")
            args.append(query.status)
        if query.prefix is not None:
            where.append("substr(task_id, 1, ?) = ?")
            args += [len(query.prefix), query.prefix]
        if query.created_after is not None:
            where.append("created_at > ?")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at < ?")
            args.append(query.created_before)
        direction, beyond = ("DESC", "<") if query.descending else ("ASC", ">")
        if query.start_after is not None:
            created_at, task_id = query.start_after
            where.append(f"(created_at, task_id) {beyond} (?, ?)")
            args += [created_at, task_id]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._connection().execute(
            f"SELECT record FROM tasks {clause} "
            f"ORDER BY created_at {direction}, task_id {direction} LIMIT ?",
            (*args, limit),
        )
        return [bytes(row[0]) for row in rows]

    # retention -----------------------------------------------------------------------

    def evict(self) -> int:
        """Start a background retention pass if one is due; returns 0 (it is asynchronous)."""
        now = self._clock.monotonic()
        if self._writer is None or now - self._last_retention < RETENTION_EVERY:
            return 0
        self._last_retention = now
        horizon = self._clock.time() - self.max_age
        self._writer.submit(self._retain, horizon)
        return 0

    async def retain_now(self) -> int:
        """Delete finished records older than ``max_age`` now; returns how many went."""
        assert self._writer is not None
        deleted: int = await self._in(self._writer, self._retain, self._clock.time() - self.max_age)
        return deleted

    def _retain(self, horizon: float) -> int:
        """Delete in bounded batches, each its own short transaction, so writers never wait long."""
        conn = self._connection()
        total = 0
        while True:
            cursor = conn.execute(
                "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE ended_at IS NOT NULL"
                " AND ended_at < ? LIMIT ?)",
                (horizon, RETENTION_BATCH),
            )
            total += cursor.rowcount
            if cursor.rowcount < RETENTION_BATCH:
                return total


def _exists(task_id: str) -> TaskExistsError:
    return TaskExistsError(
        f"a task with id {task_id!r} already exists; pick another id, or omit task_id to get "
        "a generated one"
    )
