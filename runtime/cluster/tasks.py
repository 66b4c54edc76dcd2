"""The runtime's task API on a shared store: what changes when tasks live in the cluster.

On a ``redis://`` store a task is held by at most one node at a time, and only while
it runs there (fetched into a slot, or reclaimed from a dead node to apply the
recovery rules); waiting — queued, or backing off before a retry — it is held by
nobody. So ``get``, ``wait``, ``watch`` and ``stop`` of a task this node does not
hold go to Redis, and the node adopts the tasks it is given. :class:`ClusterTasks`
is that half of the runtime; the runtime calls it when its store is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from actors import ActorRef

from ..config import FunctionConfig, FunctionSpec, config_from_wire
from ..destinations import invoke_destination
from ..errors import (
    RuntimeClosedError,
    StoreError,
    TaskFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from ..instances.base import NOT_DECODED
from ..messages import Recover, Wake
from ..metrics import ClusterReading, FunctionMetrics
from ..record import TaskRecord
from ..registry import FunctionEntry
from ..states import NAME, TaskState
from ..stores.redis import scripts
from ..stores.redis.client import StoreUnavailableError
from ..stores.redis.queue import Claimed
from ..stores.redis.records import StoredRecord, Transition, WriteCode, WriteResult
from ..stores.redis.store import RedisStore, is_terminal_name
from ..task_actor import TaskActor
from .node import ClusterHooks, ClusterNode

if TYPE_CHECKING:
    from ..runtime import Runtime

logger = logging.getLogger("stint")

S = TaskState
POLL = 1.0  # seconds between looks at a task held elsewhere (notifications may be lost)
_QUEUED_NOW = frozenset({"Enqueued", "Dequeued"})
_WAKE = Wake()
_FIRST = asyncio.FIRST_COMPLETED
_T = TypeVar("_T")


class ClusterTasks:
    """The cluster half of a runtime's task API (see the module docstring)."""

    def __init__(self, runtime: Runtime, store: RedisStore) -> None:
        self.rt = runtime
        self.store = store
        self.node_id = store.node_id
        self._detached: dict[str, FunctionEntry] = {}
        self._any_change = asyncio.Event()  # some task changed somewhere (for join)
        self._back = asyncio.Event()  # set (and replaced) when the change feed is back
        assert runtime._system is not None
        self.node = ClusterNode(
            store,
            runtime._system,
            runtime._background,
            ClusterHooks(
                served=lambda: sorted(runtime._functions),
                in_flight=lambda: len(runtime._live),
                held=lambda: set(runtime._live),
                adopt=self.adopt,
                stop_requested=self.stop_requested,
                changed=self._changed,
                gap=self._gap,
                lost=self._lost,
                function_config=runtime._function_config,
            ),
        )
        store.on_refused = self.refused

    def reading(self) -> ClusterReading:
        """This node's cluster numbers for a scrape (docs/metrics.md, "Cluster metrics")."""
        node, store = self.node, self.store
        return ClusterReading(
            dict(node.queue_stats),
            node.reclaimer.reclaimed,
            node.reclaimer.nodes_reclaimed,
            store.writer.fenced,
            store.conn.reconnects,
        )

    # tasks this node is given ------------------------------------------------------------

    def adopt(self, items: list[Claimed]) -> None:
        """Tasks the cluster handed this node: fetched for a free slot, or reclaimed."""
        rt = self.rt
        for item in items:
            record = item.local if item.local is not None else self.store.unpack(item.blob)
            if record is None:
                continue  # counted and logged by the store; its entry stays with this node
            served = rt._functions.get(item.function)
            entry = served if served is not None else self._detached_entry(item.function)
            self.store.hold(record, item.epoch, item.status)
            if item.recovered:
                self._spawn(record, entry, counted=item.status in _QUEUED_NOW)
                ref = rt._live[record.task_id]
                ref.tell(Recover(lost_node=item.previous_owner))
            elif served is None or served.pool is None:
                self.store.release(record, 0.0)  # no longer served here: someone else's
            else:
                self._queue(record, served)

    def _queue(self, record: TaskRecord, entry: FunctionEntry) -> None:
        """A fetched task goes to its pool as if it had been invoked here."""
        rt = self.rt
        fresh = record.status is S.ENQUEUED or record.status is S.DEQUEUED
        ref = self._spawn(record, entry, counted=fresh)
        enqueued_at = None
        if fresh and entry.spec.config.max_event_age is not None:
            clock = rt.clock
            since = record.created_at if record.due_at is None else record.due_at
            enqueued_at = clock.monotonic() - max(0.0, clock.time() - since)
        entry.inbox.append((ref, enqueued_at))
        if not entry.wake_pending:
            entry.wake_pending = True
            assert entry.pool is not None
            entry.pool.tell(_WAKE)

    def _spawn(self, record: TaskRecord, entry: FunctionEntry, *, counted: bool) -> ActorRef:
        rt = self.rt
        assert rt._system is not None
        ref = rt._system.spawn(
            TaskActor,
            record,
            entry,
            rt._services,
            NOT_DECODED,
            counted,
            name=record.task_id,
            parent=rt._supervisor,
        )
        rt._live[record.task_id] = ref
        entry.live += 1
        if counted:
            entry.queued += 1
        return ref

    def _detached_entry(self, function: str) -> FunctionEntry:
        """A function this node does not serve, for a reclaimed task's recovery step (its
        settings as the cluster has them; it runs nowhere here)."""
        entry = self._detached.get(function)
        if entry is None:
            info = self.node.cached_function(function)
            config = config_from_wire(info.config) if info is not None else None
            spec = FunctionSpec(function, "(served by other nodes)", config or FunctionConfig())
            entry = FunctionEntry(spec, FunctionMetrics(spec.config.kind))
            self._detached[function] = entry
        return entry

    def released(self, record: TaskRecord, entry: FunctionEntry, delay: float) -> None:
        """A task actor gave its task back to the cluster (a retry's backoff, a recovery)."""
        self.store.release(record, delay, watched=self.rt._waits.waits_on(record.task_id))
        if delay > 0:
            self.node.due_soon()

    # stop, wait and join of tasks held elsewhere ------------------------------------------

    @property
    def poll(self) -> float:
        """Seconds between looks at a task held elsewhere (a watch's, as a wait's)."""
        return POLL

    async def stop(self, task_id: str) -> TaskRecord:
        """Stop a task this node does not hold: at once if it is queued, else through its owner."""
        while True:
            stored = await self._stored(task_id)
            record = self._record_of(stored)
            status = stored.status
            if status == "Stopped":
                return record
            if is_terminal_name(status):
                raise TaskFinishedError.of(task_id, status)
            if status == "Stopping":
                return await self._wait_stopped(task_id)
            if stored.owner == "":
                stopped = self._stopped_copy(record, status)
                flags = scripts.FINAL | scripts.UNQUEUE
                item = _cas(stored, "Stopped", stopped, flags)
                if (await self.store.transition_now(item)).ok:
                    return stopped
                continue  # a node took it meanwhile: look again
            stopping = self._stopping_copy(record, status)
            item = _cas(stored, "Stopping", stopping, scripts.NOTIFY)
            if (await self.store.transition_now(item)).ok:
                return await self._wait_stopped(task_id)

    async def _wait_stopped(self, task_id: str) -> TaskRecord:
        """Until the owner (or, if it died, the reclaimer) writes Stopped."""
        while True:
            record = await self.wait(task_id, None, poll_only=True)
            if record.status is S.STOPPED or record.is_terminal:
                return record

    async def wait(
        self, task_id: str, timeout: float | None, *, poll_only: bool = False
    ) -> TaskRecord:
        """Until the task is terminal, wherever it runs: woken by the cluster's change
        notifications, and looking again every second in case one was lost (an outage
        is ridden out: it keeps waiting until its own timeout)."""
        waits = self.rt._waits
        try:
            async with asyncio.timeout(timeout):
                while True:
                    waiter = waits.expect(task_id)
                    # Held here, or taken by this node meanwhile, it ends in a task actor
                    # here: answered then as it ended, without another read.
                    ended = waits.expect_finished(task_id)
                    try:
                        record = await self._read(task_id)
                        if not record.is_terminal:
                            either: list[asyncio.Future[Any]] = [waiter, ended]
                            await asyncio.wait(either, timeout=POLL, return_when=_FIRST)
                            if not ended.done():
                                continue
                            record = ended.result()
                        # An end here is answered once it is in Redis, as Redis has it (a
                        # stop that reached Redis first wins); if it never got there, the
                        # task's end is decided elsewhere: read again.
                        landed = await self.store.landed(task_id, record)
                        if landed is not None and landed.is_terminal:
                            return landed.copy()
                    finally:
                        waits.forget(task_id, waiter)
                        waits.forget_finished(task_id, ended)
        except TimeoutError:
            status = "unknown"
            with contextlib.suppress(StoreError):  # (Redis away: the timeout is the news)
                now = await self.rt._store.get(task_id)
                status = now.status if now is not None else status
            raise WaitTimeoutError(
                f"task {task_id} is still {status} after {timeout} s; wait longer, "
                "or stop it with rt.stop"
            ) from None

    async def read_watched(self, task_id: str) -> TaskRecord | None:
        """The read of a ``wait`` or a ``watch`` (``RedisStore.get_watched``), an outage
        ridden out."""
        return await self._reach(functools.partial(self.store.get_watched, task_id))

    async def _reach(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """``read()``, an outage ridden out: a waiter keeps waiting, as promised, until its
        own timeout, and reads again as soon as the change feed is back (so is Redis),
        or after POLL."""
        while True:
            back = self._back  # (taken before the read: a comeback during it counts)
            try:
                return await read()
            except StoreUnavailableError:
                if not self.rt.started:
                    raise RuntimeClosedError("the runtime closed while waiting") from None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL):
                        await back.wait()

    async def _read(self, task_id: str) -> TaskRecord:
        record = await self.read_watched(task_id)
        if record is None:
            raise TaskNotFoundError(
                f"no task with id {task_id!r} in the cluster: check the id; finished tasks "
                "are dropped after the store's retention period"
            )
        return record

    async def join(self, name: str | None, timeout: float | None) -> None:
        """Until the cluster holds no unfinished task (of ``name``)."""
        count = functools.partial(self.store.records.count_unfinished, name, join=True)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._any_change.clear()
                    if not await self._reach(count):
                        return
                    # woken by the next write anywhere, and looking again anyway
                    change = asyncio.ensure_future(self._any_change.wait())
                    try:
                        await asyncio.wait([change], timeout=POLL)
                    finally:
                        change.cancel()
        except TimeoutError:
            what = f"function {name!r}" if name else "the cluster"
            raise WaitTimeoutError(f"{what} still has unfinished tasks after {timeout} s") from None

    async def delete_function(self, name: str) -> bool:
        """Remove ``name`` cluster-wide; its queued tasks become Invalid ("function deleted")."""
        info = await self.node.function(name)  # its settings, before they go
        config = config_from_wire(info.config) if info is not None else FunctionConfig()
        existed = await self.store.functions.delete(name)
        # A fetch or an invoke's take of this node under way may have claimed some of its
        # queued tasks: no longer served here, they are given back, and found below once
        # queued again (else they would be queued after the look, for a deleted function).
        await self.node.source.settled(name)
        await self.store.writer.flush(timeout=5.0)
        reason = f"function {name!r} was deleted"
        while True:
            found = await self.store.records.unowned(name)
            if not found:
                return existed
            for stored in found:
                record = self.store.unpack(stored.blob)
                if record is None:
                    continue
                invalid = record.copy()
                now = self.rt.clock.time()
                if stored.status == "Enqueued":
                    invalid._events.append((NAME[S.DEQUEUED], now, "dequeued to be invalidated"))
                elif stored.status != "Dequeued":
                    continue  # a retry owed: it finishes (as after an unregister)
                invalid.status = S.INVALID
                invalid.ended_at = now
                invalid._events.append((NAME[S.INVALID], now, reason))
                flags = scripts.FINAL | scripts.UNQUEUE
                if (await self.store.transition_now(_cas(stored, "Invalid", invalid, flags))).ok:
                    await self._destination(invalid, stored, config)
            if all(s.status == "Retrying" for s in found):
                return existed

    async def _destination(
        self, record: TaskRecord, stored: StoredRecord, config: FunctionConfig
    ) -> None:
        """A task this node ended outside any task actor (deleted with its function): its
        on_failure destination, as a task actor would invoke it, told in one more event
        (the Invalid write came first, so a task another node took meanwhile gets none)."""
        said = invoke_destination(
            record, config.on_success, config.on_failure, self.rt._invoke_destination
        )
        if said is None:
            return
        record._events.append((NAME[S.INVALID], self.rt.clock.time(), said))
        written = dataclasses.replace(stored, status="Invalid")
        await self.store.transition_now(_cas(written, "Invalid", record, scripts.FINAL))

    # what other nodes and Redis say --------------------------------------------------------

    def stop_requested(self, task_id: str) -> None:
        """Another node asked this one to stop a task it holds (Redis says Stopping)."""
        ref = self.rt._live.get(task_id)
        if ref is None or not ref.is_alive:
            return  # not held here (any more): its last write settles it (see refused)
        reply: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(_consume)
        ref.send(TaskActor.request_stop, reply)

    def refused(self, task_id: str, item: Transition, result: WriteResult) -> None:
        """Redis refused a write of a task this node holds."""
        if result.code is WriteCode.CONFLICT:
            if result.detail == "Stopping":
                ref = self.rt._live.get(task_id)
                held = ref is not None and ref.is_alive
                if is_terminal_name(item.new_status) or not held:
                    # No actor here will act on the stop (its attempt ended, or it gave
                    # the task back for a retry): this node, still the owner, ends it.
                    self._finish_remote_stop(task_id, item)
                else:
                    # Its control message may have come before the actor did (a take's or
                    # a fetch's reply still on its way), and was dropped: ask the actor
                    # now (a second request joins the stop under way).
                    self.stop_requested(task_id)
            return
        self._drop_local(task_id)  # fenced (reclaimed meanwhile) or gone: not ours any more

    def _finish_remote_stop(self, task_id: str, item: Transition) -> None:
        """A stop asked elsewhere reached Redis before this node's write ``item``: Stopped
        wins, by way of Stopping (the path stays one the lifecycle allows).

        When ``item`` was itself Stopped (this node's Stopping and Stopped went out as one
        write, expecting Running, and the other node's Stopping overtook it), Stopped is
        written again as it was, now expecting Stopping."""
        record = self.store.unpack(item.blob)
        if record is None:
            return
        moved = item.new_status
        if moved != "Stopped":
            now = self.rt.clock.time()
            if is_terminal_name(moved) and record._events and record._events[-1][0] == moved:
                record._events.pop()  # the attempt's end is told in the Stopped event instead
                detail = (
                    f"the attempt had ended ({moved}) when the stop requested elsewhere arrived"
                )
            else:
                detail = f"stopped while {moved} (the stop requested elsewhere arrived first)"
            record._events.append((NAME[S.STOPPING], now, "stop requested by another node"))
            record.status = S.STOPPED
            record.ended_at = now
            record._events.append((NAME[S.STOPPED], now, detail))
        self.store.finished(record)  # (a wait on it here answers with this: store.landed)

    def _lost(self, task_ids: list[str]) -> None:
        """Tasks held here that another node took over while this node's lease had lapsed
        (or that Redis no longer has): not ours any more, as when a write of one is fenced
        (an attempt still running here is dropped; one that ended here is not written)."""
        for task_id in task_ids:
            self._drop_local(task_id)

    def _drop_local(self, task_id: str) -> None:
        self.store.drop(task_id)
        ref = self.rt._live.pop(task_id, None)
        if ref is not None:
            logger.warning("stint: task %s is no longer held by this node; dropped here", task_id)
            ref.stop()
        # Its waiters here read this node's copy (and asked Redis for nothing): they read
        # again now, from Redis, and ask to hear of its changes.
        self.rt._waits.changed(task_id)

    def _changed(self, task_ids: list[str]) -> None:
        self._any_change.set()
        waits = self.rt._waits
        for task_id in task_ids:
            waits.changed(task_id)

    def _gap(self) -> None:
        """The change feed is back after a break: what it missed meanwhile went unheard,
        so every waiter here looks again now (and renews its interest: Redis may have
        lost it), joins too, and so do reads that found Redis away."""
        self._any_change.set()
        back, self._back = self._back, asyncio.Event()
        back.set()
        waits = self.rt._waits
        for task_id in list(waits.watched):
            waits.changed(task_id)

    # helpers ---------------------------------------------------------------------------------

    async def _stored(self, task_id: str) -> StoredRecord:
        stored = await self.store.stored(task_id)
        if stored is None:
            raise TaskNotFoundError(
                f"no task with id {task_id!r} in the cluster: check the id (rt.list shows "
                "recent ones); finished tasks are dropped after the store's retention period"
            )
        return stored

    def _record_of(self, stored: StoredRecord) -> TaskRecord:
        record = self.store.unpack(stored.blob)
        if record is None:
            raise StoreError(f"the record of task {stored.task_id} in Redis does not decode")
        return record

    def _stopping_copy(self, record: TaskRecord, status: str) -> TaskRecord:
        copy = record.copy()
        copy.status = S.STOPPING
        detail = f"stop requested while {status} (by node {self.node_id})"
        copy._events.append((NAME[S.STOPPING], self.rt.clock.time(), detail))
        return copy

    def _stopped_copy(self, record: TaskRecord, status: str) -> TaskRecord:
        copy = self._stopping_copy(record, status)
        now = self.rt.clock.time()
        copy.status = S.STOPPED
        copy.ended_at = now
        copy._events.append((NAME[S.STOPPED], now, f"stopped before running (was {status})"))
        return copy


def _cas(stored: StoredRecord, new: str, record: TaskRecord, flags: int) -> Transition:
    from ..wire import pack_record

    return Transition(
        stored.task_id, stored.status, stored.owner, stored.epoch, new, pack_record(record), flags
    )


def _consume(future: asyncio.Future[TaskRecord]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a stop that failed here is the owner's business
