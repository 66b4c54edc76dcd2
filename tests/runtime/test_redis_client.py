"""RedisConnection's script calls: packed here and sent on connections kept out of the pool."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.connection import Connection

from runtime.errors import StoreError
from runtime.stores.redis import RedisConnection, StoreUnavailableError, parse_redis_url
from runtime.stores.redis.client import LANE_SIZE, pack_command
from runtime.stores.redis.scripts import Script

pytestmark = pytest.mark.redis


def script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


ECHO = script("echo", "return ARGV[1]")
# Holds the server for ARGV[1] ms: every other client's command waits behind it.
BUSY = script(
    "busy",
    "local t = redis.call('TIME') local until_us = t[1] * 1e6 + t[2] + ARGV[1] * 1000 "
    "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= until_us return 1",
)


@contextlib.asynccontextmanager
async def connection(url: str, name: str = "lane-test") -> AsyncIterator[RedisConnection]:
    conn = RedisConnection(parse_redis_url(url), client_name=name)
    await conn.connect()
    try:
        yield conn
    finally:
        await conn.close()


async def clients_named(conn: RedisConnection, name: str) -> int:
    listing = await conn.command("CLIENT", "LIST")
    lines = listing.decode() if isinstance(listing, bytes) else str(listing)
    return sum(f" name={name} " in f" {line} " for line in lines.splitlines())


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    args = ("EVALSHA", "ab" * 20, 0, b"\x00\xffraw", "naïve", -17, 2.5, 1e-7, "")
    assert pack_command(args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, [1], object()])
def test_an_argument_of_another_type_is_refused_as_redis_py_refuses_it(bad: object) -> None:
    from redis.exceptions import DataError

    with pytest.raises(DataError, match="Convert to a bytes, string, int or float first"):
        pack_command(("EVALSHA", "x", 0, bad))  # type: ignore[arg-type]


async def test_a_bad_argument_is_a_store_error_and_no_outage(redis_url: str) -> None:
    async with connection(redis_url) as conn:
        with pytest.raises(StoreError, match="refused echo") as caught:
            await conn.run(ECHO, [None])  # type: ignore[list-item]
        assert not isinstance(caught.value, StoreUnavailableError)
        assert conn.connected and conn.failures == 0
        assert await conn.run(ECHO, ["fine"]) == b"fine"


async def test_a_call_cut_short_leaves_no_reply_for_the_next_call(redis_url: str) -> None:
    async with connection(redis_url) as conn, connection(redis_url, "busy") as other:
        assert await conn.run(ECHO, ["warm"]) == b"warm"  # its connection is in the lane now
        busy = asyncio.ensure_future(other.run(BUSY, [300]))
        await asyncio.sleep(0.05)  # (the busy script has the server now)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await conn.run(ECHO, ["cut short"])  # sent; its reply comes after the cut
        await busy
        for word in ("next", "and the next"):  # each gets its own reply, never the cut one's
            assert await conn.run(ECHO, [word]) == word.encode()


async def test_a_connection_redis_closed_while_idle_is_replaced_before_use(
    redis_url: str,
) -> None:
    async with connection(redis_url) as conn, connection(redis_url, "admin") as admin:
        await asyncio.gather(*(conn.run(ECHO, [str(i)]) for i in range(3)))
        assert await admin.command("CLIENT", "KILL", "USER", "default", "SKIPME", "no") >= 3
        await asyncio.sleep(0.05)  # the closes reach the client
        for i in range(5):
            assert await conn.run(ECHO, [str(i)]) == str(i).encode()
        assert conn.failures == 0 and conn.connected


async def test_a_burst_keeps_at_most_lane_size_idle_and_close_closes_them_all(
    redis_url: str,
) -> None:
    async with connection(redis_url, "admin") as admin:
        async with connection(redis_url, "burst") as conn:
            words = [str(i) for i in range(3 * LANE_SIZE)]
            assert await asyncio.gather(*(conn.run(ECHO, [w]) for w in words)) == [
                w.encode() for w in words
            ]
            assert len(conn._lane) == LANE_SIZE  # the rest went back to the pool
            assert await clients_named(admin, "burst") >= LANE_SIZE
        # (the server may list a client a moment after its socket closed here)
        for _ in range(500):
            if await clients_named(admin, "burst") == 0:
                break
            await asyncio.sleep(0.01)
        assert await clients_named(admin, "burst") == 0


async def test_a_call_cancelled_while_it_replaces_a_closed_connection_keeps_none(
    redis_url: str,
) -> None:
    async with connection(redis_url) as conn, connection(redis_url, "admin") as admin:
        pool = conn.client.connection_pool
        assert await conn.run(ECHO, ["warm"]) == b"warm"
        [idle] = conn._lane
        assert await admin.command("CLIENT", "KILL", "USER", "default", "SKIPME", "no") >= 1
        for _ in range(500):  # until the close reached the client
            if await idle.can_read():
                break
            await asyncio.sleep(0.01)
        call = asyncio.ensure_future(conn.run(ECHO, ["cut short"]))
        await asyncio.sleep(0)  # it took the closed connection and is replacing it
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        # Before, the connection it held was in neither the lane nor the pool: one of the
        # pool's MAX_CONNECTIONS gone for good (held "in use" by nobody) each time.
        assert len(pool._in_use_connections) == len(conn._lane)  # type: ignore[attr-defined]
        assert await conn.run(ECHO, ["next"]) == b"next"
