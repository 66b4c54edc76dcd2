"""The queue seam on a shared store: pools say how many slots they have free, a fetch loop
takes that many tasks from the cluster's streams, and hands them over as if invoked here.

Local stores need none of this (a pool's inbox is filled by ``invoke``). On a shared
store the queue is in Redis: the pool reports its free capacity with :meth:`want`
(a plain call, cheap enough for the hot path: it only wakes the loop when capacity
grows), and the loop fetches no more than that, so a busy node never hoards work an
idle node could run. A stream with nothing new is waited on (XREAD BLOCK, which
takes nothing), and the fetch runs again when something arrives or capacity grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..errors import StoreError
from ..loop import cancel_and_wait
from ..stores.redis.client import Backoff
from ..stores.redis.queue import Claimed, RedisQueue

logger = logging.getLogger("stint")

Adopt = Callable[[list[Claimed]], None]
_WAIT = 1.0  # seconds one wait for new entries lasts before the loop looks again


class SharedSource:
    """Where a node's pools get their tasks from, on a shared store."""

    def __init__(
        self,
        queue: RedisQueue,
        adopt: Adopt,
        lease_valid: Callable[[], bool],
        held: Callable[[], set[str]] = set,
    ) -> None:
        self._queue = queue
        self._adopt = adopt
        self._lease_valid = lease_valid
        self._held = held  # every task this node holds (to find what a lost reply claimed)
        self._maybe_lost = False  # a fetch failed: Redis may have applied it, reply lost
        self._wanted: dict[str, int] = {}
        self._more = asyncio.Event()  # capacity grew (or a function came): look again now
        self._backoff = Backoff()
        # The wait for new entries has a connection of its own, and outlives a wake-up by
        # capacity: it is left running rather than cancelled (see BlockingReader), and
        # the next wait picks it up. Only closing ends it early, by interrupting it.
        self._reader = queue.conn.blocking_reader("fetch")
        self._watch: asyncio.Task[set[str]] | None = None
        self.fetched = 0  #: tasks taken from the cluster's streams (metrics)

    def want(self, function: str, free: int) -> None:
        """A pool has ``free`` slots (beyond what it holds queued already)."""
        before = self._wanted.get(function, 0)
        self._wanted[function] = free
        if free > before:
            self._more.set()

    def stop_serving(self, function: str) -> None:
        self._wanted.pop(function, None)

    async def run(self) -> None:
        """Fetch while there is room; wait while there is none or nothing is queued."""
        try:
            await self._fetch_loop()
        finally:
            await self._end_watch()

    async def close(self) -> None:
        """After :meth:`run` ended: release the waiting connection."""
        await self._end_watch()
        await self._reader.close()

    async def _end_watch(self) -> None:
        if self._watch is not None:
            if not self._watch.done():
                self._reader.interrupt()
            await cancel_and_wait(self._watch)
            self._watch = None

    async def _fetch_loop(self) -> None:
        failures = 0
        while True:
            wanted = {fn: n for fn, n in self._wanted.items() if n > 0}
            if not wanted or not self._lease_valid():
                await self._pause(None)
                continue
            self._more.clear()
            try:
                if self._maybe_lost:
                    await self._take_back_lost(wanted)
                fetched = await self._queue.fetch(wanted)
            except StoreError as exc:
                self._maybe_lost = True
                if not failures:
                    logger.warning("stint: cannot fetch tasks from Redis: %s", exc)
                await asyncio.sleep(self._backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            if fetched.lapsed:
                await self._pause(_WAIT)  # the heartbeat comes back (or the node stays out)
                continue
            got = 0
            for function, items in fetched.claimed.items():
                if items:
                    got += len(items)
                    self._wanted[function] = max(0, self._wanted.get(function, 0) - len(items))
                    self._adopt(items)
            self.fetched += got
            if not got:
                await self._wait_for_entries(fetched.last_ids)

    async def _take_back_lost(self, functions: dict[str, int]) -> None:
        """A fetch whose reply was lost may have claimed tasks this node never heard of:
        they would stay its own, queued nowhere, until it died. Claim them again (between
        fetches, as ``RedisQueue.adopt`` requires) and recover them."""
        claimed = await self._queue.adopt(functions, self._held())
        self._maybe_lost = False
        if claimed:
            logger.warning("stint: took back %d task(s) a lost fetch reply left", len(claimed))
            self._adopt(claimed)

    async def _pause(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WAIT if timeout is None else timeout):
                await self._more.wait()
        self._more.clear()

    async def _wait_for_entries(self, last_ids: dict[str, str]) -> None:
        """Until a stream has something new, capacity grows, or a second passes."""
        if self._watch is None:
            self._watch = asyncio.ensure_future(
                self._queue.wait_for_entries(last_ids, _WAIT, reader=self._reader)
            )
        # A watch left from an earlier wait looks after older ids: at worst it ends at
        # once and costs one fetch that finds nothing.
        watch = self._watch
        more = asyncio.ensure_future(self._more.wait())
        try:
            await asyncio.wait([watch, more], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(more)
        if watch.done():
            self._watch = None
            if not watch.cancelled() and watch.exception() is not None:
                await asyncio.sleep(self._backoff.delay(0))  # Redis is away: do not spin
