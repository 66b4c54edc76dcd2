"""The default store: records in a dict, bounded by retention so a service never grows forever."""

from __future__ import annotations

import logging
from collections import deque

from actors import Clock

from ..errors import TaskExistsError, TaskNotFoundError
from ..record import TaskRecord
from ..states import NAME, TaskState
from ..wire import WireFormatError, pack_record, unpack_record

logger = logging.getLogger("stint")

# A finished record is kept as (function, status, packed bytes): a tuple of atomic
# values, which the garbage collector stops tracking, and ~200 bytes of payload.
Finished = tuple[str, str, bytes]

DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_AGE = 3600.0


class MemoryStore:
    """Records live as long as the process, and terminal ones only within retention.

    Terminal records are dropped oldest-ended first once there are more than
    ``max_records`` of them, or once they ended more than ``max_age`` seconds
    ago. Unfinished tasks are never dropped.
    """

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

    def __len__(self) -> int:
        return len(self._records)

    async def open(self) -> list[TaskRecord]:
        return []

    async def close(self) -> None:
        return None

    def add(self, record: TaskRecord) -> None:
        if record.task_id in self._records:
            raise TaskExistsError(
                f"a task with id {record.task_id!r} already exists; pick another id, or omit "
                "task_id to get a generated one"
            )
        self._records[record.task_id] = record

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
            return unpack_record(entry[2])
        except WireFormatError as exc:
            logger.warning("stint memory store: task %r quarantined: %s", task_id, exc)
            return None

    def _quarantine(self, task_ids: list[str]) -> None:
        """Drop records that do not unpack, and count them (nothing to keep them in)."""
        for task_id in task_ids:
            del self._records[task_id]
        self.quarantined += len(task_ids)

    async def list(
        self,
        *,
        function: str | None,
        status: TaskState | None,
        prefix: str | None,
        limit: int,
    ) -> list[TaskRecord]:
        found: list[TaskRecord] = []
        if limit <= 0:
            return found
        # insertion order is creation order, so walking backwards is newest first
        damaged: list[str] = []
        for task_id, entry in reversed(self._records.items()):
            if prefix is not None and not task_id.startswith(prefix):
                continue
            if isinstance(entry, TaskRecord):
                fn, state = entry.function, NAME[entry.status]
            else:
                fn, state = entry[0], entry[1]
            if (function is not None and fn != function) or (
                status is not None and state != status
            ):
                continue
            record = entry if isinstance(entry, TaskRecord) else self._unpack(task_id, entry)
            if record is None:
                damaged.append(task_id)
                continue
            found.append(record)
            if len(found) >= limit:
                break
        self._quarantine(damaged)
        return found

    def evict(self) -> int:
        ended = self._ended
        horizon = self._clock.monotonic() - self.max_age
        count = 0
        while ended and ended[0][0] < horizon:
            _, task_id = ended.popleft()
            self._records.pop(task_id, None)
            count += 1
        return count

    def _drop(self, count: int) -> None:
        for _ in range(count):
            _, task_id = self._ended.popleft()
            self._records.pop(task_id, None)
