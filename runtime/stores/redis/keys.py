"""Every Redis key stint uses, in one place: all of them start with ``<prefix>:``.

The Lua scripts build the same names from the prefix (``scripts.py``); the two
must agree, and ``tests/runtime/test_redis_keys.py`` holds them together.
See docs/cluster.md for what each key holds.
"""

from __future__ import annotations

import re

#: The one consumer group of every function's stream; each node is a consumer.
GROUP = "workers"
#: Separates the parts of a sorted-set member (never in a function name or task id).
SEP = "\x00"

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class RedisKeys:
    """The key names under one prefix (``P`` below stands for ``prefix + ":"``)."""

    __slots__ = (
        "base",
        "changed",
        "clock",
        "due",
        "ended",
        "fns",
        "idx_all",
        "joining",
        "nodes",
        "prefix",
        "streams",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = prefix + ":"  #: what every key starts with, and what the scripts get
        self.idx_all = self.base + "i:all"  #: zset created_at -> task id, every record
        self.fns = self.base + "fns"  #: set of registered function names
        self.streams = self.base + "qs"  #: set of function names that have (had) a stream
        self.due = self.base + "due"  #: zset due ms -> "<fn>\0<task id>"
        self.ended = self.base + "ended"  #: zset expiry ms -> "<fn>\0<status>\0<task id>"
        self.nodes = self.base + "nodes"  #: set of node ids that joined and were not reclaimed
        self.changed = self.base + "changed"  #: pub/sub channel: changed task ids
        #: string with a TTL: a join runs somewhere, so every change is published
        self.joining = self.base + "joining"
        #: string, ms: a test's manual clock, which the scripts then use instead of TIME
        #: (set only by a runtime built with a ManualClock; never in production)
        self.clock = self.base + "clock"

    def task(self, task_id: str) -> str:
        """Hash: the record blob and its status, function, owner, epoch, stream entry."""
        return f"{self.base}t:{task_id}"

    def watched(self, task_id: str) -> str:
        """String with a TTL: someone off the task's owner waits on it, so its changes are
        published on ``changed``."""
        return f"{self.base}w:{task_id}"

    def idx_function(self, function: str) -> str:
        return f"{self.base}i:fn:{function}"

    def idx_status(self, status: str) -> str:
        return f"{self.base}i:st:{status}"

    def idx_function_status(self, function: str, status: str) -> str:
        return f"{self.base}i:fs:{function}:{status}"

    def stream(self, function: str) -> str:
        """Stream of the function's queued tasks (field ``t`` = task id), group ``workers``."""
        return f"{self.base}q:{function}"

    def bell(self, function: str) -> str:
        """Stream rung when the function's stream gets entries no node took in the same
        call (capped): a node with free slots waits on it (XREAD) to fetch."""
        return f"{self.base}b:{function}"

    def function(self, name: str) -> str:
        """Hash: a registered function's kind, config and registration times."""
        return f"{self.base}fn:{name}"

    def node(self, node_id: str) -> str:
        """Hash with a TTL: a live node's heartbeat."""
        return f"{self.base}node:{node_id}"

    def control(self, node_id: str) -> str:
        """Stream of stop requests for one node."""
        return f"{self.base}ctl:{node_id}"

    def reclaim_lock(self, node_id: str) -> str:
        """String with a TTL: which live node is reclaiming this dead one."""
        return f"{self.base}reclaim:{node_id}"

    def index(self, function: str | None, status: str | None) -> str:
        """The one index that answers a list by these filters (the narrowest there is)."""
        if function is not None and status is not None:
            return self.idx_function_status(function, status)
        if function is not None:
            return self.idx_function(function)
        if status is not None:
            return self.idx_status(status)
        return self.idx_all
