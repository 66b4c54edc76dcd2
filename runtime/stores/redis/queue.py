"""The shared queue: one Redis Stream per function, one consumer group, each node a consumer.

A node takes only as many entries as it has free slots (``fetch``), and the
same script that reads them claims their tasks, so "dequeued" still means "a
slot on this node is reserved" and nothing is prefetched that an idle node
could have run. When a stream is empty the node waits with ``wait_for_entries``
(XREAD BLOCK on the function's bell, which delivers nothing: cancelling it loses no
work) and fetches again when it rings. A script that queues entries rings the bell
unless its own take emptied the stream again (a node running what it invokes wakes
nobody, itself included). Delayed starts and retry backoffs wait in one due
set; ``move_due`` moves what is due into the streams, exactly once whichever
node runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Mapping
from typing import Any

import msgpack

from . import scripts
from .client import MAX_BLOCK, BlockingReader, RedisConnection
from .keys import GROUP
from .replies import fields, text


@dataclasses.dataclass(slots=True)  # not frozen: one per task, and 5x cheaper to build
class Claimed:
    """A task this node now holds: write its transitions with ``epoch`` (the fencing token).

    ``previous_owner`` is "" for a task taken from the queue, else the node that
    held it before (a dead node, or this node after a lost reply): the task's
    state is then ``status`` as that node left it, and the recovery rules apply.
    """

    task_id: str
    function: str
    stream_id: str
    epoch: int
    status: str
    blob: bytes
    previous_owner: str
    #: the invoking node's own record (``NewTask.local``) of a task it took in its invoke
    #: call, which then returned no blob; else None
    local: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def recovered(self) -> bool:
        return self.previous_owner != ""


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    """What one ``fetch`` got, per function, and where each stream ended."""

    claimed: dict[str, list[Claimed]]
    #: per function: the id of the last entry in its stream ("0-0" if empty)
    last_ids: dict[str, str]
    #: per function: the id of the last ring of its bell ("0-0" if none): wait after it
    bells: dict[str, str] = dataclasses.field(default_factory=dict)
    #: True when this node's heartbeat is gone: it took nothing and must not take work
    lapsed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """One function's queue as Redis sees it (for metrics)."""

    depth: int  #: entries not yet taken by any node
    pending: int  #: entries taken and not yet acknowledged (tasks under way)


#: Tasks one fetch takes per function at most (more free slots fetch again): one script
#: never holds the single-threaded server for long.
MAX_FETCH = 1000


