"""The store interface: every task record goes through one of these."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from ..listing import Query
from ..record import TaskRecord


class Store(Protocol):
    """Where task records live. The runtime calls it only from the event loop thread.

    ``add`` and ``update`` sit on the hot path, so they are plain calls: ``add``
    returns None when the record is stored already (memory) or an awaitable that
    completes once it is durable; ``update`` never waits (a durable store batches
    it). Reads are coroutines because a durable store may have to go to disk.
    """

    url: str
    #: True when accepted tasks survive the process (what close() tells users).
    durable: bool
    #: True when several runtimes share it (a cluster of nodes): False for memory, sqlite.
    shared: bool
    #: False when the store keeps the live record object, so ``update`` has nothing to do.
    writes_updates: bool
    #: Damaged records this store moved aside (and skipped) since it opened.
    quarantined: int

    async def open(self) -> list[TaskRecord]:
        """Open the store; returns the unfinished records to recover (none for memory)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the store answers now (readiness)."""
        ...

    def add(self, record: TaskRecord) -> Awaitable[object] | None:
        """Store a new Enqueued record; raises ``TaskExistsError`` if its id is taken.

        A store that writes later returns what to await (its value is not used)."""
        ...

    def update(self, record: TaskRecord) -> None:
        """The record changed (one transition appended); persist it when convenient."""
        ...

    def finished(self, record: TaskRecord) -> None:
        """The record is terminal: from now on retention rules apply to it."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, None if unknown; ``TaskNotFoundError`` if it was quarantined."""
        ...

    async def list(self, query: Query) -> list[TaskRecord]:
        """Up to ``query.limit + 1`` records matching every filter, in the query's order
        (``(created_at, task_id)``, newest first unless ``query.order`` is "asc"),
        strictly after ``query.start_after`` when it is set."""
        ...

    def evict(self) -> int:
        """Apply retention now; returns how many records were dropped."""
        ...
