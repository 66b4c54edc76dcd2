"""The cluster's three small actors: heartbeat, reclaimer and control-channel reader.

Each owns one periodic piece of I/O: it runs it as a background task (an actor never
awaits), and handles the outcome when it comes back as a message. Their timers run
on real time, whatever clock the runtime was given: a lease is kept by Redis' own
clock, which a test's ManualClock cannot move.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors import Actor

from ..errors import StoreError
from ..hooks import BackgroundTasks
from ..stores.redis.control import ControlChannel, StopRequest
from ..stores.redis.nodes import Beat, NodeRegistry
from ..stores.redis.queue import Claimed
from ..stores.redis.reclaim import Reclaimer

logger = logging.getLogger("stint")


class _Tick:
    __slots__ = ()


class _Done:
    __slots__ = ("error", "result")

    def __init__(self, result: Any, error: BaseException | None) -> None:
        self.result = result
        self.error = error


_TICK = _Tick()


class PeriodicActor(Actor):
    """Runs :meth:`job` (a coroutine) every ``interval`` seconds of real time, one at a time,
    and hands its outcome to :meth:`handle` as a message."""

    interval = 1.0

    def __init__(self, background: BackgroundTasks) -> None:
        self._background = background
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[Any] | None = None
        self._stopped = False

    def on_start(self) -> None:
        self._schedule(0.0)

    def on_stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._running is not None:
            self._running.cancel()

    def receive(self, message: Any) -> Any:
        if message is _TICK:
            self._timer = None
            self._start_job()
        elif type(message) is _Done:
            self._running = None
            if message.error is not None:
                self.failed(message.error)
            else:
                self.handle(message.result)
            self._schedule(self.interval)
        return None

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self.ref.tell, _TICK)

    def _start_job(self) -> None:
        task = self._background.start(self._run_job(), f"stint-{type(self).__name__}")
        self._running = task
        task.add_done_callback(self._report)

    async def _run_job(self) -> _Done:
        # The outcome, failure included, travels back as a value: a failed job is this
        # actor's to judge (an outage is expected, and retried), not a crashed task's.
        try:
            return _Done(await self.job(), None)
        except Exception as exc:
            return _Done(None, exc)

    def _report(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and not self._stopped:  # a stopped actor takes no mail
            self.ref.tell(task.result())

    async def job(self) -> Any:
        raise NotImplementedError

    def handle(self, result: Any) -> None:
        """The job's outcome (on the loop, as a message)."""

    def failed(self, error: BaseException) -> None:
        if isinstance(error, StoreError):
            # the Redis client already warned once that it lost the connection
            logger.debug("stint: %s could not reach Redis: %s", type(self).__name__, error)
        else:
            logger.error("stint: %s failed: %r", type(self).__name__, error, exc_info=error)


class HeartbeatActor(PeriodicActor):
    """Renews this node's lease every lease / 3, with what it serves; notices a comeback."""

    def __init__(
        self,
        background: BackgroundTasks,
        nodes: NodeRegistry,
        status: Callable[[], tuple[list[str], int]],
        came_back: Callable[[], None],
    ) -> None:
        super().__init__(background)
        self.interval = nodes.lease / 3
        self._nodes = nodes
        self._status = status
        self._came_back = came_back

    async def job(self) -> Beat:
        functions, in_flight = self._status()
        return await self._nodes.beat(functions, in_flight)

    def handle(self, result: Any) -> None:
        if result is Beat.CAME_BACK:
            self._came_back()


class ReclaimerActor(PeriodicActor):
    """Looks for dead nodes (heartbeat gone) and takes their work over, one at a time."""

    def __init__(
        self,
        background: BackgroundTasks,
        nodes: NodeRegistry,
        reclaimer: Reclaimer,
        adopt: Callable[[list[Claimed]], None],
    ) -> None:
        super().__init__(background)
        self.interval = max(0.2, nodes.lease / 2)
        self._nodes = nodes
        self._reclaimer = reclaimer
        self._adopt = adopt

    async def job(self) -> list[Claimed]:
        claimed: list[Claimed] = []
        if not self._nodes.lease_valid():
            return claimed  # a node out of touch itself must not judge the others
        for dead in await self._nodes.dead_nodes():
            if dead == self._nodes.node_id:
                continue
            report = await self._reclaimer.reclaim(dead)
            claimed += report.claimed
        return claimed

    def handle(self, result: Any) -> None:
        if result:
            self._adopt(result)


class ControlReaderActor(PeriodicActor):
    """Reads the stop requests other nodes send this one, and hands each to the runtime."""

    interval = 0.0  # a blocking read: it waits on Redis, not on a timer

    def __init__(
        self,
        background: BackgroundTasks,
        channel: ControlChannel,
        stop: Callable[[str], Awaitable[None] | None],
    ) -> None:
        super().__init__(background)
        self._channel = channel
        self._stop = stop
        self._handled: list[str] = []

    async def job(self) -> list[StopRequest]:
        if self._handled:
            handled, self._handled = self._handled, []
            await self._channel.done(handled)
        return await self._channel.read(timeout=1.0)

    def handle(self, result: Any) -> None:
        for request in result:
            self._stop(request.task_id)
            self._handled.append(request.entry_id)

    def failed(self, error: BaseException) -> None:
        super().failed(error)
        self.interval = 0.5  # Redis is away: do not spin

    def on_stop(self) -> None:
        super().on_stop()
        self._channel.interrupt()  # a cancel alone may not end the blocking read

    def _schedule(self, delay: float) -> None:
        super()._schedule(delay)
        self.interval = 0.0
