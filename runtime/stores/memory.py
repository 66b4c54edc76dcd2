"""The default store: records in a dict, bounded by retention so a service never grows forever."""

from __future__ import annotations

import bisect
import logging
from collections import deque

from actors import Clock

from ..errors import TaskExistsError, TaskNotFoundError
from ..listing import Key, Query
from ..record import TaskRecord
from ..states import NAME
from ..wire import WireFormatError, pack_record, unpack_record

logger = logging.getLogger("stint")

_DAMAGED = TaskRecord("_damaged", "_", b"\xc0", 0.0)  # a marker: a record that won't unpack
_AFTER_ANY_ID = "\U0010ffff"  # sorts after every task id: (t, this) follows all keys at t

# A finished record is kept as (function, status, created_at, packed bytes): a tuple of
# atomic values, which the garbage collector stops tracking, and ~200 bytes of payload.
Finished = tuple[str, str, float, bytes]

DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_AGE = 3600.0


class MemoryStore:
    """Records live as long as the process, and terminal ones only within retention.

    Terminal records are dropped oldest-ended first once there are more than
    ``max_records`` of them, or once they ended more than ``max_age`` seconds
    ago. Unfinished tasks are never dropped.
    """

    durable = False
    shared = False
    writes_updates = False

    def __init__(
        self,
        clock: Clock,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_age: float = DEFAULT_MAX_AGE,
        url: str = "memory://",
    ) -> None:
        self.url = url
        self.max_records = max_records
        self.max_age = max_age
        #: Packed records that did not unpack (a bug): dropped, counted and logged.
        self.quarantined = 0
        self._clock = clock
        self._records: dict[str, TaskRecord | Finished] = {}
        self._ended: deque[tuple[float, str]] = deque()  # (monotonic end, task id), oldest first
        # every (created_at, task_id) in order, for paging; keys of dropped records linger
        # until there are too many of them (``_stale``)
        self._order: list[Key] = []
        self._stale = 0

    def __len__(self) -> int:
        return len(self._records)

    async def open(self) -> list[TaskRecord]:
        return []

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None  # in this process: it always answers

    def add(self, record: TaskRecord) -> None:
        if record.task_id in self._records:
            raise TaskExistsError(
                f"a task with id {record.task_id!r} already exists; pick another id, or omit "
                "task_id to get a generated one"
            )
        self._records[record.task_id] = record
        key = (record.created_at, record.task_id)
        order = self._order
        if not order or key > order[-1]:
            order.append(key)
        else:  # created out of order (a clock set back): still findable in order
            bisect.insort(order, key)

    def update(self, record: TaskRecord) -> None:
        return None  # the dict holds the very object the task actor changes

    def finished(self, record: TaskRecord) -> None:
        """Pack the record for retention; one that cannot be packed is kept whole instead.

        Never raises: the runtime wakes the task's waiters right after this call.
        """
        try:
            self._records[record.task_id] = (
                record.function,
                NAME[record.status],
                record.created_at,
                pack_record(record),
            )
        except Exception as exc:  # a bug in a field: keep the record readable all the same
            logger.error(
                "stint memory store: task %s cannot be packed (%r); it is kept unpacked",
                record.task_id,
                exc,
            )
        self._ended.append((self._clock.monotonic(), record.task_id))
        if len(self._ended) > self.max_records:
            self._drop(len(self._ended) - self.max_records)

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None if unknown; raises ``TaskNotFoundError`` if it was quarantined."""
        found = self._records.get(task_id)
        if found is None or isinstance(found, TaskRecord):
            return found
        record = self._unpack(task_id, found)
        if record is None:
            self._quarantine([task_id])
            raise TaskNotFoundError(
                f"task {task_id!r} was quarantined: its kept record is damaged (see the log); "
                "invoke it again if the work must still be done"
            )
        return record

    def _unpack(self, task_id: str, entry: Finished) -> TaskRecord | None:
        """The packed record, or None (logged) if it does not unpack."""
        try:
            return unpack_record(entry[3])
        except WireFormatError as exc:
            logger.warning("stint memory store: task %r quarantined: %s", task_id, exc)
            return None

    def _quarantine(self, task_ids: list[str]) -> None:
        """Drop records that do not unpack, and count them (nothing to keep them in)."""
        for task_id in task_ids:
            del self._records[task_id]
        self.quarantined += len(task_ids)

    async def list(self, query: Query) -> list[TaskRecord]:
        """Up to ``query.limit + 1`` matching records, in the query's order."""
        order = self._order
        lo, hi = 0, len(order)
        if query.created_after is not None:
            lo = bisect.bisect_right(order, (query.created_after, _AFTER_ANY_ID))
        if query.created_before is not None:
            hi = bisect.bisect_left(order, (query.created_before, ""))
        start = query.start_after
        if query.descending:
            if start is not None:
                hi = min(hi, bisect.bisect_left(order, start))
            positions: range = range(hi - 1, lo - 1, -1)
        else:
            if start is not None:
                lo = max(lo, bisect.bisect_right(order, start))
            positions = range(lo, hi)
        found: list[TaskRecord] = []
        wanted = query.limit + 1
        damaged: list[str] = []
        for position in positions:
            key = order[position]
            record = self._matching(key, query)
            if record is _DAMAGED:
                damaged.append(key[1])
            elif record is not None:
                found.append(record)
                if len(found) >= wanted:
                    break
        self._quarantine(damaged)
        return found

    def _matching(self, key: Key, query: Query) -> TaskRecord | None:
        """The record at ``key`` if it matches, None if not, ``_DAMAGED`` if it won't unpack."""
        created_at, task_id = key
        entry = self._records.get(task_id)
        if entry is None or (query.prefix is not None and not task_id.startswith(query.prefix)):
            return None
        if isinstance(entry, TaskRecord):
            if entry.created_at != created_at:
                return None  # a stale key of an id used again
            return entry if query.matches(entry) else None
        function, status, created, _ = entry
        if created != created_at:
            return None
        if (query.function is not None and function != query.function) or (
            query.status is not None and status != query.status
        ):
            return None
        record = self._unpack(task_id, entry)
        return _DAMAGED if record is None else record

    def evict(self) -> int:
        ended = self._ended
        horizon = self._clock.monotonic() - self.max_age
        count = 0
        while ended and ended[0][0] < horizon:
            _, task_id = ended.popleft()
            self._records.pop(task_id, None)
            count += 1
        self._forgot(count)
        return count

    def _drop(self, count: int) -> None:
        for _ in range(count):
            _, task_id = self._ended.popleft()
            self._records.pop(task_id, None)
        self._forgot(count)

    def _forgot(self, count: int) -> None:
        """``count`` records went: rebuild the order once most of its keys are stale."""
        self._stale += count
        if self._stale > 1000 and self._stale * 2 > len(self._order):
            records = self._records
            self._order = [key for key in self._order if key[1] in records]
            self._stale = 0
