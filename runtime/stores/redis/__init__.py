"""The Redis layer of the cluster store: many runtimes share functions, queues and records.

Self-contained and independent of the runtime's actors: the runtime builds its
``redis://`` store, queue seam and cluster actors on these pieces.

- ``url``: :func:`parse_redis_url` -> :class:`RedisOptions`
- ``keys``: :class:`RedisKeys` (every key name), node ids
- ``scripts``: the Lua scripts and the transition flags
- ``client``: :class:`RedisConnection` (pool, scripts, errors, reconnects), :class:`Backoff`
- ``records``: :class:`RecordStore` (create, compare-and-set, get, list, retention)
- ``writer``: :class:`RecordWriter` (group-commit write-behind), :class:`InvokeBatcher`
- ``queue``: :class:`RedisQueue` (fetch = read + claim, wait, due moves, adopt, stats)
- ``nodes``: :class:`NodeRegistry` (heartbeat, live nodes), :class:`FunctionRegistry`
- ``reclaim``: :class:`Reclaimer` (a dead node's work, followed to the end)
- ``control``: :class:`ControlChannel` (stop requests), :class:`ChangeFeed` (pub/sub)

docs/cluster.md describes the data model, the keys and the scripts.
"""

from __future__ import annotations

from .client import Backoff, RedisConnection, StoreUnavailableError
from .control import ChangeFeed, ControlChannel, StopRequest
from .keys import GROUP, RedisKeys, check_node_id, default_node_id
from .nodes import Beat, FunctionInfo, FunctionRegistry, NodeInfo, NodeRegistry
from .queue import Claimed, Fetched, QueueStats, RedisQueue
from .reclaim import Reclaimer, ReclaimReport
from .records import (
    InvokeCode,
    NewTask,
    Page,
    RecordStore,
    StoredRecord,
    Transition,
    WriteCode,
    WriteResult,
)
from .scripts import ACK, FINAL, NOTIFY, RELEASE, UNQUEUE
from .url import RedisOptions, parse_redis_url, redact
from .writer import InvokeBatcher, RecordWriter

__all__ = [
    "ACK",
    "FINAL",
    "GROUP",
    "NOTIFY",
    "RELEASE",
    "UNQUEUE",
    "Backoff",
    "Beat",
    "ChangeFeed",
    "Claimed",
    "ControlChannel",
    "Fetched",
    "FunctionInfo",
    "FunctionRegistry",
    "InvokeBatcher",
    "InvokeCode",
    "NewTask",
    "NodeInfo",
    "NodeRegistry",
    "Page",
    "QueueStats",
    "ReclaimReport",
    "Reclaimer",
    "RecordStore",
    "RecordWriter",
    "RedisConnection",
    "RedisKeys",
    "RedisOptions",
    "RedisQueue",
    "StopRequest",
    "StoreUnavailableError",
    "StoredRecord",
    "Transition",
    "WriteCode",
    "WriteResult",
    "check_node_id",
    "default_node_id",
    "parse_redis_url",
    "redact",
]
