"""Nodes and functions of the cluster: heartbeats with a lease, and the function registry.

A node is alive while its heartbeat hash (``P node:<id>``) exists: it lives for
``lease`` seconds and is renewed every lease / 3. A node whose heartbeat is gone
is dead to the others, who reclaim its work (``reclaim.py``); it takes no new work
itself (``fetch`` refuses a lapsed node), and if it comes back before it was
reclaimed, it simply carries on.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ...errors import StoreError
from . import scripts
from .client import RedisConnection
from .replies import fields as hash_fields
from .replies import text

logger = logging.getLogger("stint")

MAX_FUNCTIONS = 10_000  # a node hash listing more functions than this is refused as malformed
_UNPACK_LIMITS = {
    "max_array_len": MAX_FUNCTIONS,
    "max_map_len": 0,
    "max_bin_len": 0,
    "max_ext_len": 0,
}


class Beat(enum.IntEnum):
    """What a heartbeat found."""

    OK = 1
    #: the lease had lapsed and nobody was reclaiming: the node is back; tasks reclaimed
    #: meanwhile are no longer its own (their late writes are fenced)
    CAME_BACK = 2
    #: the lease lapsed and another node is reclaiming this one now: try again shortly
    BEING_RECLAIMED = -1


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node of the cluster, as ``rt.nodes()`` returns it."""

    node_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    functions: tuple[str, ...]
    in_flight: int


