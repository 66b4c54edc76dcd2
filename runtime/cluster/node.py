"""One runtime as a node of a cluster on a shared store.

A node is an ordinary runtime: the same supervisor, pools, task actors and
instances. On a ``redis://`` store it adds the queue source (pools take their work
from the cluster's streams), three small actors (heartbeat, reclaimer, control
reader), the due mover (retries and delayed starts into the streams, exactly once
whichever node's timer fires first), the change feed (waiters anywhere hear of
every write) and retention. :class:`ClusterNode` starts and stops all of it; the
runtime tells it what it serves and gets the tasks it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from actors import ActorRef, ActorSystem

from ..errors import StoreError
from ..hooks import BackgroundTasks
from ..loop import cancel_and_wait
from ..stores.redis.control import ChangeFeed, ControlChannel
from ..stores.redis.nodes import FunctionInfo
from ..stores.redis.queue import Claimed
from ..stores.redis.reclaim import Reclaimer
from ..stores.redis.store import RedisStore
from .actors import ControlReaderActor, HeartbeatActor, ReclaimerActor
from .source import SharedSource

logger = logging.getLogger("stint")

_DUE_EVERY = 0.25  # seconds between looks at the due set at most
_SWEEP_EVERY = 60.0  # seconds between retention sweeps of the indexes
_STATS_EVERY = 2.0  # seconds between reads of queue depths (metrics)
_FUNCTIONS_EVERY = 5.0  # seconds a node keeps the cluster's function list before reading again


class ClusterHooks:
    """What the node needs of its runtime (plain callables: the node knows no Runtime)."""

    def __init__(
        self,
        *,
        served: Callable[[], list[str]],
        in_flight: Callable[[], int],
        held: Callable[[], set[str]],
        adopt: Callable[[list[Claimed]], None],
        stop_requested: Callable[[str], None],
        changed: Callable[[list[str]], None],
        gap: Callable[[], None],
        lost: Callable[[list[str]], None],
        function_config: Callable[[str], bytes],
    ) -> None:
        self.served = served
        self.in_flight = in_flight
        self.held = held
        self.adopt = adopt
        self.stop_requested = stop_requested
        self.changed = changed
        self.gap = gap
        self.lost = lost  #: tasks held here that another node took over (see _came_back)
        self.function_config = function_config


class ClusterNode:
    def __init__(
        self,
        store: RedisStore,
        system: ActorSystem,
        background: BackgroundTasks,
        hooks: ClusterHooks,
    ) -> None:
        self.store = store
        self._system = system
        self._background = background
        self._hooks = hooks
        # _known: what a fetch whose reply was lost claimed is found, and taken back
        self.source = SharedSource(store.queue, hooks.adopt, store.nodes.lease_valid, self._known)
        store.invokes.taker = self.source  # what this node invokes and serves, it takes at once
        self._control = ControlChannel(store.conn, store.node_id)
        self.reclaimer = Reclaimer(store.conn, store.node_id)
        self._feed = ChangeFeed(store.conn, hooks.changed, hooks.gap)
        self._actors: list[ActorRef] = []
        self._loops: list[asyncio.Task[Any]] = []
        self._due_soon = asyncio.Event()
        self._functions: dict[str, FunctionInfo] = {}
        self._functions_read = float("-inf")
        self._reading_functions: asyncio.Task[None] | None = None
        self.queue_stats: dict[str, tuple[int, int]] = {}  # fn -> (depth, pending): metrics
        self._unsubscribe: Callable[[], None] | None = None  # from a manual clock

    # starting and stopping ---------------------------------------------------------------

    async def start(self) -> None:
        clock = self._system.clock
        if clock.is_manual:  # a test's clock: due times in Redis follow it (see keys.clock)
            await self._pin_clock()
            self._unsubscribe = clock.subscribe(self._clock_moved)
        for name in self._hooks.served():
            await self.register(name)
        await self._feed.start()
        self._adopt_own_pending_soon()
        bg = self._background
        self._loops = [
            bg.start(self.source.run(), "stint-cluster-fetch"),
            bg.start(self._move_due(), "stint-cluster-due"),
            bg.start(self._maintain(), "stint-cluster-maintain"),
        ]
        spawn = self._system.spawn
        nodes = self.store.nodes
        self._actors = [
            spawn(HeartbeatActor, bg, nodes, self._status, self._came_back, name="heartbeat"),
            spawn(ReclaimerActor, bg, nodes, self.reclaimer, self._hooks.adopt, name="reclaimer"),
            spawn(
                ControlReaderActor,
                bg,
                self._control,
                self._hooks.stop_requested,
                name="control-reader",
            ),
        ]

    async def _pin_clock(self) -> None:
        now_ms = round(self._system.clock.time() * 1000)
        await self.store.conn.command("SET", self.store.conn.keys.clock, now_ms)

    def _clock_moved(self) -> None:
        async def pin_then_look() -> None:
            await self._pin_clock()
            self._due_soon.set()  # what fell due with the clock's move goes now

        self._background.start(pin_then_look(), "stint-cluster-clock")

    async def stop_taking_work(self) -> None:
        """The runtime closes: no more fetching (what this node holds goes on)."""
        self.store.invokes.taker = None
        self.source.stop_taking()
        if self._loops:
            await cancel_and_wait(self._loops[0])

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for actor in self._actors:
            actor.stop()
        await cancel_and_wait(*self._loops)
        await self.source.close()
        await self._control.close()
        await self._feed.close()

    # functions ------------------------------------------------------------------------------

    async def register(self, name: str) -> None:
        """Record a function this node serves, cluster-wide."""
        config = self._hooks.function_config(name)
        kind = msgpack.unpackb(config).get("kind", "async")
        await self.store.functions.register(name, kind, config, now=_now())
        self._functions_read = float("-inf")

    def register_soon(self, name: str) -> None:
        self._background.start(self._register_quietly(name), f"stint-register-{name}")

    async def _register_quietly(self, name: str) -> None:
        try:
            await self.register(name)
        except StoreError as exc:
            logger.error("stint: could not register %r in the cluster: %s", name, exc)

    async def function(self, name: str) -> FunctionInfo | None:
        """A function as the cluster knows it (read at most every few seconds)."""
        loop = asyncio.get_running_loop()
        if name not in self._functions or loop.time() - self._functions_read > _FUNCTIONS_EVERY:
            if self._reading_functions is None:
                self._reading_functions = loop.create_task(self._read_functions())
                self._reading_functions.add_done_callback(self._functions_done)
            # one read shared by every caller: a burst of invokes of a function served
            # elsewhere made one read each (a connection each, past the pool's limit)
            await asyncio.shield(self._reading_functions)
        return self._functions.get(name)

    async def _read_functions(self) -> None:
        self._functions = {info.name: info for info in await self.store.functions.all()}
        self._functions_read = asyncio.get_running_loop().time()

    def _functions_done(self, task: asyncio.Task[None]) -> None:
        self._reading_functions = None
        if not task.cancelled():
            task.exception()  # the callers got it; retrieved even if all of them were cancelled

    def cached_function(self, name: str) -> FunctionInfo | None:
        return self._functions.get(name)

    # the moving parts ---------------------------------------------------------------------

    def due_soon(self) -> None:
        """A delayed task was just invoked here: look at the due set early."""
        self._due_soon.set()

    async def _move_due(self) -> None:
        while True:
            wait = _DUE_EVERY
            try:
                moved, next_due = await self.store.queue.move_due()
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due))
                if moved:
                    wait = 0.0 if next_due == 0 else wait
            except StoreError:
                wait = 1.0
            self._due_soon.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._due_soon.wait()

    async def _maintain(self) -> None:
        since_sweep = 0.0
        while True:
            await asyncio.sleep(_STATS_EVERY)
            since_sweep += _STATS_EVERY
            try:
                # every function of the cluster: a queue no node serves is the one to see
                known = await self.store.functions.names()
                stats = await self.store.queue.stats(sorted({*known, *self._hooks.served()}))
                self.queue_stats = {fn: (s.depth, s.pending) for fn, s in stats.items()}
                if since_sweep >= _SWEEP_EVERY:
                    since_sweep = 0.0
                    await self.store.records.sweep()
            except StoreError as exc:
                logger.debug("stint: cluster maintenance could not reach Redis: %s", exc)

    def _status(self) -> tuple[list[str], int]:
        return self._hooks.served(), self._hooks.in_flight()

    def _came_back(self) -> None:
        """The lease had lapsed: Redis may have lost its data (a restart), so register again,
        take back what this node's pending lists hold that it does not know of, and let go
        of what it holds that others took over meanwhile."""
        for name in self._hooks.served():
            self.register_soon(name)
        self._adopt_own_pending_soon()
        self._background.start(self._let_go_of_lost(), "stint-cluster-lost")

    async def _let_go_of_lost(self) -> None:
        """Tasks reclaimed while this node was out of touch are no longer its own: told now,
        not at their next write (an attempt may run on for long), since until then this
        node answers its own stale copy of them (its waiters, held here, ask Redis for
        nothing, and hear nothing of the reclaimer's run)."""
        try:
            lost = await self.store.lost()
        except StoreError as exc:
            logger.warning("stint: could not check which tasks this node still holds: %s", exc)
            return  # their next write is fenced, and tells the same
        if lost:
            self._hooks.lost(lost)

    def _known(self) -> set[str]:
        """Every task this node holds: live here, or ended here with its last write not in
        yet (its entry is still pending: taking it back would fence that write)."""
        return self._hooks.held() | self.store.writer.owned_ids()

    def _adopt_own_pending_soon(self) -> None:
        self._background.start(self._adopt_own_pending(), "stint-cluster-adopt")

    async def _adopt_own_pending(self) -> None:
        try:
            functions = await self.store.functions.names()
            claimed = await self.source.take_back(functions)
        except StoreError as exc:
            logger.warning("stint: could not look for this node's own pending tasks: %s", exc)
            return
        if claimed:
            self._hooks.adopt(claimed)


def _now() -> float:
    import time

    return time.time()
