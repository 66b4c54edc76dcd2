"""The ``redis://`` store: task records shared by every node of a cluster.

It keeps the :class:`~runtime.stores.base.Store` promises — ``add`` returns once the
record, its indexes and its queue entry are written atomically; transitions are
written behind, coalesced per task, as compare-and-sets fenced by the owner and
epoch — and adds what a shared store needs: tasks this node holds (``hold``, after a
fetch or a reclaim), tasks it gives back (``release``: a retry's backoff waits in
the due set, where any node may take it up), and the stored fields a stop from
another node compares (``stored``, ``transition_now``). The cluster's moving parts
(fetching, heartbeats, reclaims, stop requests, change notifications) live in
``runtime/cluster``; this is only where records are.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable

from actors import Clock

from ...errors import (
    FunctionNotFoundError,
    QueueFullError,
    StintError,
    StoreError,
    TaskExistsError,
)
from ...listing import Query
from ...record import TaskRecord
from ...states import NAME, TERMINAL, TaskState
from ...wire import WireFormatError, pack_record, unpack_record
from . import scripts
from .client import RedisConnection
from .nodes import FunctionRegistry, NodeRegistry
from .queue import RedisQueue
from .records import (
    InvokeCode,
    NewTask,
    RecordStore,
    StoredRecord,
    Transition,
    WriteCode,
    WriteResult,
)
from .url import RedisOptions
from .writer import InvokeBatcher, RecordWriter

logger = logging.getLogger("stint")

#: (task id, the write Redis refused, why): the runtime decides what that means for it.
Refused = Callable[[str, Transition, WriteResult], None]
_TERMINAL_NAMES = frozenset(NAME[state] for state in TERMINAL)
_LOST_CHUNK = 500  # records read per round trip when a node checks what it holds


class RedisStore:
    """Task records in Redis, shared by every runtime on the same URL and prefix."""

    durable = True
    shared = True
    writes_updates = True

    def __init__(self, options: RedisOptions, clock: Clock, node_id: str) -> None:
        self.options = options
        self.url = options.safe_url
        self.max_age = options.max_age
        self.node_id = node_id
        self._clock = clock
        self.quarantined = 0  #: records whose blob did not decode (skipped, logged)
        self.conn = RedisConnection(options, client_name=f"stint:{node_id}")
        self.records = RecordStore(self.conn, pinned_clock=clock.is_manual)
        self.writer = RecordWriter(
            self.records,
            node_id,
            pack=pack_record,
            on_refused=self._refused,
            on_given_up=self._written,
        )
        self.invokes = InvokeBatcher(self.records, refusal=self._refusal)
        self.queue = RedisQueue(self.conn, node_id, pinned_clock=clock.is_manual)
        self.nodes = NodeRegistry(
            self.conn, node_id, clock=clock.time, monotonic=_real_monotonic(clock)
        )
        self.functions = FunctionRegistry(self.conn, node_id)
        self._held: dict[str, TaskRecord] = {}  # tasks this node holds: their freshest copy
        #: tasks this node ended or gave back whose last write is not in yet: what ``get``
        #: answers for them meanwhile (a wait answered here is followed by a true get)
        self._leaving: dict[str, TaskRecord] = {}
        self._landing: dict[str, asyncio.Future[TaskRecord | None]] = {}  # a _leaving write
        #: each function's ``max_queued`` as the invoking runtime knows it (set before add)
        self.queue_limits: dict[str, int] = {}
        #: told of writes Redis refused (set by the runtime's cluster node)
        self.on_refused: Refused | None = None

    # opening and closing ----------------------------------------------------------------

    async def open(self) -> builtins.list[TaskRecord]:
        """Reach Redis and join the cluster. Nothing is recovered here: a node's tasks are
        in Redis, and the cluster node adopts or reclaims them once the runtime runs."""
        await self.conn.connect()
        try:
            await self.nodes.join()
        except BaseException:
            await self.conn.close()
            raise
        return []

    async def close(self) -> None:
        """Write what is pending (for a few seconds at most), leave the cluster, disconnect."""
        try:
            unwritten = await self.writer.close(timeout=5.0)
            if unwritten:
                logger.error(
                    "stint: %d task change(s) could not be written to %s before closing; the "
                    "tasks stay as Redis has them, and another node reclaims what this one held",
                    unwritten,
                    self.url,
                )
            for task_id in list(self._landing):
                self._left(task_id)  # no write comes any more: nobody waits for one
            await self.invokes.close()
            try:
                await self.nodes.leave()  # the others reclaim what this node still holds, now
            except StoreError as exc:
                logger.warning("stint: could not leave the cluster cleanly: %s", exc)
        finally:
            await self.conn.close()

    async def ping(self) -> None:
        await self.conn.command("PING")

    # the Store protocol -----------------------------------------------------------------

    def add(self, record: TaskRecord) -> Awaitable[object]:
        delay_ms = None
        if record.due_at is not None:
            delay_ms = max(0, round((record.due_at - record.created_at) * 1000))
        limit = self.queue_limits.get(record.function, 0)
        blob = pack_record(record)
        task = NewTask(
            record.task_id,
            record.function,
            record.created_at,
            blob,
            delay_ms or None,
            limit,
            local=record,  # a take in the same call hands it to the task actor as it is
        )
        # The batcher's own future: it raises what _refusal says (one coroutine fewer per
        # pending invoke, and a burst keeps thousands pending).
        return self.invokes.add(task)

    def _refusal(self, task: NewTask, code: InvokeCode) -> StintError:
        """What an invoke Redis did not store raises (told to the invoke batcher)."""
        if code is InvokeCode.EXISTS:
            return TaskExistsError(
                f"a task with id {task.task_id!r} already exists in the cluster; pick another "
                "id, or omit task_id to get a generated one"
            )
        if code is InvokeCode.QUEUE_FULL:
            limit = task.max_queued
            return QueueFullError(
                f"function {task.function!r} already has {limit} tasks waiting in the "
                f"cluster (max_queued={limit}); retry later, add capacity (more nodes, "
                "max_instances, concurrency) or raise max_queued"
            )
        return FunctionNotFoundError(
            f"no node of the cluster at {self.url} has registered {task.function!r} (or "
            "it was deleted); register it on a node first"
        )

    def update(self, record: TaskRecord) -> None:
        self.writer.put(record.task_id, NAME[record.status], record)

    def finished(self, record: TaskRecord) -> None:
        # A terminal status is final in Redis whatever the flags: acknowledged, kept
        # for max_age, then its index entries are swept.
        self._let_go(record)
        self.writer.put(record.task_id, NAME[record.status], record, scripts.FINAL)

    async def get(self, task_id: str) -> TaskRecord | None:
        mine = self._mine(task_id)
        if mine is not None:
            return mine
        return await self._read(task_id)

    async def get_watched(self, task_id: str) -> TaskRecord | None:
        """The read of a ``wait`` or a ``watch``: ``get``, and the task's changes are
        published from now on (``RecordStore.get(watch=True)``), except for a task held
        here (its task actor tells the waiters here).

        A task that ended here is answered once its last write is in Redis, as Redis has
        it (a stop that reached Redis first wins): a watcher would end on an end Redis
        refused. One given back here unfinished (a retry) is asked of Redis too: the
        release carries WATCHED only for a waiter registered when it was written, and a
        watcher between two reads is not (the event before the release took its
        future); this node's copy is answered while the release is not in Redis yet."""
        while True:
            mine = self._mine(task_id)
            if mine is None:
                return await self._read(task_id, watch=True)
            if task_id in self._held:
                return mine
            if not mine.is_terminal:
                theirs = await self._read(task_id, watch=True)
                return mine if theirs is None or _older(theirs, mine) else theirs
            landed = await self.landed(task_id, mine)
            if landed is not None:
                return landed
            # refused: what this node writes instead (a Stopped), or Redis', next time round

    async def _read(self, task_id: str, *, watch: bool = False) -> TaskRecord | None:
        stored = await self.records.get(task_id, watch=watch)
        return None if stored is None else self._unpack(stored.task_id, stored.blob)

    async def list(self, query: Query) -> builtins.list[TaskRecord]:
        start = query.start_after
        page = await self.records.list(
            function=query.function,
            status=query.status,
            prefix=query.prefix,
            created_after=query.created_after,
            created_before=query.created_before,
            order=query.order,
            cursor=None if start is None else f"{start[0]!r}:{start[1]}",
            limit=query.limit + 1,
        )
        found: builtins.list[TaskRecord] = []
        for blob in page.blobs:
            record = self._unpack("", blob)
            if record is not None:
                found.append(self._mine(record.task_id) or record)
        return found

    def evict(self) -> int:
        return 0  # records expire in Redis; the cluster node sweeps the indexes

    # what a shared store adds ---------------------------------------------------------------

    def hold(self, record: TaskRecord, epoch: int, status: str) -> None:
        """This node now holds the task (a fetch or a reclaim claimed it at ``epoch``)."""
        self._held[record.task_id] = record
        self._left(record.task_id)
        self.writer.own(record.task_id, epoch, status)

    def release(self, record: TaskRecord, delay: float, *, watched: bool = False) -> None:
        """Give the task back to the cluster, queued again now or after ``delay`` seconds
        (on Redis' clock): whichever node has a free slot then takes it up.

        ``watched``: someone here waits on it (until now told by its task actor here):
        its changes elsewhere are published from the release on."""
        self._let_go(record)
        delay_ms = round(delay * 1000) if delay > 0 else None
        flags = scripts.RELEASE | (scripts.WATCHED if watched else 0)
        self.writer.put(record.task_id, NAME[record.status], record, flags, delay_ms=delay_ms)

    def _mine(self, task_id: str) -> TaskRecord | None:
        """This node's copy of a task it holds, or ended or gave back with the write not
        in yet (fresher than Redis'), else None."""
        return self._held.get(task_id) or self._leaving.get(task_id)

    def _let_go(self, record: TaskRecord) -> None:
        """The task ends here, or goes back to the cluster: it is leaving until its write is in."""
        self._held.pop(record.task_id, None)
        self._leaving[record.task_id] = record

    def drop(self, task_id: str) -> None:
        """Forget a task this node no longer holds (reclaimed by another node, or gone)."""
        self._held.pop(task_id, None)
        self._left(task_id)
        self.writer.forget(task_id)

    def holds(self, task_id: str) -> bool:
        return task_id in self._held

    async def lost(self) -> builtins.list[str]:
        """Tasks this node holds that Redis says it no longer does: another node took them
        over (a reclaim while this node's lease had lapsed), or they are gone. Their next
        write here would be fenced; until then this node would answer its stale copy.

        A task taken again here while Redis was read (a new epoch) is not counted."""
        epochs = {task_id: self._epoch(task_id) for task_id in self.writer.owned_ids()}
        ids = sorted(epochs)
        found: builtins.list[str] = []
        for start in range(0, len(ids), _LOST_CHUNK):
            chunk = ids[start : start + _LOST_CHUNK]
            for task_id, stored in zip(chunk, await self.records.get_many(chunk), strict=True):
                epoch = epochs[task_id]
                if epoch is None or self._epoch(task_id) != epoch:
                    continue  # let go, or taken again, meanwhile: not what was read
                if stored is None or (stored.owner, stored.epoch) != (self.node_id, epoch):
                    found.append(task_id)
        return found

    def _epoch(self, task_id: str) -> int | None:
        owned = self.writer.ownership(task_id)
        return None if owned is None else owned[0]

    async def stored(self, task_id: str) -> StoredRecord | None:
        """The record as Redis has it now, with the fields a compare-and-set names."""
        return await self.records.get(task_id)

    async def transition_now(self, item: Transition) -> WriteResult:
        """One compare-and-set, written at once (a stop asked of a task this node does not hold)."""
        [result] = await self.records.transition([item], node=self.node_id)
        return result

    def unpack(self, blob: bytes) -> TaskRecord | None:
        return self._unpack("", blob)

    # refused writes -----------------------------------------------------------------------

    async def landed(self, task_id: str, record: TaskRecord) -> TaskRecord | None:
        """What a ``wait`` that saw ``record`` (the task's end here, or a read) may answer.

        Until the write that ended (or gave back) ``task_id`` here is in Redis: from then
        on every node reads what this one decided. Returns that write's record (``record``
        itself when no write of it is on its way; a Stopped if a stop asked elsewhere
        reached Redis first, and this node wrote that instead), or None when the write was
        refused or the task was taken up again: its end is decided later, or elsewhere,
        so read again."""
        if task_id not in self._leaving:
            return record
        future = self._landing.get(task_id)
        if future is None:
            future = self._landing[task_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)

    def _left(self, task_id: str, landed: TaskRecord | None = None) -> None:
        """The task's last write from here is settled: in Redis as ``landed``, or not."""
        self._leaving.pop(task_id, None)
        future = self._landing.pop(task_id, None)
        if future is not None and not future.done():
            future.set_result(landed)

    def _written(self, task_id: str) -> None:
        self._left(task_id, self._leaving.get(task_id))

    def _refused(self, task_id: str, item: Transition, result: WriteResult) -> None:
        # The refused write is not what Redis has: get reads Redis again (or what the
        # runtime writes instead, below: a Stopped when a stop won the race).
        self._leaving.pop(task_id, None)
        if result.code is not WriteCode.CONFLICT:
            self._held.pop(task_id, None)
        if self.on_refused is not None:
            self.on_refused(task_id, item, result)
        elif result.code is WriteCode.CONFLICT:
            logger.warning(
                "stint: the write of task %s (%s) found it %s in Redis",
                task_id,
                item.new_status,
                result.detail,
            )
        if task_id not in self._leaving:  # else its waiters wait for what replaces it
            self._left(task_id)

    def _unpack(self, task_id: str, blob: bytes) -> TaskRecord | None:
        try:
            return unpack_record(blob)
        except WireFormatError as exc:
            self.quarantined += 1
            logger.warning(
                "stint: the record of task %s in Redis does not decode (%s); it is skipped",
                task_id or "?",
                exc,
            )
            return None


def is_terminal_name(status: str) -> bool:
    return status in _TERMINAL_NAMES


def _real_monotonic(clock: Clock) -> Callable[[], float]:
    """The lease is on Redis' real time, whatever the runtime's clock: a ManualClock that
    never moves must not keep a lease alive, nor one that jumps lapse it."""
    import time

    del clock
    return time.monotonic


__all__ = ["RedisStore", "TaskState", "is_terminal_name"]


def _older(theirs: TaskRecord, mine: TaskRecord) -> bool:
    """Whether Redis' copy of a task lacks events of this node's (its write not in yet)."""
    return len(theirs.raw_events()) < len(mine.raw_events())
