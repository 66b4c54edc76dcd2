"""Group commit to Redis: one script call carries every change made while the last was in flight.

:class:`RecordWriter` is the SQLite store's write-behind, made for a shared store:
transitions of one task coalesce into one compare-and-set, up to two batches are in
flight at a time (never two writes of one task), and what changed meanwhile forms
the next. Each write carries the
node's ownership (owner, epoch) so a node that lost a task is refused (fenced)
rather than overwriting what another node decided. During a Redis outage the
unwritten batch is resent (same write tokens, so a write that did land is
recognised) with backoff, in order; memory stays flat because pending changes
are kept per task, never per transition.

:class:`InvokeBatcher` does the same for new tasks: the invokes of one loop turn
(and of the time the previous batch was in flight) share one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ...errors import StoreError
from ...loop import cancel_and_wait
from . import scripts
from .client import Backoff, StoreUnavailableError
from .queue import Fetched, parse_fetched
from .records import (
    BATCH,
    InvokeCode,
    NewTask,
    RecordStore,
    Transition,
    WriteCode,
    WriteResult,
)

logger = logging.getLogger("stint")

#: Called for every write that did not go through: (task id, the write, why).
OnRefused = Callable[[str, Transition, WriteResult], None]
_GIVE_UP = scripts.RELEASE | scripts.FINAL  # after these the task is no longer this node's
#: Seconds a change that only moves a held task on (Dequeued, Running; no flags) waits
#: before a write starts: a quick attempt's end comes within it, and one write carries
#: both (Redis shows Running that much later; every flagged change starts a write at once).
HOLD = 0.002
#: Write calls in flight at once: a second starts while the first is answered, so the
#: changes of a busy node reach Redis without waiting for the last call's round trip, and
#: what is left to write when the work stops is one short batch, not a full one.
WRITE_CALLS = 2


class _Owned:
    __slots__ = ("epoch", "status")

    def __init__(self, epoch: int, status: str) -> None:
        self.epoch = epoch
        self.status = status  # the status Redis has (as far as this node knows)


class _Dirty:
    __slots__ = ("delay_ms", "flags", "record", "status")

    def __init__(self, status: str, record: Any, flags: int, delay_ms: int | None) -> None:
        self.status = status
        self.record = record
        self.flags = flags
        self.delay_ms = delay_ms


class RecordWriter:
    """Write-behind of one node's transitions, as compare-and-sets on what it owns.

    ``own(task_id, epoch, status)`` after a claim; ``put(task_id, status, record,
    flags, delay_ms)`` after each transition (never waits; ``pack(record)`` runs at
    write time, so several transitions cost one pack and one write); ``flush()``
    waits until everything put so far is written; ``on_given_up(task_id)`` is told when
    a write that ended the task or gave it back is in. Writes Redis refused are
    reported to ``on_refused`` (fenced: the task was reclaimed; conflict: its
    status changed elsewhere, e.g. a stop; missing: the record is gone), and the
    task is no longer this writer's unless ``own`` is called again.
    """

    def __init__(
        self,
        records: RecordStore,
        node: str,
        *,
        pack: Callable[[Any], bytes] = bytes,
        on_refused: OnRefused | None = None,
        on_given_up: Callable[[str], None] | None = None,
        max_batch: int = BATCH,
        backoff: Backoff | None = None,
        hold: float = HOLD,
        calls: int = WRITE_CALLS,
    ) -> None:
        self.records = records
        self.node = node
        self._pack = pack
        self._on_refused = on_refused
        self._on_given_up = on_given_up
        self._max_batch = max_batch
        self._backoff = backoff or records.conn.backoff
        self._owned: dict[str, _Owned] = {}
        self._dirty: dict[str, _Dirty] = {}
        self._calls = calls  # write calls in flight at most
        self._drains: set[asyncio.Task[None]] = set()  # one per call in flight
        #: tasks with a write in flight: a newer change of one waits for that call's answer
        #: (its compare-and-set expects what that write leaves)
        self._writing: set[str] = set()
        #: per drain, the batch it writes until that lands: in flight, or interrupted by an
        #: outage and resent (same tokens); ``pending`` counts it, ``forget_all`` drops it
        self._unwritten: dict[asyncio.Task[None], list[Transition]] = {}
        self._timer: asyncio.TimerHandle | None = None  # a held start (see HOLD)
        self._hold = hold
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(4).hex() + ":"
        self._closed = False
        # counters (metrics)
        self.written = 0
        self.batches = 0
        self.fenced = 0
        self.conflicts = 0
        self.missing = 0
        self.resends = 0

    # ownership ---------------------------------------------------------------------------

    def own(self, task_id: str, epoch: int, status: str) -> None:
        """This node now holds ``task_id`` at ``epoch``, stored as ``status``."""
        self._owned[task_id] = _Owned(epoch, status)

    def ownership(self, task_id: str) -> tuple[int, str] | None:
        """(epoch, status as stored) of a task this writer holds, else None."""
        owned = self._owned.get(task_id)
        return None if owned is None else (owned.epoch, owned.status)

    def owned_ids(self) -> set[str]:
        """Every task this writer holds: one that ended here too, until its last write is in."""
        return set(self._owned)

    def forget(self, task_id: str) -> None:
        """Drop a task and any unwritten change of it (it is no longer this node's)."""
        self._owned.pop(task_id, None)
        self._dirty.pop(task_id, None)

    def forget_all(self) -> int:
        """Drop every task (the node's lease lapsed: the reclaimer owns them); returns how many."""
        dropped = len(self._owned)
        self._owned.clear()
        self._dirty.clear()
        self._unwritten.clear()  # (each drain sees its batch is gone and drops it)
        return dropped

    @property
    def owned(self) -> int:
        return len(self._owned)

    @property
    def pending(self) -> int:
        """Changes not written yet (tasks with unwritten transitions, plus the batches in
        flight or waiting to be resent)."""
        return len(self._dirty) + sum(len(batch) for batch in self._unwritten.values())

    # writes --------------------------------------------------------------------------------

    def put(
        self,
        task_id: str,
        status: str,
        record: Any,
        flags: int = 0,
        delay_ms: int | None = None,
    ) -> None:
        """The task moved to ``status``; write it (with ``flags``) in the next batch."""
        dirty = self._dirty.get(task_id)
        if dirty is None:
            self._dirty[task_id] = _Dirty(status, record, flags, delay_ms)
        else:
            dirty.status = status
            dirty.record = record
            dirty.flags |= flags
            if delay_ms is not None:
                dirty.delay_ms = delay_ms
        if len(self._drains) < self._calls and task_id not in self._writing and not self._closed:
            if flags or self._hold <= 0:
                self._start()
            elif self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._hold, self._start)

    def _start(self) -> None:
        """Start a write of what is dirty (now, whether or not a start was held), unless
        ``calls`` writes are in flight: then the first to be answered takes it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if len(self._drains) < self._calls and not self._closed and self._dirty:
            self._drains.add(asyncio.get_running_loop().create_task(self._drain()))

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every change put so far is written (or refused and reported).

        Raises :class:`StoreUnavailableError` if Redis stays unreachable for ``timeout`` s.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._start()
                    if not self._drains:
                        return
                    await asyncio.wait(list(self._drains))  # (cancelling this leaves them be)
        except TimeoutError:
            raise StoreUnavailableError(
                f"{self.pending} task change(s) could not be written to Redis at "
                f"{self.records.conn.options.safe_url} within {timeout} s; they are kept and "
                "retried while the runtime runs"
            ) from None

    async def close(self, timeout: float | None = None) -> int:
        """Flush (for up to ``timeout`` s), then stop; returns how many changes were not written."""
        with contextlib.suppress(StoreUnavailableError):
            await self.flush(timeout)
        self._closed = True
        self._start()  # (closed: only drops a held start)
        for task in list(self._drains):
            await cancel_and_wait(task)
        return self.pending

    async def _drain(self) -> None:
        """Write batches until nothing is left that this drain may take."""
        me = asyncio.current_task()
        assert me is not None
        try:
            while self._dirty:
                batch = self._take()
                if batch:
                    await self._write(me, batch)
                elif self._dirty.keys() <= self._writing:
                    return  # what is left waits for a call in flight (its drain goes on)
        finally:
            self._drains.discard(me)

    async def _write(self, me: asyncio.Task[None], batch: list[Transition]) -> None:
        """One batch: resent (same write tokens) while Redis cannot be reached, unless the
        node forgets its tasks meanwhile (its lease lapsed: the reclaimer owns them)."""
        ids = [item.task_id for item in batch]
        self._writing.update(ids)
        # (a batch cut short by close, in flight or between attempts, stays in _unwritten:
        # close counts it unwritten)
        self._unwritten[me] = batch
        attempt = 0
        try:
            while True:
                try:
                    results = await self.records.transition(batch, node=self.node)
                    break
                except StoreUnavailableError:
                    if self._unwritten.get(me) is not batch:
                        return  # forgotten while it was in flight
                    self.resends += 1
                    await asyncio.sleep(self._backoff.delay(attempt))
                    attempt += 1
                    if self._unwritten.get(me) is not batch:
                        return  # forgotten meanwhile
                except StoreError as exc:
                    if self._unwritten.pop(me, None) is batch:  # (else forgotten: not ours)
                        self._refuse_all(batch, exc)
                    return
            self._unwritten.pop(me, None)
        finally:
            self._writing.difference_update(ids)
        self.batches += 1
        self._settle(batch, results)

    def _take(self) -> list[Transition]:
        """Turn up to ``max_batch`` dirty tasks into compare-and-sets on what Redis has
        (not those with a write in flight: their next one waits for its answer)."""
        batch: list[Transition] = []
        prefix = self._token_prefix
        writing = self._writing
        ids: list[str] = []
        for task_id in self._dirty:
            if task_id not in writing:
                ids.append(task_id)
                if len(ids) == self._max_batch:
                    break
        for task_id in ids:
            dirty = self._dirty.pop(task_id)
            owned = self._owned.get(task_id)
            if owned is None:
                logger.error("stint: a write for task %s, which this node does not hold", task_id)
                continue
            batch.append(
                Transition(
                    task_id,
                    owned.status,
                    self.node,
                    owned.epoch,
                    dirty.status,
                    self._pack(dirty.record),
                    dirty.flags,
                    dirty.delay_ms,
                    f"{prefix}{next(self._tokens):x}",
                )
            )
        return batch

    def _settle(self, batch: list[Transition], results: list[WriteResult]) -> None:
        for item, result in zip(batch, results, strict=True):
            task_id = item.task_id
            owned = self._owned.get(task_id)
            if owned is not None and owned.epoch != item.expect_epoch:
                # This node gave the task up with this write and has taken it again since
                # (its fetch answered before this batch did): the outcome of the old
                # epoch's write says nothing about the task it holds now.
                if result.ok:
                    self.written += 1
                continue
            if result.ok:
                self.written += 1
                if item.flags & _GIVE_UP:
                    self._owned.pop(task_id, None)
                    if self._on_given_up is not None and task_id not in self._dirty:
                        self._on_given_up(task_id)
                elif owned is not None:
                    owned.status = item.new_status
                continue
            newer = self._dirty.pop(task_id, None)
            if result.code is WriteCode.CONFLICT:
                self.conflicts += 1
                if owned is not None:  # what Redis has now: a new put starts from it
                    owned.status = result.detail
                if newer is not None:
                    # A change put while this write was in flight is what the node means
                    # now (a Stopped after the refused Stopping): report that one, or it
                    # is lost with the write it followed.
                    item = dataclasses.replace(  # noqa: PLW2901 (what on_refused gets, below)
                        item,
                        new_status=newer.status,
                        blob=self._pack(newer.record),
                        flags=item.flags | newer.flags,
                        delay_ms=item.delay_ms if newer.delay_ms is None else newer.delay_ms,
                    )
            else:
                self._owned.pop(task_id, None)
                if result.code is WriteCode.FENCED:
                    self.fenced += 1
                    logger.warning(
                        "stint: task %s is no longer this node's (now held by %s); its late "
                        "write (%s) was refused: another node reclaimed it while this node "
                        "could not reach Redis",
                        task_id,
                        result.detail or "nobody",
                        item.new_status,
                    )
                else:
                    self.missing += 1
            if self._on_refused is not None:
                self._on_refused(task_id, item, result)

    def _refuse_all(self, batch: list[Transition], exc: StoreError) -> None:
        logger.error("stint: Redis refused a batch of %d task writes: %s", len(batch), exc)
        for item in batch:
            self._owned.pop(item.task_id, None)
            if self._on_refused is not None:
                self._on_refused(item.task_id, item, WriteResult(WriteCode.MISSING, str(exc)))


#: Tasks per invoke call, and calls in flight at once: a burst is stored in calls of a few
#: hundred, two at a time, so the node starts on what one call stored (and took) while
#: Redis runs the next; one call of thousands left the node idle for its whole length
#: (``python -m bench --only stint-redis``: 7,000-8,600 tasks/s with one call of up to
#: 2,000, 9,600-11,100 with two of 200-250, in the same runs). Smaller calls also end a
#: burst sooner: the tasks of the last call are written after the node ran them, while
#: it has nothing else to do (idle per task 17-18 µs with calls of 128, 19-22 µs with 250,
#: alternating runs of bench/cluster.py's workload).
INVOKE_BATCH = 128
INVOKE_CALLS = 2
#: The first call of a burst (Redis idle): calls then grow, each up to twice the largest
#: in flight, so the node has tasks to run after a short call instead of a full one.
FIRST_INVOKE_BATCH = 32


class Taker(Protocol):
    """Takes a batch's new tasks on the invoking node, in the batch's own call (the
    node's queue source, when the node serves what it invokes)."""

    node: str

    def reserve(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Free slots to fill from the functions' streams (at most ``counts[fn]``)."""
        ...

    def taken(self, take: Mapping[str, int], fetched: Fetched | None) -> None:
        """What the call took, or None when it failed (it may have taken some, reply lost)."""
        ...


class InvokeBatcher:
    """Group commit for new tasks: ``add`` returns a future answered when its batch is stored.

    Up to ``calls`` calls are in flight at a time, each of up to ``max_batch`` tasks;
    the tasks added meanwhile form the next, so a burst of invokes costs a few round
    trips, not one each. With a ``taker``, a node with free slots also takes new tasks
    in the same call, so a task invoked on a node that serves it starts without another
    round trip (the taken ones are handed to the taker before the invokers are answered).
    """

    def __init__(
        self,
        records: RecordStore,
        *,
        max_batch: int = INVOKE_BATCH,
        taker: Taker | None = None,
        calls: int = INVOKE_CALLS,
        refusal: Callable[[NewTask, InvokeCode], Exception] | None = None,
    ) -> None:
        self.records = records
        self.taker = taker
        #: given, a task Redis did not store gets the exception it returns, not its code
        self._refusal = refusal
        self._max_batch = max_batch
        self._calls = calls  # calls in flight at most
        self._waiting: list[tuple[NewTask, asyncio.Future[InvokeCode]]] = []
        #: per drain task: the batch it has in flight
        self._in_flight: dict[asyncio.Task[None], list[tuple[NewTask, Any]]] = {}
        self.batches = 0

    def add(self, task: NewTask) -> asyncio.Future[InvokeCode]:
        """Queue ``task`` for the next batch; the future gets its :class:`InvokeCode`
        (or the :class:`StoreError` that kept the batch from being stored)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InvokeCode] = loop.create_future()
        self._waiting.append((task, future))
        if len(self._in_flight) < self._calls:
            self._start(loop)
        return future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._drain())
        self._in_flight[task] = []
        task.add_done_callback(self._drained)

    async def close(self) -> None:
        """Wait for the batches under way (new adds after this still work). A cancelled
        close ends cancelled; the batches go on (their callers wait for them)."""
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))  # (raises nothing of theirs)
            await asyncio.sleep(0)  # lets the done callbacks run

    async def _drain(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while self._waiting:
            size = self._next_size(me)
            batch = self._in_flight[me] = self._waiting[:size]
            del self._waiting[:size]
            taker, take = self.taker, {}
            if taker is not None:
                take = taker.reserve(Counter(t.function for t, _ in batch if t.delay_ms is None))
            fetched: Fetched | None = None
            try:
                node = taker.node if taker is not None else ""
                codes, raw = await self.records.invoke_and_take(
                    [task for task, _ in batch], node, take
                )
                # What it took of the tasks it stored comes as the invoker made it (only
                # those: an id invoked twice in a batch is stored once, from the first)
                mine = _stored_records(batch, codes) if take else None
                fetched = parse_fetched(raw, mine)
            except StoreError as exc:
                _fail(batch, exc)
                continue
            finally:
                if taker is not None and take:
                    taker.taken(take, fetched)
            self.batches += 1
            refusal = self._refusal
            for (task, future), code in zip(batch, codes, strict=True):
                if future.done():
                    continue
                if refusal is None or code is InvokeCode.STORED:
                    future.set_result(code)
                else:
                    future.set_exception(refusal(task, code))
        self._in_flight[me] = []

    def _next_size(self, me: asyncio.Task[None]) -> int:
        """Tasks for the next call: twice the largest call in flight (FIRST_INVOKE_BATCH
        when none is), at most ``max_batch``. A burst that finds Redis idle is sent in
        calls that grow, so the node gets the first tasks back (and runs them) while Redis
        stores the next; one full call first left the node idle for its whole length."""
        largest = max((len(b) for t, b in self._in_flight.items() if t is not me), default=0)
        return min(self._max_batch, max(FIRST_INVOKE_BATCH, 2 * largest))

    def _drained(self, task: asyncio.Task[None]) -> None:
        """A drain ended: if it was cancelled or hit a bug, no caller may wait forever."""
        batch = self._in_flight.pop(task, [])
        if task.cancelled() or task.exception() is not None:
            why = "cancelled" if task.cancelled() else repr(task.exception())
            error = StoreError(f"the invoke was not stored: {why}")
            _fail(batch, error)
            if not self._in_flight:  # nobody else would take these
                _fail(self._waiting, error)
                self._waiting = []
        if self._waiting and len(self._in_flight) < self._calls:
            self._start(asyncio.get_running_loop())  # added after its loop ended


def _stored_records(
    batch: list[tuple[NewTask, asyncio.Future[InvokeCode]]], codes: list[InvokeCode]
) -> dict[str, Any]:
    """Task id -> the invoker's own record, of the tasks the batch stored."""
    return {
        task.task_id: task.local
        for (task, _), code in zip(batch, codes, strict=True)
        if code is InvokeCode.STORED
    }


def _fail(waiting: list[tuple[NewTask, asyncio.Future[InvokeCode]]], error: StoreError) -> None:
    for _, future in waiting:  # each its own copy, so tracebacks stay apart
        if not future.done():
            future.set_exception(type(error)(*error.args))
