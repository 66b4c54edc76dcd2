"""Reclaiming a dead node's work: its pending entries, followed to the end, and its tasks.

A node is dead when its heartbeat is gone. One live node at a time takes the
dead node's reclaim lock, moves every entry of the dead node's pending list of
every stream to itself (XPENDING for that consumer, page by page, then XCLAIM),
and takes each task over with owner = itself and epoch + 1, so the dead node's
late writes are refused. The tasks come back as :class:`Claimed` items with
``previous_owner`` = the dead node, in the state it left them: the runtime applies
the recovery rules to them (the same code path as recovery after a restart).
When nothing of the dead node is pending anywhere, it is forgotten.

No visibility timeout is involved: a live node's entries are never touched,
however long its tasks run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from . import scripts
from .client import RedisConnection
from .queue import Claimed, parse_claimed
from .replies import text

logger = logging.getLogger("stint")

PAGE = 200  # pending entries per script call: bounded work per call
MAX_PASSES = 5  # rounds over every stream before giving up for now (entries keep arriving?)


@dataclasses.dataclass(slots=True)
class ReclaimReport:
    """What one ``reclaim`` did."""

    dead: str
    claimed: list[Claimed] = dataclasses.field(default_factory=list)
    pages: int = 0
    #: "done" (forgotten), "busy" (another node reclaims it), "alive" (it came back),
    #: "gone" (reclaimed before), "lost_lock" (took too long; another node may go on),
    #: "unfinished" (entries kept appearing; the next round goes on)
    outcome: str = "done"


class Reclaimer:
    """Reclaims dead nodes for ``node`` (a live node of the cluster)."""

    def __init__(
        self,
        conn: RedisConnection,
        node: str,
        *,
        page: int = PAGE,
        lock_ttl: float | None = None,
    ) -> None:
        self.conn = conn
        self.keys = conn.keys
        self.node = node
        self.page = page
        #: how long the lock outlives a silent reclaimer (renewed on every page)
        self.lock_ttl_ms = int(1000 * (lock_ttl or max(3 * conn.options.lease, 5.0)))
        self.reclaimed = 0  #: tasks taken over from dead nodes (metrics)
        self.nodes_reclaimed = 0

    async def reclaim(
        self, dead: str, on_claimed: Callable[[list[Claimed]], None] | None = None
    ) -> ReclaimReport:
        """Take over everything ``dead`` held; ``on_claimed`` gets each page's tasks at once.

        Returns a report; its ``claimed`` lists every task taken over (also those
        already handed to ``on_claimed``).
        """
        report = ReclaimReport(dead)
        base = self.keys.base
        code = await self.conn.run(scripts.reclaim_lock, [base, dead, self.node, self.lock_ttl_ms])
        if code != 1:
            report.outcome = {0: "busy", -1: "alive", -2: "gone"}[int(code)]
            return report
        logger.warning("stint: node %s is gone (no heartbeat); %s reclaims it", dead, self.node)
        for _ in range(MAX_PASSES):
            for function in await self._functions():
                if not await self._reclaim_stream(dead, function, report, on_claimed):
                    return report
            done = await self.conn.run(scripts.reclaim_finish, [base, dead, self.node])
            if done == 1:
                self.nodes_reclaimed += 1
                logger.warning(
                    "stint: reclaimed node %s: %d task(s) taken over", dead, len(report.claimed)
                )
                return report
            if done < 0:
                report.outcome = "lost_lock" if done == -2 else "alive"
                return report
        report.outcome = "unfinished"
        return report

    async def _functions(self) -> list[str]:
        return sorted(text(m) for m in await self.conn.command("SMEMBERS", self.keys.streams))

    async def _reclaim_stream(
        self,
        dead: str,
        function: str,
        report: ReclaimReport,
        on_claimed: Callable[[list[Claimed]], None] | None,
    ) -> bool:
        """Follow dead's pending list of one stream to its end; False if the reclaim must stop."""
        start = "-"
        while start:
            reply = await self.conn.run(
                scripts.reclaim_page,
                [self.keys.base, dead, self.node, function, start, self.page, self.lock_ttl_ms],
            )
            report.pages += 1
            if reply[0] < 0:
                report.outcome = "lost_lock" if reply[0] == -2 else "alive"
                return False
            start = text(reply[1])
            items = parse_claimed(function, reply[2:])
            if items:
                self.reclaimed += len(items)
                report.claimed += items
                if on_claimed is not None:
                    on_claimed(items)
        return True
