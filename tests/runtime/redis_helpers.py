"""Small tools for the Redis layer's tests: a node's pieces on one connection, quick tasks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from runtime.stores.redis import (
    Claimed,
    FunctionRegistry,
    InvokeCode,
    NewTask,
    NodeRegistry,
    Reclaimer,
    RecordStore,
    RedisConnection,
    RedisQueue,
    Transition,
    WriteResult,
    parse_redis_url,
)


class Node:
    """What one runtime process holds of the cluster: its connection and each layer on it."""

    def __init__(self, conn: RedisConnection, node_id: str) -> None:
        self.conn = conn
        self.node_id = node_id
        self.keys = conn.keys
        self.records = RecordStore(conn)
        self.queue = RedisQueue(conn, node_id)
        self.nodes = NodeRegistry(conn, node_id)
        self.functions = FunctionRegistry(conn, node_id)
        self.reclaimer = Reclaimer(conn, node_id, page=7)

    async def register(self, *names: str) -> None:
        for name in names:
            await self.functions.register(name, "async", b"\x80", now=1.0)

    async def invoke(
        self,
        function: str,
        *task_ids: str,
        created: float | None = None,
        delay_ms: int | None = None,
    ) -> list[InvokeCode]:
        tasks = [
            NewTask(
                tid, function, created if created is not None else 1000.0 + i, blob(tid), delay_ms
            )
            for i, tid in enumerate(task_ids)
        ]
        return await self.records.invoke_many(tasks)

    async def publish_change(self, function: str, task_id: str) -> None:
        """A write the change feed announces: ``task_id`` invoked, waited on (a read that
        asks for its changes), taken, moved to Running (an invoke alone is not announced,
        nor a change of a task nobody waits on)."""
        await self.invoke(function, task_id)
        assert await self.records.get(task_id, watch=True) is not None
        [claimed] = await self.fetch(function, 1)
        assert (await self.move(claimed, "Running")).ok

    async def fetch(self, function: str, count: int) -> list[Claimed]:
        fetched = await self.queue.fetch({function: count})
        assert not fetched.lapsed
        return fetched.claimed.get(function, [])

    async def move(
        self,
        claimed: Claimed | tuple[str, int, str],
        new_status: str,
        flags: int = 0,
        *,
        delay_ms: int | None = None,
        token: str = "",
        owner: str | None = None,
    ) -> WriteResult:
        """One compare-and-set from the state a claim left (or (task id, epoch, status))."""
        if isinstance(claimed, Claimed):
            task_id, epoch, status = claimed.task_id, claimed.epoch, claimed.status
        else:
            task_id, epoch, status = claimed
        item = Transition(
            task_id,
            status,
            self.node_id if owner is None else owner,
            epoch,
            new_status,
            blob(task_id, new_status),
            flags,
            delay_ms,
            token,
        )
        [result] = await self.records.transition([item], node=self.node_id)
        return result


def blob(task_id: str, status: str = "Enqueued") -> bytes:
    """A stand-in record blob (the layer treats blobs as opaque bytes)."""
    return f"{task_id}|{status}".encode()


@contextlib.asynccontextmanager
async def open_nodes(url: str, *node_ids: str, join: bool = True) -> AsyncIterator[list[Node]]:
    """Nodes on their own connections (as separate processes would be), joined if asked."""
    conns: list[RedisConnection] = []
    nodes: list[Node] = []
    try:
        for node_id in node_ids:
            conn = RedisConnection(parse_redis_url(url), client_name=node_id)
            conns.append(conn)
            await conn.connect()
            node = Node(conn, node_id)
            if join:
                await node.nodes.join()
            nodes.append(node)
        yield nodes
    finally:
        for conn in conns:
            await conn.close()


async def make_all_due(conn: RedisConnection) -> None:
    """Every task waiting in the due set is due now (instead of sleeping until it is)."""
    await conn.command("ZUNIONSTORE", conn.keys.due, 1, conn.keys.due, "WEIGHTS", 0)


async def keys_of(conn: RedisConnection, pattern: str = "*") -> list[str]:
    found: Sequence[Any] = await conn.command("KEYS", conn.keys.base + pattern)
    return sorted(k.decode() for k in found)


async def zmembers(conn: RedisConnection, key: str) -> list[str]:
    found: Sequence[Any] = await conn.command("ZRANGE", key, 0, -1)
    return [m.decode() for m in found]
