"""Between nodes: stop requests on a per-node stream, and change notifications on pub/sub.

A stop request must not get lost, so it travels on a stream (``P ctl:<node>``):
the stopping node writes it in the same script that sets the task Stopping, and
the owner reads it with :class:`ControlChannel` and deletes it once handled. A
node that dies with requests unread loses nothing: its tasks are reclaimed in
their Stopping state and become Stopped by the recovery rules.

Change notifications (``PUBLISH P changed "<id> <id> ..."`` on a write of tasks someone
waits on, or of every task while a join runs: see ``scripts.WATCH_TTL_MS``) only
hurry waiters along: pub/sub drops messages while a subscriber is away, so
:class:`ChangeFeed` says so (``on_gap``) and waiters also check on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ...loop import cancel_and_wait
from .client import MAX_BLOCK, RedisConnection
from .replies import fields, text

logger = logging.getLogger("stint")

READ_COUNT = 100


@dataclasses.dataclass(frozen=True, slots=True)
class StopRequest:
    """Another node asked this one to stop a task it runs (the record is Stopping already)."""

    entry_id: str
    task_id: str
    by: str  #: the node that asked


class ControlChannel:
    """This node's incoming stop requests, read in order and deleted once handled."""

    def __init__(self, conn: RedisConnection, node: str) -> None:
        self.conn = conn
        self.stream = conn.keys.control(node)
        self._last = "0"  # everything not deleted is read again after a restart of the reader
        self._reader = conn.blocking_reader("control")  # XREAD BLOCK, interruptible

    def interrupt(self) -> None:
        """End a read under way (it raises ReadInterrupted)."""
        self._reader.interrupt()

    async def close(self) -> None:
        await self._reader.close()

    async def read(self, timeout: float) -> list[StopRequest]:
        """The next requests, waiting up to ``timeout`` s (capped under the socket timeout)."""
        block_ms = max(1, int(min(timeout, MAX_BLOCK) * 1000))
        reply = await self._reader.command(
            "XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", self.stream, self._last
        )
        requests: list[StopRequest] = []
        if not reply:
            return requests
        streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
        for entry_id, raw_fields in streams[0]:
            pairs = {k: text(v) for k, v in fields(raw_fields).items()}
            self._last = text(entry_id)
            task_id = pairs.get("t")
            if task_id:
                requests.append(StopRequest(text(entry_id), task_id, pairs.get("by", "")))
            else:
                logger.error("stint: malformed control message %s ignored", text(entry_id))
        return requests

    async def done(self, entry_ids: Sequence[str]) -> None:
        """Delete handled requests."""
        if entry_ids:
            await self.conn.command("XDEL", self.stream, *entry_ids)


class ChangeFeed:
    """Calls ``on_change(task_ids)`` for every announced write anywhere in the cluster.

    Runs one subscriber connection; when it breaks it resubscribes with backoff
    and calls ``on_gap()`` (notifications may have been missed: re-check).
    """

    def __init__(
        self,
        conn: RedisConnection,
        on_change: Callable[[list[str]], None],
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.channel = conn.keys.changed
        self._on_change = on_change
        self._on_gap = on_gap
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.gaps = 0  #: times the subscription broke (metrics)
        self.idle_ping = MAX_BLOCK  #: seconds of quiet before the connection is checked

    async def start(self, timeout: float = 5.0) -> None:
        """Subscribe; returns once subscribed (notifications from then on are delivered)."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        attempt = 0
        while True:
            pubsub = self.conn.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                if attempt and self._on_gap is not None:
                    self._call(self._on_gap)  # back after a break: changes went unheard
                attempt = 0
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                logger.debug("stint: change feed lost its subscription: %r", exc)
                self._subscribed.clear()
                self.gaps += 1
                await asyncio.sleep(self.conn.backoff.delay(attempt))
                attempt += 1
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # a bug in the listener must not end the feed
            logger.exception("stint: a change feed listener raised")

    async def _listen(self, pubsub: Any) -> None:
        """Deliver messages; a quiet connection is pinged, and one that stops answering
        (a half-open TCP connection never reports an error) counts as broken."""
        pinged_at: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self.idle_ping)
            kind = None if message is None else message.get("type")
            if kind == "message":
                data = message.get("data")
                self._call(self._on_change, text(data).split() if data else [])
            elif kind == "pong":
                pinged_at = None
            elif message is None:
                now = time.monotonic()
                if pinged_at is not None and now - pinged_at > 2 * self.idle_ping:
                    raise RedisConnectionError("the change feed's connection stopped answering")
                if pinged_at is None:
                    pinged_at = now
                    await pubsub.ping()
