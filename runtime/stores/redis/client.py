"""One connection pool to the cluster's Redis: scripts, error mapping, reconnect bookkeeping.

redis-py's asyncio client (with hiredis) does the talking. This wrapper adds what
stint needs on top: every Redis failure becomes a :class:`StoreError` that says
what to do, scripts run by SHA with a fallback when the server lost them (a
restart), and a node notices when it lost Redis and when it got it back (logged
once each, counted for metrics). redis-py's own retries are off: a script that
changes state must never run twice because a reply was lost, so whoever calls
decides whether to retry (the record writer resends with the same write token).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.retry import Retry

try:  # redis-py >= 7
    from redis.maint_notifications import MaintNotificationsConfig as _MaintConfig
except ImportError:  # pragma: no cover - older redis-py: nothing to turn off
    _MaintConfig = None  # type: ignore[assignment,misc]

from ...errors import StoreError
from .keys import RedisKeys
from .scripts import Script
from .url import RedisOptions

logger = logging.getLogger("stint")

MIN_SERVER = (6, 2)  # XPENDING with an exclusive start, XAUTOCLAIM-era stream semantics
SOCKET_TIMEOUT = 5.0  # seconds a command may take before the connection counts as lost
CONNECT_TIMEOUT = 2.0
# Connections one pool opens at most; a call beyond them waits for one to come free (up
# to POOL_WAIT s) instead of failing: redis-py 8's own pool refuses call 101 of a burst
# ("Too many connections"), which read as an outage to a thousand concurrent invokes.
MAX_CONNECTIONS = 100
POOL_WAIT = 10.0
#: Blocking reads (XREAD BLOCK) are kept this far under the socket timeout.
MAX_BLOCK = SOCKET_TIMEOUT - 1.0
#: Connections kept out of the pool between script calls (see RedisConnection.run): the
#: two write calls and two invoke calls a node keeps in flight, a fetch, and some spare.
LANE_SIZE = 8

Arg = str | bytes | int | float


class StoreUnavailableError(StoreError):
    """Redis could not be reached, or the connection broke during a call.

    When it broke mid-call the change may have been applied: every script is
    atomic, so it was applied whole or not at all.
    """


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits in [d/2, d], d = min(cap, base*2^n).

    The jitter keeps the nodes of a cluster from reconnecting in lockstep after
    Redis comes back; ``rng`` is injectable so tests get exact delays.
    """

    __slots__ = ("base", "cap", "rng")

    def __init__(
        self, base: float = 0.05, cap: float = 2.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 32))
        return float(ceiling / 2 + self.rng() * ceiling / 2)