class NodeRegistry:
    """This node's heartbeat, and what the cluster's nodes are.

    ``clock`` gives epoch seconds for the timestamps nodes publish (the
    runtime's clock); ``monotonic`` measures how long ago the lease was last
    renewed, for ``lease_valid``.
    """

    def __init__(
        self,
        conn: RedisConnection,
        node_id: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.node_id = node_id
        self.lease = conn.options.lease
        self._clock = clock
        self._monotonic = monotonic
        self._renewed_at: float | None = None
        self.started_at = clock()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.came_back = 0  #: times this node's lease lapsed and it came back

    async def join(self, functions: Sequence[str] = (), in_flight: int = 0) -> None:
        """Announce this node; raises :class:`StoreError` if a live node has this id."""
        code = await self._beat("join", functions, in_flight)
        if code == -2:
            raise StoreError(
                f"node id {self.node_id!r} is in use by a live node of this cluster; give each "
                f"runtime its own node_id (if that node just died, its id is free within "
                f"{self.lease:g} s, its lease)"
            )
        if code == Beat.BEING_RECLAIMED:
            raise StoreError(
                f"node id {self.node_id!r} is being reclaimed by another node right now; "
                "start again in a moment, or use another node_id"
            )

    async def beat(self, functions: Sequence[str] = (), in_flight: int = 0) -> Beat:
        """Renew the lease (every lease / 3) and publish what the node serves."""
        code = Beat(await self._beat("beat", functions, in_flight))
        if code is Beat.CAME_BACK:
            self.came_back += 1
            logger.warning(
                "stint: node %s lost its lease (no heartbeat for over %g s); it is back, but "
                "tasks reclaimed meanwhile are no longer its own: their late writes are refused",
                self.node_id,
                self.lease,
            )
        return code

    async def _beat(self, mode: str, functions: Sequence[str], in_flight: int) -> int:
        sent_at = self._monotonic()
        fields: list[Any] = [  # all of them each time: a lapsed hash comes back whole
            "heartbeat_at", repr(self._clock()),
            "functions", msgpack.packb(list(functions)),
            "in_flight", int(in_flight),
            "host", self.host,
            "pid", self.pid,
            "started_at", repr(self.started_at),
        ]  # fmt: skip
        lease_ms = max(1, int(self.lease * 1000))
        code: int = await self.conn.run(
            scripts.node_beat, [self.keys.base, self.node_id, lease_ms, mode, *fields]
        )
        if code > 0:
            self._renewed_at = sent_at  # the lease runs from before the request left
        return code

    def lease_valid(self) -> bool:
        """True while the lease renewed last is certainly still alive in Redis.

        A node stops taking work once this is False (it could not reach Redis for
        a lease): by then another node may be reclaiming its tasks.
        """
        if self._renewed_at is None:
            return False
        return self._monotonic() - self._renewed_at < self.lease

    async def leave(self) -> None:
        """Drop this node's heartbeat so the others reclaim whatever it still holds at once."""
        await self.conn.command("DEL", self.keys.node(self.node_id))
        self._renewed_at = None

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes, by node id."""
        members = sorted(text(m) for m in await self.conn.command("SMEMBERS", self.keys.nodes))
        if not members:
            return []
        rows = await self.conn.commands([("HGETALL", self.keys.node(n)) for n in members])
        live = []
        for node_id, row in zip(members, rows, strict=True):
            info = _node_info(node_id, row)
            if info is not None:
                live.append(info)
        return live

    async def dead_nodes(self) -> list[str]:
        """Nodes that joined, whose heartbeat is gone, and that nobody reclaimed yet."""
        members = sorted(text(m) for m in await self.conn.command("SMEMBERS", self.keys.nodes))
        if not members:
            return []
        alive = await self.conn.commands([("EXISTS", self.keys.node(n)) for n in members])
        return [node for node, exists in zip(members, alive, strict=True) if not exists]


def _node_info(node_id: str, row: Any) -> NodeInfo | None:
    """A node hash as NodeInfo; None if it is gone, or malformed (logged: a bug or a stranger)."""
    if not row:
        return None
    fields = hash_fields(row)
    try:
        functions = msgpack.unpackb(fields.get("functions", b"\x90"), **_UNPACK_LIMITS)
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise ValueError("functions is not a list of names")
        return NodeInfo(
            node_id=node_id,
            host=text(fields.get("host", b"")),
            pid=int(fields.get("pid", 0)),
            started_at=float(fields.get("started_at", 0.0)),
            heartbeat_at=float(fields.get("heartbeat_at", 0.0)),
            functions=tuple(functions),
            in_flight=int(fields.get("in_flight", 0)),
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        logger.error("stint: the heartbeat of node %s is malformed (%s); ignored", node_id, exc)
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A function as registered in the cluster (the last registration wins)."""

    name: str
    kind: str
    config: bytes  #: as the registering node packed it (the runtime decodes it)
    registered_at: float
    updated_at: float
    updated_by: str


class FunctionRegistry:
    """The cluster's functions: ``invoke`` accepts tasks only for registered ones."""

    def __init__(self, conn: RedisConnection, node_id: str) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.node_id = node_id

    async def register(self, name: str, kind: str, config: bytes, *, now: float) -> bool:
        """Record ``name`` cluster-wide (and create its stream); True if it was new."""
        new: int = await self.conn.run(
            scripts.register_function,
            [self.keys.base, name, kind, config, repr(now), self.node_id],
        )
        return bool(new)

    async def delete(self, name: str) -> bool:
        """Remove ``name`` cluster-wide; True if it was registered.

        New invokes of it are refused from then on. Its queued tasks are the
        caller's to end (Invalid: "function deleted"); see docs/cluster.md.
        """
        existed: int = await self.conn.run(scripts.delete_function, [self.keys.base, name])
        return bool(existed)

    async def get(self, name: str) -> FunctionInfo | None:
        row = await self.conn.command("HGETALL", self.keys.function(name))
        return _function_info(name, row)

    async def names(self) -> list[str]:
        return sorted(text(m) for m in await self.conn.command("SMEMBERS", self.keys.fns))

    async def all(self) -> list[FunctionInfo]:
        names = await self.names()
        if not names:
            return []
        rows = await self.conn.commands([("HGETALL", self.keys.function(n)) for n in names])
        found = (_function_info(n, row) for n, row in zip(names, rows, strict=True))
        return [info for info in found if info is not None]


def _function_info(name: str, row: Any) -> FunctionInfo | None:
    if not row:
        return None
    fields = hash_fields(row)
    try:
        return FunctionInfo(
            name=name,
            kind=text(fields.get("kind", b"")),
            config=bytes(fields.get("config", b"")),
            registered_at=float(fields.get("registered_at", 0.0)),
            updated_at=float(fields.get("updated_at", 0.0)),
            updated_by=text(fields.get("updated_by", b"")),
        )
    except (ValueError, TypeError) as exc:
        logger.error("stint: the registration of function %s is malformed (%s)", name, exc)
        return None
