"""Task records in Redis: create, compare-and-set, read, list, and retention.

Each call is one script (or one pipeline of scripts) however many records it
carries. Record blobs are opaque here: the runtime packs and unpacks them
(``runtime.wire``); this layer stores them next to the fields a script compares
(status, owner, epoch). See docs/cluster.md.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from ...errors import ConfigError, StoreError
from ...states import TaskState
from . import scripts
from .client import RedisConnection
from .replies import text

#: Items per script call: big enough to amortise a round trip, small enough that one
#: script never holds the (single-threaded) server for more than a millisecond or so.
BATCH = 500
LIST_BUDGET = 2000  # index members one list call may look at before it hands back a cursor
_STATES = frozenset(state.value for state in TaskState)


class InvokeCode(enum.IntEnum):
    """What ``invoke_many`` did with one task."""

    STORED = 1
    EXISTS = 2  #: a record with this id exists: nothing was changed
    NO_FUNCTION = 3  #: no node ever registered the function (or it was deleted)
    QUEUE_FULL = 4  #: the function's stream already holds ``max_queued`` undelivered entries


class WriteCode(enum.IntEnum):
    """What ``transition`` did with one item."""

    WRITTEN = 1
    REPEATED = 2  #: written before (same write token): a resend after a lost reply
    MISSING = 0  #: no such record (expired, or lost with Redis' data)
    FENCED = -1  #: owner or epoch differ: the writer no longer owns the task
    CONFLICT = -2  #: the status is not the one expected (``detail`` has the current one)


_WRITE_CODES = {code.value: code for code in WriteCode}  # (a dict: an enum call costs more)
_INVOKE_CODES = {code.value: code for code in InvokeCode}


@dataclasses.dataclass(slots=True)  # not frozen: one per task, and 5x cheaper to build
class NewTask:
    """A task to create as Enqueued: queued now, or after ``delay_ms`` (by Redis' clock)."""

    task_id: str
    function: str
    created_at: float
    blob: bytes
    delay_ms: int | None = None
    max_queued: int = 0  #: refuse it (QUEUE_FULL) if this many wait undelivered; 0: no limit
    #: the caller's own record object, opaque here: a take in the same call hands it back
    #: (``Claimed.local``) instead of the blob
    local: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(slots=True)  # not frozen: one per task, and 5x cheaper to build
class Transition:
    """One compare-and-set: if the record is ``expect_status`` owned by ``expect_owner`` at
    ``expect_epoch``, it becomes ``new_status`` with ``blob``, plus what ``flags`` say
    (``scripts.ACK | RELEASE | FINAL | UNQUEUE | NOTIFY``). ``delay_ms`` is how long a
    released task waits before it is queued again (None or <= 0: not at all), on Redis'
    clock, so every node's retries follow one clock. ``token`` identifies the write, so resending it
    after a lost reply is recognised (``WriteCode.REPEATED``) rather than refused."""

    task_id: str
    expect_status: str
    expect_owner: str
    expect_epoch: int
    new_status: str
    blob: bytes
    flags: int = 0
    delay_ms: int | None = None
    token: str = ""


@dataclasses.dataclass(slots=True)  # not frozen: one per task, and 5x cheaper to build
class WriteResult:
    code: WriteCode
    #: CONFLICT: the current status; FENCED: "<current owner> <current epoch>"; else "".
    detail: str

    @property
    def ok(self) -> bool:
        return self.code in (WriteCode.WRITTEN, WriteCode.REPEATED)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: the blob and the fields scripts compare."""

    task_id: str
    blob: bytes
    status: str
    function: str
    created_at: float
    owner: str  #: "" when no node holds it (queued, or waiting out a retry backoff)
    epoch: int
    stream_id: str  #: its current entry in the function's stream, or ""


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of ``list``: blobs in the order asked for, and where the next page starts."""

    blobs: builtins.list[bytes]
    cursor: str | None  #: None when there is nothing more


_RECORD_FIELDS = ("rec", "status", "fn", "created", "owner", "epoch", "sid")
#: The states a task can wait in without an owner (queued, or backing off before a retry).
_QUEUED = ("Enqueued", "Dequeued", "Retrying")


class RecordStore:
    """Task records under one prefix; every method is one round trip per ``BATCH`` items."""

    def __init__(self, conn: RedisConnection, *, pinned_clock: bool = False) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.max_age_ms = max(1, int(conn.options.max_age * 1000))
        #: the scripts read the time from ``keys.clock`` (a test's ManualClock pins it
        #: there) rather than TIME; only a runtime with a manual clock asks for that
        self.pinned = "1" if pinned_clock else ""

    async def invoke_many(self, tasks: Sequence[NewTask]) -> builtins.list[InvokeCode]:
        """Create records, index them and queue them, each atomically; one code per task.

        Raises :class:`StoreError` when Redis is unreachable: then none of the tasks
        was stored (or, if the connection broke mid-call, whole chunks of
        ``BATCH`` may have been).
        """
        codes, _ = await self.invoke_and_take(tasks, "", {})
        return codes

    async def invoke_and_take(
        self, tasks: Sequence[NewTask], node: str, take: Mapping[str, int]
    ) -> tuple[builtins.list[InvokeCode], Any]:
        """``invoke_many``, then (in the same call as the last chunk) ``node`` takes up to
        ``take[fn]`` new entries of each function as ``RedisQueue.fetch`` would.

        Returns the codes and the taking's raw reply (``queue.parse_fetched`` reads
        it; an empty list when nothing was taken); a task of ``tasks`` taken comes
        without its blob (the caller has it). A failure raises as invoke_many,
        and may have taken tasks whose reply was lost: recover them with
        ``RedisQueue.adopt``.
        """
        calls: builtins.list[builtins.list[Any]] = []
        for start in range(0, len(tasks), BATCH):
            items = [
                (
                    t.task_id,
                    t.function,
                    repr(t.created_at),
                    t.blob,
                    _delay(t.delay_ms),
                    t.max_queued,
                )
                for t in tasks[start : start + BATCH]
            ]
            calls.append([self.keys.base, _pack(items), self.pinned])
        asked = [x for function, n in take.items() if n > 0 for x in (function, n)]
        if asked and calls:
            calls[-1] += [node, *asked]
        if len(calls) == 1:
            replies = [await self.conn.run(scripts.invoke_batch, calls[0])]
        else:
            replies = await self.conn.run_many(scripts.invoke_batch, calls)
        codes = [_INVOKE_CODES[code] for reply in replies for code in reply[0]]
        return codes, replies[-1][1] if replies else []

    async def transition(
        self, items: Sequence[Transition], *, node: str
    ) -> builtins.list[WriteResult]:
        """Apply compare-and-set transitions written by ``node``; one result per item."""
        calls: builtins.list[tuple[str, str, int, bytes, str]] = []
        for start in range(0, len(items), BATCH):
            packed = [_transition_item(t) for t in items[start : start + BATCH]]
            calls.append((self.keys.base, node, self.max_age_ms, _pack(packed), self.pinned))
        if len(calls) == 1:
            replies = [await self.conn.run(scripts.transition_batch, calls[0])]
        else:
            replies = await self.conn.run_many(scripts.transition_batch, calls)
        return [
            WriteResult(_WRITE_CODES[reply[i]], text(reply[i + 1]))
            for reply in replies
            for i in range(0, len(reply), 2)
        ]

    async def get(self, task_id: str, *, watch: bool = False) -> StoredRecord | None:
        """The record as stored now, or None (never existed, or expired).

        ``watch``: and publish the task's changes on ``changed`` from now on, for
        ``scripts.WATCH_TTL_MS`` (a waiter reads again within it). Asked in the same
        round trip, before the read: a change after the read cannot go unannounced.
        """
        read = ("HMGET", self.keys.task(task_id), *_RECORD_FIELDS)
        if not watch:
            return _stored(task_id, await self.conn.command(*read))
        interest = ("SET", self.keys.watched(task_id), "1", "PX", scripts.WATCH_TTL_MS)
        _, values = await self.conn.commands([interest, read])
        return _stored(task_id, values)

    async def get_many(self, task_ids: Sequence[str]) -> builtins.list[StoredRecord | None]:
        """Several records in one round trip, in the order asked for."""
        if not task_ids:
            return []
        fields = _RECORD_FIELDS
        rows = await self.conn.commands([("HMGET", self.keys.task(t), *fields) for t in task_ids])
        return [_stored(task_id, row) for task_id, row in zip(task_ids, rows, strict=True)]

    async def count_unfinished(self, function: str | None = None, *, join: bool = False) -> int:
        """Tasks not terminal yet (of ``function``, or of every function), in one round trip.

        ``join``: and publish every change on ``changed`` from now on, for
        ``scripts.WATCH_TTL_MS`` (a join counts again within it), asked before the count.
        """
        unfinished = ("Enqueued", "Dequeued", "Running", "Retrying", "Stopping")
        calls: builtins.list[tuple[Any, ...]] = [
            ("ZCARD", self.keys.index(function, status)) for status in unfinished
        ]
        if join:
            calls.insert(0, ("SET", self.keys.joining, "1", "PX", scripts.WATCH_TTL_MS))
        counts = await self.conn.commands(calls)
        return sum(int(count) for count in (counts[1:] if join else counts))

    async def unowned(self, function: str, limit: int = 500) -> builtins.list[StoredRecord]:
        """The oldest tasks of ``function`` that no node holds and that have not finished
        (queued, or waiting out a retry backoff), at most ``limit``.

        For ending a deleted function's tasks: end each (compare-and-set from owner ""
        with ``FINAL | UNQUEUE``) and call again until it returns nothing.
        """
        found: builtins.list[StoredRecord] = []
        for status in _QUEUED:
            index = self.keys.idx_function_status(function, status)
            start = 0
            while len(found) < limit:
                ids = [text(m) for m in await self.conn.command("ZRANGE", index, start, start + 99)]
                if not ids:
                    break
                found += [
                    record
                    for record in await self.get_many(ids)
                    if record is not None and record.owner == "" and record.status == status
                ]
                start += len(ids)
        return found[:limit]

    async def list(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        prefix: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        order: str = "desc",
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Record blobs matching every filter, newest first (``order="asc"``: oldest first).

        Reads the narrowest index for ``function`` / ``status``; ``prefix`` filters
        task ids; ``created_after`` / ``created_before`` are exclusive bounds on
        ``created_at``. Equal ``created_at`` are ordered by task id. Pass the
        returned ``cursor`` to get the next page. Index entries whose record has
        expired are skipped and removed on the way.
        """
        if order not in ("desc", "asc"):
            raise ConfigError(f"order={order!r} is not valid: use 'desc' or 'asc'")
        if status is not None and status not in _STATES:
            raise ConfigError(f"unknown status {status!r}; use one of {', '.join(_STATES)}")
        if limit <= 0:
            return Page([], None)
        score, member = _decode_cursor(cursor)
        index = self.keys.index(function, status)[len(self.keys.base) :]
        blobs: builtins.list[bytes] = []
        while True:
            reply = await self.conn.run(
                scripts.list_page,
                (
                    self.keys.base, index, order, _bound(created_after), _bound(created_before),
                    prefix or "", limit - len(blobs), LIST_BUDGET, score, member,
                ),
            )  # fmt: skip
            score, member = text(reply[0]), text(reply[1])
            blobs += reply[2:]
            if not member:
                return Page(blobs, None)
            if len(blobs) >= limit:
                return Page(blobs, f"{score}:{member}")

    async def sweep(self, limit: int = 1000) -> int:
        """Remove the index entries of finished records whose retention ran out; returns how many.

        The records themselves expire on their own (Redis TTL = ``max_age``); run
        this every minute or so, from any node (it is idempotent).
        """
        removed: int = await self.conn.run(
            scripts.sweep_ended, (self.keys.base, limit, self.pinned)
        )
        return removed


def _stored(task_id: str, values: Sequence[Any]) -> StoredRecord | None:
    blob, status, function, created, owner, epoch, sid = values
    if blob is None and status is None:
        return None
    try:
        return StoredRecord(
            task_id=task_id,
            blob=bytes(blob),
            status=text(status),
            function=text(function),
            created_at=float(created),
            owner=text(owner),
            epoch=int(epoch),
            stream_id=text(sid),
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"the record of task {task_id} in Redis is malformed ({exc}): something other "
            "than stint wrote under its key prefix; give stint a prefix of its own"
        ) from None


def _transition_item(t: Transition) -> tuple[Any, ...]:
    return (
        t.task_id, t.expect_status, t.expect_owner, str(t.expect_epoch),
        t.new_status, t.blob, t.flags, _delay(t.delay_ms), t.token,
    )  # fmt: skip


def _delay(delay_ms: int | None) -> str:
    return "" if delay_ms is None or delay_ms <= 0 else str(int(delay_ms))


def _pack(items: builtins.list[Any]) -> bytes:
    """Items for a script: one msgpack argument (Redis' Lua cmsgpack reads no bin type,
    so bytes go as raw strings) instead of thousands of arguments to pack one by one."""
    packed: bytes = msgpack.packb(items, use_bin_type=False)
    return packed


def _bound(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _decode_cursor(cursor: str | None) -> tuple[str, str]:
    if cursor is None:
        return "0", ""
    score, _, member = cursor.partition(":") if isinstance(cursor, str) else ("", "", "")
    try:
        float(score)
    except ValueError:
        member = ""
    if not member:
        raise ConfigError(f"cursor {cursor!r} is not one that list returned; start without one")
    return score, member