class RedisConnection:
    """The cluster's Redis for one runtime: one connection pool, every call through it.

    ``connect()`` checks the server (reachable, version >= 6.2); ``close()``
    releases the pool. ``run`` / ``run_many`` call scripts, ``command`` anything
    else. Counters for metrics: ``failures`` (calls that failed for want of
    Redis), ``reconnects`` (times Redis came back after such a failure).
    """

    def __init__(
        self,
        options: RedisOptions,
        *,
        client_name: str | None = None,
        socket_timeout: float = SOCKET_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        self.options = options
        self.keys = RedisKeys(options.prefix)
        self.backoff = backoff or Backoff()
        self.failures = 0
        self.reconnects = 0
        self.connected = False  #: True after a successful call, False after a failed one
        self._down_since: float | None = None
        self._timeouts = (socket_timeout, connect_timeout)
        self._client_name = client_name
        self._client = _make_client(options, client_name, socket_timeout, connect_timeout)
        # redis-py leaves execute_command untyped: one typed handle for every call
        self._execute: Callable[..., Awaitable[Any]] = self._client.execute_command
        self._closed = False
        self._readers: set[BlockingReader] = set()  # closed with the connection
        self._lane: list[Any] = []  # idle connections of the pool, kept for script calls

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (for pub/sub and tests; stint's own calls go through ``run``)."""
        return self._client

    async def connect(self) -> None:
        """Reach the server and check its version; raises :class:`StoreError` if unusable."""
        info = await self.command("INFO", "server")
        version = _server_version(info)
        if version < MIN_SERVER:
            raise StoreError(
                f"Redis at {self.options.safe_url} is version {'.'.join(map(str, version))}; "
                f"stint needs Redis >= {'.'.join(map(str, MIN_SERVER))}: upgrade the server"
            )

    async def close(self) -> None:
        """Close the pool and every blocking reader made from it (one left open would keep
        a socket, and a read under way, past the loop that owns them)."""
        if not self._closed:
            self._closed = True
            for reader in list(self._readers):
                await reader.close()
            lane, self._lane = self._lane, []
            for connection in lane:
                await self._client.connection_pool.release(connection)
            await self._client.aclose()

    async def wait_until_up(self, timeout: float | None = None) -> None:
        """Ping with backoff until Redis answers; :class:`StoreUnavailableError` at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                await self.command("PING")
                return
            except StoreUnavailableError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                pause = self.backoff.delay(attempt)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(pause)
                attempt += 1

    # calls ---------------------------------------------------------------------------

    async def command(self, *args: Arg) -> Any:
        """Run one Redis command; Redis failures become :class:`StoreError`."""
        try:
            result = await self._execute(*args)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, str(args[0])) from None
        self._succeeded()
        return result

    async def commands(self, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """Run several commands in one round trip (a pipeline, not a transaction)."""
        pipe = self._client.pipeline(transaction=False)
        for args in calls:
            pipe.execute_command(*args)
        try:
            results: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._failed(exc, str(calls[0][0]) if calls else "pipeline") from None
        self._succeeded()
        return results

    async def run(self, script: Script, args: Sequence[Arg]) -> Any:
        """Run a script (EVALSHA; loads it first if the server does not have it).

        Script calls are the hot path (an invoke, a task's writes), so they skip
        redis-py's per-call machinery: the command is packed here (the arguments
        are few known types) and sent on a connection kept out of the pool between
        calls (:meth:`_borrow`), which saves ~50 µs a call, a tenth of a one-task
        round trip. redis-py still connects, parses the reply and closes a connection
        a call left in doubt (a timeout, a cancellation).
        """
        try:
            payload = pack_evalsha(script.sha, args)
            connection = await self._borrow()
            clean = False
            try:
                try:
                    await _check_idle(connection)
                    result = await _call(connection, payload)
                except NoScriptError:
                    await _call(connection, pack_command(("SCRIPT", "LOAD", script.source)))
                    result = await _call(connection, payload)
                clean = True
            except ResponseError:
                clean = True  # the whole error reply was read: the connection is fine
                raise
            finally:
                await self._give_back(connection, clean)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, script.name) from None
        self._succeeded()
        return result

    async def _borrow(self) -> Any:
        """An idle connection of the lane, else one from the pool (which may wait).

        Nothing here may wait once a connection is taken from the lane: a cancellation
        landing there would lose it (in neither the lane nor the pool, one of the pool's
        ``MAX_CONNECTIONS`` held "in use" for good). Its check is the caller's, in the
        ``try`` that gives it back (:func:`_check_idle`)."""
        if not self._lane:
            return await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return self._lane.pop()

    async def _give_back(self, connection: Any, clean: bool) -> None:
        """Keep a clean connection for the next call; a call cut short (a timeout, a
        cancellation) may have left its reply unread: closed and returned to the pool."""
        if clean and not self._closed and len(self._lane) < LANE_SIZE:
            self._lane.append(connection)
            return
        if not clean:
            await connection.disconnect(nowait=True)
        await self._client.connection_pool.release(connection)

    async def run_many(self, script: Script, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """Run a script once per argument list, all in one round trip (a pipeline)."""
        if not calls:
            return []
        try:
            results = await self._pipeline(script, calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # none of those ran: load the script and run just them again
                await self._execute("SCRIPT", "LOAD", script.source)
                again = await self._pipeline(script, [calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except (RedisError, OSError) as exc:
            raise self._failed(exc, script.name) from None
        for result in results:
            if isinstance(result, Exception):
                raise self._failed(result, script.name)
        self._succeeded()
        return results

    async def _pipeline(self, script: Script, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for args in calls:
            pipe.execute_command("EVALSHA", script.sha, 0, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def blocking_reader(self, purpose: str) -> BlockingReader:
        """A connection of its own for one blocking read at a time (see BlockingReader)."""
        name = f"{self._client_name}-{purpose}" if self._client_name else None
        reader = BlockingReader(self, _make_client(self.options, name, *self._timeouts))
        self._readers.add(reader)
        return reader

    # bookkeeping -----------------------------------------------------------------------

    def _failed(self, exc: BaseException, what: str) -> StoreError:
        url = self.options.safe_url
        if isinstance(exc, DataError) or (
            isinstance(exc, ResponseError) and not _is_transient(exc)
        ):
            # (DataError: an argument no command can carry, refused before it was sent)
            return StoreError(f"Redis at {url} refused {what}: {exc}")
        if self.connected or self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "stint: lost Redis at %s (%s: %s); reconnecting", url, type(exc).__name__, exc
            )
        self.connected = False
        self.failures += 1
        return StoreUnavailableError(
            f"Redis at {url} is unreachable ({type(exc).__name__}: {exc}); check that it runs "
            "and is reachable from this host (if the connection broke mid-call, the change "
            "may have been applied whole)"
        )

    def _succeeded(self) -> None:
        if self.connected:
            return
        self.connected = True
        if self._down_since is not None:
            self.reconnects += 1
            logger.warning(
                "stint: reconnected to Redis at %s after %.1f s",
                self.options.safe_url,
                time.monotonic() - self._down_since,
            )
            self._down_since = None


class ReadInterrupted(Exception):
    """A blocking read was cut short by :meth:`BlockingReader.interrupt` (not a failure)."""


class BlockingReader:
    """One connection of its own for a blocking read (XREAD BLOCK) that can be cut short.

    Cancelling the task that waits in a redis-py call does not always end the call: a
    cancel that lands while redis-py sets the call up can be swallowed (redis-py#2028;
    seen with 8.1), and the call then blocks for its whole block time, holding up
    whoever waits for it to end (a closing runtime, for one). Closing the connection
    always ends the call: :meth:`interrupt` does that, and the call raises
    :class:`ReadInterrupted`; the next call connects again. A connection of its own
    also keeps a long blocking read from holding one of the pool's.
    """

    def __init__(self, conn: RedisConnection, client: aioredis.Redis) -> None:
        self._conn = conn
        self._client = client
        self._execute: Callable[..., Awaitable[Any]] = client.execute_command
        self._interrupted = False
        self._disconnecting: asyncio.Task[Any] | None = None

    async def command(self, *args: Arg) -> Any:
        """Run one (blocking) command; failures as :meth:`RedisConnection.command`."""
        if self._disconnecting is not None:  # an interrupt is still closing the last one
            await asyncio.wait([self._disconnecting])
        self._interrupted = False
        try:
            result = await self._execute(*args)
        except (RedisError, OSError) as exc:
            if self._interrupted:
                raise ReadInterrupted(str(args[0])) from None
            raise self._conn._failed(exc, str(args[0])) from None
        self._conn._succeeded()
        return result

    def interrupt(self) -> None:
        """End the call under way now (it raises ReadInterrupted)."""
        self._interrupted = True
        if self._disconnecting is None or self._disconnecting.done():
            pool = self._client.connection_pool
            self._disconnecting = asyncio.get_running_loop().create_task(pool.disconnect())
            self._disconnecting.add_done_callback(self._disconnected)

    def _disconnected(self, task: asyncio.Task[Any]) -> None:
        if self._disconnecting is task:
            self._disconnecting = None
        if not task.cancelled() and task.exception() is not None:
            logger.debug("stint: closing a blocking Redis connection: %r", task.exception())

    async def close(self) -> None:
        self._conn._readers.discard(self)
        self.interrupt()
        if self._disconnecting is not None:
            await asyncio.wait([self._disconnecting])
        await self._client.aclose()


async def _check_idle(connection: Any) -> None:
    """A connection Redis closed while it was idle (a restart), or that holds stray bytes,
    starts afresh (the send connects again) rather than fail a call on a connection
    known bad."""
    if connection.is_connected and await connection.can_read():
        await connection.disconnect(nowait=True)


async def _call(connection: Any, payload: bytes) -> Any:
    """One packed command on ``connection`` and its reply (an error reply raises)."""
    await connection.send_packed_command(payload, check_health=False)
    return await connection.read_response()


def pack_evalsha(sha: str, args: Sequence[Arg]) -> bytes:
    """``EVALSHA sha 0 *args`` in the Redis protocol."""
    return pack_command(("EVALSHA", sha, 0, *args))


def pack_command(args: Sequence[Arg]) -> bytes:
    """A command in the Redis protocol, its arguments encoded as redis-py does (text as
    UTF-8, numbers as their repr); anything else is refused as redis-py refuses it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise DataError(
                f"Invalid input of type: {type(arg).__name__!r}. "
                "Convert to a bytes, string, int or float first."
            )
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _is_transient(exc: ResponseError) -> bool:
    """Errors that pass when the server is back to normal (loading, busy, failing over,
    out of memory until something expires)."""
    text = str(exc)
    return text.startswith(("LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "OOM"))


def _server_version(info: Any) -> tuple[int, ...]:
    raw = info.get("redis_version", "0") if isinstance(info, dict) else "0"
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return (0,)


def _make_client(
    options: RedisOptions, client_name: str | None, socket_timeout: float, connect_timeout: float
) -> aioredis.Redis:
    common: dict[str, Any] = {
        "db": options.db,
        "username": options.username,
        "password": options.password,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
        "client_name": client_name,
        "decode_responses": False,
    }
    if _MaintConfig is not None:
        # redis-py >= 7 skips its check for a closed pooled connection while these (RESP3
        # only) notifications are on; off, a connection the server closed is replaced
        # before use instead of failing the next command.
        common["maint_notifications_config"] = _MaintConfig(enabled=False)
    if options.unix_path is not None:
        common.pop("maint_notifications_config", None)  # set by redis-py for sockets
        return _queueing(aioredis.Redis(unix_socket_path=options.unix_path, **common))
    if options.tls:
        common.update(
            ssl_ca_certs=options.ssl_ca_certs,
            ssl_certfile=options.ssl_certfile,
            ssl_keyfile=options.ssl_keyfile,
            ssl_cert_reqs=options.ssl_cert_reqs,
            ssl_check_hostname=options.ssl_cert_reqs == "required",
        )
    return _queueing(
        aioredis.Redis(
            host=options.host or "localhost",
            port=options.port,
            ssl=options.tls,
            socket_connect_timeout=connect_timeout,
            **common,
        ),
        common.get("maint_notifications_config"),
    )


def _queueing(client: aioredis.Redis, maint: Any = None) -> aioredis.Redis:
    """``client`` on a pool where a caller waits (up to ``POOL_WAIT`` s) for a free
    connection (``client`` only lends its settings: its own pool never connected).

    redis-py's default pool raises ``MaxConnectionsError`` at once when every connection
    is busy: a burst of a few hundred concurrent ``stop`` or ``get`` calls would fail
    with a false "Redis is unreachable". :class:`QueueingPool` queues them instead,
    with the same connection settings (the client built them from the URL)."""
    built = client.connection_pool
    extra = {} if maint is None else {"maint_notifications_config": maint}
    pool = QueueingPool(
        connection_class=built.connection_class,
        max_connections=MAX_CONNECTIONS,
        wait=POOL_WAIT,
        **extra,
        **built.connection_kwargs,
    )
    return aioredis.Redis.from_pool(pool)


class QueueingPool(aioredis.ConnectionPool):
    """redis-py's plain pool, except that a caller finding every connection busy waits
    (up to ``wait`` s) for one to come back instead of failing.

    redis-py's BlockingConnectionPool does that too, but every call pays for it: a
    condition, a timeout and their hand-offs cost ~35 µs a call here (a PING round
    trip of 170 µs against 138 µs on the plain pool). This one pays only when the
    pool is exhausted."""

    def __init__(self, *, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait = wait
        self._waiters: list[asyncio.Future[None]] = []

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        deadline = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except RedisConnectionError as exc:
                if "Too many connections" not in str(exc):
                    raise
            loop = asyncio.get_running_loop()
            deadline = deadline if deadline is not None else loop.time() + self._wait
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                if not waiter.done() or waiter.cancelled():
                    raise RedisConnectionError("No connection available.") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the connection is another's
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        """One caller waiting for a connection tries again (first come, first served)."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