class RedisQueue:
    """One node's view of the functions' streams."""

    def __init__(self, conn: RedisConnection, node: str, *, pinned_clock: bool = False) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.node = node
        self.pinned = "1" if pinned_clock else ""  #: see RecordStore.pinned

    async def fetch(self, wanted: Mapping[str, int]) -> Fetched:
        """Take up to ``wanted[fn]`` (at most ``MAX_FETCH``) new tasks of each function,
        in one round trip.

        Each returned task is claimed (owner = this node, epoch + 1). Entries whose
        task finished or was stopped while queued are acknowledged and skipped.
        """
        args: list[Any] = [self.keys.base, self.node]
        for function, count in wanted.items():
            if count > 0:
                args += (function, min(count, MAX_FETCH))
        if len(args) == 2:
            return Fetched({}, {})
        return parse_fetched(await self.conn.run(scripts.fetch, args))

    async def wait_for_entries(
        self,
        after: Mapping[str, str],
        timeout: float,
        *,
        reader: BlockingReader | None = None,
    ) -> set[str]:
        """Wait until a function's bell rang after ``after[fn]`` (from ``Fetched.bells``):
        its stream got entries that the call queueing them did not take.

        Returns the functions whose bell rang (their entries possibly already taken by
        another node: fetch again to see), or an empty set after ``timeout`` seconds
        (capped a little under the socket timeout; call again to wait longer).
        """
        if not after:
            return set()
        block_ms = max(1, int(min(timeout, MAX_BLOCK) * 1000))
        bells = [self.keys.bell(function) for function in after]
        calls = self.conn if reader is None else reader  # the latter: a connection of its own
        reply = await calls.command(
            "XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *bells, *after.values()
        )
        if not reply:
            return set()
        pairs = reply.items() if isinstance(reply, dict) else ((i[0], i[1]) for i in reply)
        start = len(self.keys.bell(""))  # "<prefix>:b:"
        return {text(name)[start:] for name, entries in pairs if entries}

    async def move_due(self, limit: int = 1000) -> tuple[int, float | None]:
        """Queue every retry or delayed start that is due (by Redis' clock), up to ``limit``.

        Returns how many moved and in how many seconds the next one is due (0 if
        more are due already; None if none waits). Safe to run on every node at
        once: each member moves exactly once.
        """
        moved, next_ms = await self.conn.run(scripts.move_due, (self.keys.base, limit, self.pinned))
        return int(moved), (float(next_ms) / 1000 if next_ms not in (b"", "", None) else None)

    async def adopt(
        self, functions: Iterable[str], known: Container[str], *, page: int = 500
    ) -> list[Claimed]:
        """Claim again the entries of this node's own pending list it does not hold.

        A node that lost the reply of a ``fetch`` (or of a reclaim) owns tasks it
        never heard of; call this after a reconnect and on start (a node that
        restarts under a fixed ``node_id`` finds its previous life's tasks here),
        with ``known`` = every task id the node holds, while no fetch is under way.
        Returned tasks come with ``previous_owner`` = this node: recover them.
        """
        entries: list[tuple[str, str, str]] = []
        for function in functions:
            entries += await self._own_pending(function, known, page)
        function_of = {task_id: function for function, _, task_id in entries}
        claimed: list[Claimed] = []
        for start in range(0, len(entries), page):
            chunk = msgpack.packb(entries[start : start + page], use_bin_type=False)
            reply = await self.conn.run(scripts.adopt, [self.keys.base, self.node, chunk])
            claimed += [
                dataclasses.replace(item, function=function_of[item.task_id])
                for item in parse_claimed("", reply)
            ]
        return claimed

    async def _own_pending(
        self, function: str, known: Container[str], page: int
    ) -> list[tuple[str, str, str]]:
        """(function, entry id, task id) of this node's pending entries it does not hold."""
        stream = self.keys.stream(function)
        found: list[tuple[str, str, str]] = []
        start = "0"
        while True:  # XREADGROUP with an id reads this consumer's own pending entries
            reply = await self.conn.command(
                "XREADGROUP", "GROUP", GROUP, self.node, "COUNT", page, "STREAMS", stream, start
            )
            entries = _stream_entries(reply)
            for eid, task_id in entries:
                if task_id is None:  # deleted meanwhile: adopt drops it from the list
                    found.append((function, eid, ""))
                elif task_id not in known:
                    found.append((function, eid, task_id))
            if len(entries) < page:
                return found
            start = entries[-1][0]

    async def stats(self, functions: Iterable[str]) -> dict[str, QueueStats]:
        """Queue depth and pending entries of each function, in one round trip."""
        names = list(functions)
        if not names:
            return {}
        reply = await self.conn.run(scripts.queue_stats, [self.keys.base, *names])
        result: dict[str, QueueStats] = {}
        for i, function in enumerate(names):
            depth, pending = int(reply[2 * i]), int(reply[2 * i + 1])
            result[function] = QueueStats(depth=depth, pending=pending)
        return result

    async def due_count(self) -> int:
        """Tasks waiting out a retry backoff or a delayed start (all functions)."""
        count: int = await self.conn.command("ZCARD", self.keys.due)
        return count


def parse_fetched(reply: list[Any], local: Mapping[str, Any] | None = None) -> Fetched:
    """A FETCH reply (or the taking part of an INVOKE_BATCH reply) as Fetched; ``local``
    maps the ids of tasks the caller has the record of to it (``Claimed.local``)."""
    if not reply:
        return Fetched({}, {})
    if reply[0] == -1:
        return Fetched({}, {}, lapsed=True)
    claimed: dict[str, list[Claimed]] = {}
    last_ids: dict[str, str] = {}
    bells: dict[str, str] = {}
    at = 1
    while at < len(reply):
        function, last, count = text(reply[at]), text(reply[at + 1]), int(reply[at + 3])
        bells[function] = text(reply[at + 2])
        at += 4
        claimed[function] = parse_claimed(function, reply[at : at + 6 * count], local)
        last_ids[function] = last
        at += 6 * count
    return Fetched(claimed, last_ids, bells)


def parse_claimed(
    function: str, flat: list[Any], local: Mapping[str, Any] | None = None
) -> list[Claimed]:
    """A script's claimed items, six values each (task id, entry id, epoch, status, blob,
    previous owner), as Claimed (an item without a blob gets ``local``'s record)."""
    items: list[Claimed] = []
    for i in range(0, len(flat), 6):
        task_id, eid, epoch, status, blob, previous = flat[i : i + 6]
        task_id = text(task_id)
        items.append(
            Claimed(
                task_id,
                function,
                text(eid),
                int(epoch),
                text(status),
                bytes(blob),
                text(previous),
                local.get(task_id) if local is not None and not blob else None,
            )
        )
    return items


def _stream_entries(reply: Any) -> list[tuple[str, str | None]]:
    """(entry id, task id or None if deleted) from an XREADGROUP reply for one stream."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries: list[tuple[str, str | None]] = []
    for raw in streams[0]:
        value = fields(raw[1]).get("t") if raw[1] else None
        entries.append((text(raw[0]), None if value is None else text(value)))
    return entries
