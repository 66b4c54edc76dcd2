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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import StoreError
from ..loop import cancel_and_wait
from ..stores.redis.client import Backoff
from ..stores.redis.queue import MAX_FETCH, Claimed, Fetched, RedisQueue

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
        #: the functions a failed fetch or take may have claimed tasks from (Redis may have
        #: applied it, and the reply is lost): looked at before the next fetch
        self._lost: set[str] = set()
        self._wanted: dict[str, int] = {}
        self._more = asyncio.Event()  # capacity grew (or a function came): look again now
        self._nudge: asyncio.Future[None] | None = None  # ends a wait for entries (want)
        #: functions whose stream the last look (a fetch, or an invoke's take) emptied: a
        #: slot freed under a light load costs Redis nothing (see want)
        self._drained: set[str] = set()
        #: per function: its bell's last ring as the last look that emptied its stream saw
        #: it (a wait for entries waits after it)
        self._rung: dict[str, str] = {}
        #: slots promised to calls in flight that take tasks (this loop's fetch, and the
        #: invokes that take their own tasks: see reserve), per function
        self._reserved: dict[str, int] = {}
        self._takes = 0  # invoke calls in flight that take tasks
        self._no_takes = asyncio.Event()  # set while _takes is 0 (a lost reply is looked for)
        self._no_takes.set()
        self._adopting = False  # a look for lost replies' tasks is under way: no takes
        self._exclusive = asyncio.Lock()  # a fetch, or a look for lost replies' tasks
        self._call_ended = asyncio.Event()  # a call that takes tasks ended (see settled)
        self._closing = False  # the runtime closes: nothing is handed over (stop_taking)
        self._backoff = Backoff()
        # The wait for new entries has a connection of its own, and outlives a wake-up by
        # capacity: it is left running rather than cancelled (see BlockingReader), and
        # the next wait picks it up. Only closing ends it early, by interrupting it.
        self._reader = queue.conn.blocking_reader("fetch")
        self._watch: asyncio.Task[set[str]] | None = None
        self._watching: frozenset[str] = frozenset()  # the functions the watch looks at
        self.fetched = 0  #: tasks taken from the cluster's streams (metrics)
        self.node = queue.node  #: (for the invoke batcher: see reserve)

    def want(self, function: str, free: int) -> None:
        """A pool has ``free`` slots (beyond what it holds queued already)."""
        before = self._wanted.get(function, 0)
        self._wanted[function] = free
        # More room for a function whose stream the last look emptied needs no fetch (a
        # new entry ends the wait for entries), unless it had none: then it was not
        # looked at (nor watched) while full.
        if free > before and (before <= 0 or function not in self._drained):
            self._drained.discard(function)
            self._look_again()

    def _look_again(self) -> None:
        self._more.set()
        if self._nudge is not None and not self._nudge.done():
            self._nudge.set_result(None)

    def _free(self, function: str) -> int:
        """Slots of ``function`` no call in flight has been promised yet."""
        return self._wanted.get(function, 0) - self._reserved.get(function, 0)

    def _promise(self, take: Mapping[str, int], sign: int) -> None:
        if sign < 0:
            self._call_ended.set()
        for function, n in take.items():
            left = self._reserved.get(function, 0) + sign * n
            if left > 0:
                self._reserved[function] = left
            else:
                self._reserved.pop(function, None)

    # the invoke batcher's taker (a node that invokes what it serves takes its own tasks) --

    def reserve(self, counts: Mapping[str, int]) -> dict[str, int]:
        """How many new tasks of each function the invoke call under way may take for this
        node: free slots no other call was promised, at most as many as it invokes."""
        if self._closing or self._lost or self._adopting or not self._lease_valid():
            return {}  # a lost reply is looked for first, with no call taking meanwhile
        take = {}
        for function, n in counts.items():
            k = min(self._free(function), n, MAX_FETCH)
            if k > 0:
                take[function] = k
        if take:
            self._promise(take, +1)
            self._takes += 1
            self._no_takes.clear()
        return take

    def taken(self, take: Mapping[str, int], fetched: Fetched | None) -> None:
        """The invoke call that reserved ``take`` ended: hand over what it took."""
        self._promise(take, -1)
        self._takes -= 1
        if not self._takes:
            self._no_takes.set()
        if self._closing:
            return  # what it took stays this node's in Redis: reclaimed once the node leaves
        if fetched is None:  # failed: Redis may have applied it and the reply is lost
            self._lost.update(take)
            self._look_again()
        elif not fetched.lapsed:
            self._deliver(fetched)
            if not self._note_drained(fetched, take):
                self._look_again()  # it took all it asked for: the stream may hold more

    def stop_taking(self) -> None:
        """The runtime closes: a take still under way hands nothing over (its tasks would go
        to pools that drain, or to an actor system that is closed); they stay this node's
        in Redis, and another node reclaims them once this one has left the cluster."""
        self._closing = True

    def stop_serving(self, function: str) -> None:
        self._wanted.pop(function, None)

    async def settled(self, function: str) -> None:
        """Until no call under way may still hand over tasks of ``function`` (a fetch or an
        invoke's take promised its slots before this node stopped serving it, or a look
        for lost replies): what they took has been handed over (and, no longer served
        here, given back) by then."""
        while self._reserved.get(function, 0) > 0 or self._adopting:
            self._call_ended.clear()
            await self._call_ended.wait()

    async def run(self) -> None:
        """Fetch while there is room; wait while there is none or nothing is queued."""
        try:
            await self._fetch_loop()
        finally:
            await self._end_watch()

    async def close(self) -> None:
        """After :meth:`run` ended: release the waiting connection."""
        self.stop_taking()
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
            wanted = {fn: min(n, MAX_FETCH) for fn in self._wanted if (n := self._free(fn)) > 0}
            if not (wanted or self._lost) or not self._lease_valid():
                await self._pause(None)
                continue
            self._more.clear()
            try:
                fetched = await self._fetch(wanted)
            except StoreError as exc:
                self._lost.update(wanted)
                if not failures:
                    logger.warning("stint: cannot fetch tasks from Redis: %s", exc)
                await asyncio.sleep(self._backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            if fetched.lapsed:
                await self._pause(_WAIT)  # the heartbeat comes back (or the node stays out)
                continue
            self._deliver(fetched)
            if self._note_drained(fetched, wanted):
                await self._wait_for_entries(wanted)

    async def _fetch(self, wanted: dict[str, int]) -> Fetched:
        """One fetch of ``wanted`` (those slots promised to it while it is in flight)."""
        self._promise(wanted, +1)
        try:
            if self._lost:
                await self._take_back_lost(wanted)
            async with self._exclusive:
                return await self._queue.fetch(wanted)
        finally:
            self._promise(wanted, -1)

    def _note_drained(self, fetched: Fetched, asked: Mapping[str, int]) -> bool:
        """Note which streams a look emptied; True if it emptied every one it looked at.

        Fewer than asked for, or up to the stream's last entry: the stream had no more
        then, so a fetch now would find nothing (new entries end the wait for entries
        instead). Otherwise there may be more."""
        emptied_all = True
        for function, items in fetched.claimed.items():
            last = fetched.last_ids.get(function, "0-0")
            if len(items) < asked.get(function, 0) or items[-1].stream_id == last:
                self._drained.add(function)
                # (the latest look's, not the highest: after Redis lost its data the ids
                # start again; an older one at worst ends the next wait at once)
                self._rung[function] = fetched.bells.get(function, "0-0")
            else:
                self._drained.discard(function)
                emptied_all = False
        return emptied_all

    def _deliver(self, fetched: Fetched) -> None:
        """Hand what a call took to the pools (their free slots go down by as much)."""
        for function, items in fetched.claimed.items():
            if items:
                self.fetched += len(items)
                self._wanted[function] = max(0, self._wanted.get(function, 0) - len(items))
                self._adopt(items)

    async def _take_back_lost(self, functions: dict[str, int]) -> None:
        """A fetch (or an invoke's take) whose reply was lost may have claimed tasks this
        node never heard of: they would stay its own, queued nowhere, until it died. Claim
        them again (between fetches, as ``RedisQueue.adopt`` requires) and recover them:
        in the functions that call took from too, whether or not this node has free slots
        for them (or serves them) now."""
        looked = {*functions, *self._lost}
        claimed = await self.take_back(looked)
        self._lost -= looked
        if claimed:
            logger.warning("stint: took back %d task(s) a lost fetch reply left", len(claimed))
            self._adopt(claimed)

    async def take_back(self, functions: Iterable[str]) -> list[Claimed]:
        """Claim again the entries of this node's own pending lists that it does not hold
        (``RedisQueue.adopt``): with no fetch and no taking invoke under way, whose
        entries would look lost while their reply is on its way."""
        async with self._exclusive:
            self._adopting = True
            try:
                await self._no_takes.wait()
                return await self._queue.adopt(functions, self._held())
            finally:
                self._adopting = False
                self._call_ended.set()

    async def _pause(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WAIT if timeout is None else timeout):
                await self._more.wait()
        self._more.clear()

    async def _wait_for_entries(self, functions: Iterable[str]) -> None:
        """Until a function's bell rings (its stream got entries nobody took), capacity
        grows, or a second passes."""
        while not self._more.is_set():  # (capacity grew since the fetch: fetch again first)
            if self._watch is not None and not self._watching.issuperset(functions):
                # A watch left from an earlier wait does not cover a function looked at now
                # (one just registered, or back from a full node): its new entries would wait
                # for that watch's time-out. Cut it short and watch them all.
                await self._end_watch()
            if self._watch is None:
                after = {fn: self._rung.get(fn, "0-0") for fn in functions}
                self._watching = frozenset(after)
                self._watch = asyncio.ensure_future(
                    self._queue.wait_for_entries(after, _WAIT, reader=self._reader)
                )
            # A watch left from an earlier wait looks after older rings: at worst it ends at
            # once and costs one fetch that finds nothing.
            watch = self._watch
            # A plain future want() answers, not a task on the event: a wake-up costs no hop.
            nudge = self._nudge = asyncio.get_running_loop().create_future()
            either: list[asyncio.Future[Any]] = [watch, nudge]
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._nudge = None
            if not watch.done():
                return  # capacity grew
            self._watch = None
            if not watch.cancelled() and watch.exception() is not None:
                await asyncio.sleep(self._backoff.delay(0))  # Redis is away: do not spin
            return  # a ring (or a quiet second): fetch
