"""Paged listing: :class:`TaskList` and its opaque, versioned cursors.

Tasks are ordered by ``(created_at, task_id)`` — newest first by default — and a
page ends at a key; the next page starts strictly after it. New tasks invoked
while a caller pages never shift what it has not read yet, so following the
cursors yields every matching task exactly once, in order. A cursor remembers a
digest of the filters it was made for, and is refused for another listing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from typing import Any

import msgpack

from .errors import ConfigError
from .record import TaskRecord

CURSOR_VERSION = 1
ORDERS = ("desc", "asc")
MAX_LIMIT = 1000
Key = tuple[float, str]  # (created_at, task_id): the listing's order


class TaskList(list[TaskRecord]):
    """One page of ``rt.list``: the records, and the cursor of the next page (None at the end)."""

    next_cursor: str | None

    def __init__(self, records: list[TaskRecord], next_cursor: str | None = None) -> None:
        super().__init__(records)
        self.next_cursor = next_cursor

    def __repr__(self) -> str:
        return f"TaskList({list.__repr__(self)}, next_cursor={self.next_cursor!r})"


class Query:
    """A checked listing request: filters, order, page size and where the page starts."""

    __slots__ = (
        "created_after",
        "created_before",
        "function",
        "limit",
        "order",
        "prefix",
        "start_after",
        "status",
    )

    def __init__(  # noqa: PLR0917 - the arguments of rt.list, checked once here
        self,
        function: Any,  # what callers passed, checked below (typed narrower, a compiled
        status: Any,  # caller would refuse a wrong type with a bare TypeError first)
        prefix: Any,
        limit: Any,
        created_after: Any,
        created_before: Any,
        order: Any,
        cursor: Any,
    ) -> None:
        for key, value in (("function", function), ("prefix", prefix)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key}={value!r} must be a str or None")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise ConfigError(f"limit={limit!r} must be an integer from 1 to {MAX_LIMIT}")
        for key, bound in (("created_after", created_after), ("created_before", created_before)):
            if bound is not None and (
                not isinstance(bound, int | float)
                or isinstance(bound, bool)
                or not math.isfinite(bound)
            ):
                raise ConfigError(f"{key}={bound!r} must be epoch seconds (a number) or None")
        if order not in ORDERS:
            raise ConfigError(f"order={order!r} must be 'desc' (newest first) or 'asc'")
        self.function: str | None = function
        self.status: str | None = status
        self.prefix: str | None = prefix
        self.limit: int = limit
        self.created_after = None if created_after is None else float(created_after)
        self.created_before = None if created_before is None else float(created_before)
        self.order: str = order
        self.start_after: Key | None = None if cursor is None else self._decode(cursor)

    @property
    def descending(self) -> bool:
        return self.order == "desc"

    def matches(self, record: TaskRecord) -> bool:
        """Every filter but the page position (for stores that filter in Python)."""
        created = record.created_at
        return (
            (self.function is None or record.function == self.function)
            and (self.status is None or record.status == self.status)
            and (self.prefix is None or record.task_id.startswith(self.prefix))
            and (self.created_after is None or created > self.created_after)
            and (self.created_before is None or created < self.created_before)
        )

    def after_start(self, key: Key) -> bool:
        """True when ``key`` comes after the page's start in the listing's order."""
        start = self.start_after
        if start is None:
            return True
        return key < start if self.descending else key > start

    def page(self, records: list[TaskRecord]) -> TaskList:
        """Cut what a store returned (up to ``limit + 1`` records, in order) into a page."""
        if len(records) <= self.limit:
            return TaskList(records)
        kept = records[: self.limit]
        last = kept[-1]
        return TaskList(kept, self._encode((last.created_at, last.task_id)))

    # cursors -------------------------------------------------------------------------

    def _digest(self) -> bytes:
        parts = (
            self.function,
            self.status,
            self.prefix,
            self.created_after,
            self.created_before,
            self.order,
        )
        return hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()

    def _encode(self, key: Key) -> str:
        raw = msgpack.packb([CURSOR_VERSION, key[0], key[1], self._digest()], use_bin_type=True)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _decode(self, cursor: str) -> Key:
        fields = _unpack_cursor(cursor)
        if fields[3] != self._digest():
            raise ConfigError(
                "this cursor belongs to a listing with other filters or order: pass the same "
                "function, status, prefix, time range and order as the call that returned it"
            )
        return (fields[1], fields[2])


def _unpack_cursor(cursor: object) -> tuple[Any, ...]:
    bad = ConfigError(
        f"cursor={cursor!r} is not a cursor from rt.list (pass next_cursor exactly as returned)"
    )
    if not isinstance(cursor, str) or len(cursor) > 512:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = msgpack.unpackb(
            raw, raw=False, use_list=False, max_str_len=256, max_bin_len=64, max_array_len=8,
            max_map_len=0, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
        raise bad from None
    ok = (
        isinstance(fields, tuple)
        and len(fields) == 4
        and fields[0] == CURSOR_VERSION
        and isinstance(fields[1], float)
        and isinstance(fields[2], str)
        and isinstance(fields[3], bytes)
    )
    if not ok:
        raise bad
    return tuple(fields)
