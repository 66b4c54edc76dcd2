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

from ..errors import StoreError, TaskExistsError, TaskNotFoundError
from ..listing import Query
from ..record import TaskRecord
from ..states import NAME
from . import sqlite_rows as sql
from .sqlite_rows import SCHEMA, SCHEMA_VERSION, Bad, RowOut, from_row, row_out, runnable

logger = logging.getLogger("stint")

__all__ = ["DEFAULT_MAX_AGE", "SCHEMA_VERSION", "SQLiteStore"]

DEFAULT_MAX_AGE = 7 * 24 * 3600.0
RETENTION_BATCH = 1000
RETENTION_EVERY = 60.0  # seconds between retention passes


@dataclass
class _Batch:
    """One transaction's worth of rows; ``adds`` are answered when it commits."""

    rows: list[RowOut] = field(default_factory=list)
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
        #: Rows this store moved to the quarantine table (damaged or inconsistent records).
        self.quarantined = 0
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
        """Lock the file, check it, and return the unfinished records to recover.

        Whatever fails on the way (a locked, corrupt or newer file, a read error),
        the lock and both threads are released before the error propagates.
        """
        self._loop = asyncio.get_running_loop()
        self._take_lock()
        try:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="stint-sqlite-w"
            )
            self._reader = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="stint-sqlite-r"
            )
            await self._in(self._writer, self._prepare)
            records = await self._recoverable()
        except BaseException:
            await self._shutdown_threads()
            self._release_lock()
            raise
        for record in records:
            self._live[record.task_id] = record
        return records

    async def _recoverable(self) -> list[TaskRecord]:
        """The unfinished records; any row that cannot be run as it stands is quarantined."""
        assert self._reader is not None
        rows = await self._read(sql.read_unfinished)
        records: list[TaskRecord] = []
        bad: list[Bad] = []
        for row in rows:
            read = from_row(row)
            if isinstance(read, TaskRecord):
                read = runnable(read)
            if isinstance(read, TaskRecord):
                records.append(read)
            else:
                bad.append((row, read))
        if bad:
            await self._quarantine(bad)
        return records

    async def close(self) -> None:
        """Write what is left, then release the threads and the lock — always.

        If the last writes fail (a full disk), what was not written is logged at
        ERROR with the real error; those tasks are recovered from their last
        written state on the next start.
        """
        if self._closed or self._loop is None:
            return
        self._closed = True
        try:
            await self.flush()
        except StoreError as exc:
            self._log_unwritten(exc)
        finally:
            await self._shutdown_threads()
            self._release_lock()

    def _log_unwritten(self, error: StoreError) -> None:
        lost = sorted({**self._writing, **self._dirty}.items())
        shown = ", ".join(f"{task_id} ({NAME[r.status]})" for task_id, r in lost[:20])
        more = f" and {len(lost) - 20} more" if len(lost) > 20 else ""
        logger.error(
            "stint sqlite store: closed with %d task change(s) not written to %s: %s%s. "
            "Cause: %s. Those tasks restart from their last written state on the next start; "
            "free disk space (or fix the cause) before then",
            len(lost),
            self.path,
            shown,
            more,
            error,
        )

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
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None

    async def _shutdown_threads(self) -> None:
        """Close each thread's connection and end the thread; never raises (but cancellation)."""
        pools, self._writer, self._reader = (self._writer, self._reader), None, None
        for pool in pools:
            if pool is None:
                continue
            try:
                await self._in(pool, self._close_connection)
            except sqlite3.Error as exc:
                logger.error("stint sqlite store: closing %s failed: %r", self.path, exc)
            finally:
                pool.shutdown(wait=True)

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
            self._local.conn = None
            conn.close()

    def _on_conn(self, fn: Any, *args: Any) -> Any:
        """Call ``fn(connection, *args)`` with this thread's connection."""
        return fn(self._connection(), *args)

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
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._close_connection()
            raise StoreError(
                f"{self.path} is not a usable stint database ({exc}); it was left untouched: "
                "restore it from a backup or point the store at another file"
            ) from None

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
        A record that cannot be packed is left out (and reported), never the batch.
        """
        if self._writer is None:  # closed: nothing can be stored any more
            self._fail_inserts("the store is closed")
        if not self._dirty or self._writer is None:
            self._idle()
            return
        batch = _Batch()
        dirty, self._dirty = self._dirty, {}
        unwritable: list[str] = []
        for task_id, record in dirty.items():
            try:
                row = row_out(record, inserting=task_id in self._inserts)
            except Exception as exc:  # one record's fault: the others are written anyway
                self._unwritable(record, exc)
                unwritable.append(task_id)
                continue
            batch.rows.append(row)
            if row[-1]:
                batch.adds[task_id] = self._inserts.pop(task_id)
        for task_id in unwritable:
            del dirty[task_id]
        self._writing = dirty
        if not batch.rows:
            self._idle()
            return
        future = asyncio.wrap_future(self._writer.submit(self._on_conn, sql.write, batch.rows))
        future.add_done_callback(lambda done: self._committed(done, batch))

    def _unwritable(self, record: TaskRecord, error: Exception) -> None:
        task_id = record.task_id
        logger.error(
            "stint sqlite store: task %s (%s) cannot be written to %s and keeps its last "
            "written state there: %r",
            task_id,
            NAME.get(record.status, record.status),
            self.path,
            error,
        )
        future = self._inserts.pop(task_id, None)
        if future is not None and not future.done():
            future.set_exception(
                StoreError(f"could not store task {task_id}: its record cannot be packed ({error})")
            )

    def _fail_inserts(self, why: str) -> None:
        inserts, self._inserts = self._inserts, {}
        for task_id, future in inserts.items():
            if not future.done():
                future.set_exception(StoreError(f"could not store task {task_id}: {why}"))

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
        logger.error("stint sqlite store: a write to %s failed: %r", self.path, error)
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

    async def flush(self) -> None:
        """Wait until everything changed so far is committed (raises if writes keep failing)."""
        assert self._loop is not None
        while self._dirty or self._writing:
            self._flush_done = self._loop.create_future()
            if not self._flushing:
                self._flushing = True
                self._loop.call_soon(self._flush)
            await self._flush_done

    # quarantine ----------------------------------------------------------------------

    async def _quarantine(self, bad: builtins.list[Bad]) -> int:
        """Move rows that cannot be read to the quarantine table (on the writer thread).

        Returns how many moved; a row that changed since it was read stays. A
        failure to move is logged, not raised: the rows are skipped either way.
        """
        if self._writer is None:
            return 0
        try:
            moved: builtins.list[Bad] = await self._in(
                self._writer, self._on_conn, sql.quarantine, bad, self._clock.time()
            )
        except sqlite3.Error as exc:
            logger.error(
                "stint sqlite store: could not quarantine %d damaged row(s) of %s (%r); they "
                "are skipped",
                len(bad),
                self.path,
                exc,
            )
            return 0
        for row, reason in moved:
            logger.warning(
                "stint sqlite store: task %r quarantined: %s; its row was moved to the "
                "quarantine table of %s and is skipped from now on",
                row[1],
                reason,
                self.path,
            )
        self.quarantined += len(moved)
        return len(moved)

    def _quarantined_error(self, task_id: str, reason: str) -> TaskNotFoundError:
        return TaskNotFoundError(
            f"task {task_id!r} was quarantined: its stored record is damaged ({reason}). Its row "
            f"is kept in the quarantine table of {self.path} for inspection; invoke it again if "
            "the work must still be done"
        )

    # reads ---------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None if unknown; raises ``TaskNotFoundError`` if it was quarantined."""
        found = self._live.get(task_id) or self._dirty.get(task_id) or self._writing.get(task_id)
        if found is not None:
            return found
        if self._reader is None:
            return None
        row = await self._read(sql.read_one, task_id)
        if isinstance(row, str):  # no such row: say so, or why it is gone
            raise self._quarantined_error(task_id, row)
        if row is None:
            return None
        read = from_row(row)
        if isinstance(read, str):
            await self._quarantine([(row, read)])
            raise self._quarantined_error(task_id, read)
        return read

    async def _read(self, fn: Any, *args: Any) -> Any:
        """``fn(connection, *args)`` on the reader thread; a database error is a StoreError."""
        assert self._reader is not None
        try:
            return await self._in(self._reader, self._on_conn, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(
                f"reading {self.path} failed ({exc}); check the file and the disk"
            ) from None

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
        on_disk: builtins.list[TaskRecord] = []
        if self._reader is not None:
            on_disk = await self._list_disk(query, query.limit + 1 + len(fresh), fresh)
        result = wanted + on_disk
        result.sort(key=lambda r: (r.created_at, r.task_id), reverse=query.descending)
        return result[: query.limit + 1]

    async def _list_disk(
        self, query: Query, limit: int, fresh: dict[str, TaskRecord]
    ) -> builtins.list[TaskRecord]:
        """Matching records on disk that are not in ``fresh``; bad rows are quarantined."""
        while True:
            rows = await self._read(sql.read_page, query, limit)
            records: builtins.list[TaskRecord] = []
            bad: builtins.list[Bad] = []
            for row in rows:
                if row[1] in fresh:  # newer in memory (and its row is rewritten soon)
                    continue
                read = from_row(row)
                if isinstance(read, TaskRecord):
                    records.append(read)
                else:
                    bad.append((row, read))
            # Once the bad rows are moved aside, read again so they do not eat into limit.
            if not bad or not await self._quarantine(bad):
                return records

    # retention -----------------------------------------------------------------------

    def evict(self) -> int:
        """Start a background retention pass if one is due; returns 0 (it is asynchronous)."""
        now = self._clock.monotonic()
        if self._writer is None or now - self._last_retention < RETENTION_EVERY:
            return 0
        self._last_retention = now
        horizon = self._clock.time() - self.max_age
        self._writer.submit(self._retain, horizon).add_done_callback(self._retained)
        return 0

    def _retained(self, done: concurrent.futures.Future[int]) -> None:
        error = done.exception()
        if error is not None:  # runs on the writer thread: logging is thread-safe
            logger.error("stint sqlite store: retention on %s failed: %r", self.path, error)

    async def retain_now(self) -> int:
        """Delete finished records older than ``max_age`` now; returns how many went."""
        assert self._writer is not None
        deleted: int = await self._in(self._writer, self._retain, self._clock.time() - self.max_age)
        return deleted

    def _retain(self, horizon: float) -> int:
        return sql.retain(self._connection(), horizon, RETENTION_BATCH)


def _exists(task_id: str) -> TaskExistsError:
    return TaskExistsError(
        f"a task with id {task_id!r} already exists; pick another id, or omit task_id to get "
        "a generated one"
    )
