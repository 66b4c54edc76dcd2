"""The default store: records in a dict, bounded by retention so a service never grows forever."""

from __future__ import annotations

import bisect
from collections import deque

from actors import Clock

from ..errors import TaskExistsError
from ..listing import Key, Query
from ..record import TaskRecord
from ..states import NAME
from ..wire import pack_record, unpack_record

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
        self._records[record.task_id] = (
            record.function,
            NAME[record.status],
            record.created_at,
            pack_record(record),
        )
        self._ended.append((self._clock.monotonic(), record.task_id))
        if len(self._ended) > self.max_records:
            self._drop(len(self._ended) - self.max_records)

    async def get(self, task_id: str) -> TaskRecord | None:
        found = self._records.get(task_id)
        if found is None or isinstance(found, TaskRecord):
            return found
        return unpack_record(found[3])

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
        for position in positions:
            record = self._matching(order[position], query)
            if record is not None:
                found.append(record)
                if len(found) >= wanted:
                    break
        return found

    def _matching(self, key: Key, query: Query) -> TaskRecord | None:
        created_at, task_id = key
        entry = self._records.get(task_id)
        if entry is None or (query.prefix is not None and not task_id.startswith(query.prefix)):
            return None
        if isinstance(entry, TaskRecord):
            if entry.created_at != created_at:
                return None  # a stale key of an id used again
            return entry if query.matches(entry) else None
        function, status, created, blob = entry
        if created != created_at:
            return None
        if (query.function is not None and function != query.function) or (
            query.status is not None and status != query.status
        ):
            return None
        return unpack_record(blob)

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
