"""What the SQLite store keeps on disk: the schema, the SQL it runs, and how it judges a row.

The functions taking a connection run on the store's threads; the others run on
the event loop. A row read back is untrusted (the file may be damaged or edited):
:func:`from_row` either returns its record or says why it cannot be trusted, and
such a row is moved to the ``quarantine`` table rather than read again.
"""

from __future__ import annotations

import builtins
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any, cast

from .. import codec
from ..errors import PayloadError
from ..listing import Query
from ..record import TaskRecord
from ..states import NAME
from ..wire import WireFormatError, pack_record, unpack_record

SCHEMA_VERSION = 1
SCHEMA = """
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
CREATE TABLE IF NOT EXISTS quarantine (
    seq            INTEGER PRIMARY KEY,
    quarantined_at REAL    NOT NULL,
    reason         TEXT    NOT NULL,
    task_id, function, status, created_at, ended_at, record
);
CREATE INDEX IF NOT EXISTS quarantine_by_task ON quarantine (task_id);
"""
# The quarantine table came with schema 1 unchanged: an older stint ignores it, and
# CREATE ... IF NOT EXISTS adds it to an older file when this one opens it. Its
# columns copied from ``tasks`` have no type, so a damaged row is kept byte for byte.

UNFINISHED = ("Enqueued", "Dequeued", "Running", "Retrying", "Stopping")
_COLUMNS = "seq, task_id, function, status, record"  # what every read selects
#: A row as SQLite returns it (seq, task_id, function, status, record): any type.
Row = tuple[Any, Any, Any, Any, Any]
#: A row that cannot be trusted, and why.
Bad = tuple[Row, str]
#: One write: (task_id, function, status, created_at, ended_at, record, inserting).
RowOut = tuple[str, str, str, float, float | None, bytes, bool]

_INSERT = (
    "INSERT INTO tasks (task_id, function, status, created_at, ended_at, record)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO NOTHING"
)
_UPDATE = "UPDATE tasks SET status = ?, ended_at = ?, record = ? WHERE task_id = ?"
_MOVE = (
    "INSERT INTO quarantine (quarantined_at, reason, task_id, function, status, created_at,"
    " ended_at, record) SELECT ?, ?, task_id, function, status, created_at, ended_at, record"
    " FROM tasks WHERE seq = ? AND record IS ?"
)


# loop side ---------------------------------------------------------------------------


def row_out(record: TaskRecord, *, inserting: bool) -> RowOut:
    """What one write of ``record`` sends to the writer thread (packs it, so it may raise)."""
    return (
        record.task_id,
        record.function,
        NAME[record.status],
        record.created_at,
        record.ended_at,
        pack_record(record),
        inserting,
    )


def from_row(row: Row) -> TaskRecord | str:
    """The record a row holds, or why it cannot be trusted (the quarantine reason)."""
    _, task_id, function, status, blob = row
    try:
        record = unpack_record(blob)
    except WireFormatError as exc:
        return str(exc)
    if (record.task_id, record.function, NAME[record.status]) != (task_id, function, status):
        return (
            f"its columns (task_id {task_id!r}, function {function!r}, status {status!r}) "
            f"disagree with its record ({record.task_id!r}, {record.function!r}, "
            f"{NAME[record.status]!r})"
        )
    return record


def runnable(record: TaskRecord) -> TaskRecord | str:
    """A recovered record goes back to work: its payload must decode, or it never could run."""
    try:
        codec.decode(record.payload_bytes)
    except PayloadError as exc:
        return f"its payload does not decode ({exc})"
    return record


# thread side -------------------------------------------------------------------------


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; on an error, roll back and raise *that* error.

    SQLite may have rolled back by itself already (a full disk does), and a
    ROLLBACK then fails with "no transaction is active": that must not hide the
    real error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def write(conn: sqlite3.Connection, rows: builtins.list[RowOut]) -> set[str]:
    """One transaction for the whole batch; returns the ids whose insert hit a duplicate."""
    conflicts: set[str] = set()
    with transaction(conn):
        for task_id, function, status, created_at, ended_at, blob, inserting in rows:
            if inserting:
                values = (task_id, function, status, created_at, ended_at, blob)
                if conn.execute(_INSERT, values).rowcount == 0:
                    conflicts.add(task_id)
            else:
                conn.execute(_UPDATE, (status, ended_at, blob, task_id))
    return conflicts


def read_unfinished(conn: sqlite3.Connection) -> builtins.list[Row]:
    marks = ",".join("?" * len(UNFINISHED))
    query = f"SELECT {_COLUMNS} FROM tasks WHERE status IN ({marks}) ORDER BY seq"
    return conn.execute(query, UNFINISHED).fetchall()


def read_one(conn: sqlite3.Connection, task_id: str) -> Row | str | None:
    """The task's row; if there is none, why it was quarantined (if it was)."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    if row is not None:
        return cast(Row, row)
    why = conn.execute(
        "SELECT reason FROM quarantine WHERE task_id = ? ORDER BY seq DESC LIMIT 1", (task_id,)
    ).fetchone()
    return None if why is None else str(why[0])


def read_page(conn: sqlite3.Connection, query: Query, limit: int) -> builtins.list[Row]:
    """Rows matching every filter of ``query``, in its order, after its start (keyset)."""
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
        where.append(f"(created_at, task_id) {beyond} (?, ?)")
        args += list(query.start_after)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    statement = (
        f"SELECT {_COLUMNS} FROM tasks {clause} "
        f"ORDER BY created_at {direction}, task_id {direction} LIMIT ?"
    )
    return conn.execute(statement, (*args, limit)).fetchall()


def quarantine(conn: sqlite3.Connection, bad: builtins.list[Bad], now: float) -> builtins.list[Bad]:
    """Move each row, as it was read, to the quarantine table; returns those moved.

    A row rewritten since it was read (its record changed) stays where it is.
    """
    moved: builtins.list[Bad] = []
    with transaction(conn):
        for row, reason in bad:
            seq, blob = row[0], row[4]
            if conn.execute(_MOVE, (now, reason, seq, blob)).rowcount:
                conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))
                moved.append((row, reason))
    return moved


def retain(conn: sqlite3.Connection, horizon: float, batch: int) -> int:
    """Delete finished rows that ended before ``horizon``, ``batch`` per short transaction."""
    total = 0
    while True:
        cursor = conn.execute(
            "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE ended_at IS NOT NULL"
            " AND ended_at < ? LIMIT ?)",
            (horizon, batch),
        )
        total += cursor.rowcount
        if cursor.rowcount < batch:
            return total
