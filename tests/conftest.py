"""Shared fixtures: every async test runs on both uvloop and the plain asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from runtime import ManualClock, Runtime
from runtime.loop import loop_factory
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    factories: dict[str, Any] = {"asyncio": asyncio.new_event_loop}
    with contextlib.suppress(ImportError):  # uvloop is a dependency, but not on Windows
        factories["uvloop"] = loop_factory("uvloop")
    return factories


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Every test that builds its runtime with ``make_runtime`` runs on each store
    (Redis: the session's real server, a key prefix of the test's own)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
async def make_runtime(store_url: str) -> AsyncIterator[RuntimeFactory]:
    """Start runtimes for a test; each is closed afterwards and must have had no actor failure.

    Without an explicit ``store=``, the first runtime uses the parametrized store
    (later ones get memory, so a test can build two without sharing a file).
    """
    made: list[Runtime] = []

    async def make(**kwargs: Any) -> Runtime:
        kwargs.setdefault("store", store_url if not made else "memory://")
        kwargs.setdefault("tick_interval", 0.01)
        kwargs.setdefault("close_timeout", 5.0)
        rt = Runtime(**kwargs)
        await rt.start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        system = rt.actor_system
        await rt.close()
        assert system is not None
        assert not system.failures, f"runtime actors failed: {list(system.failures)}"
        assert system.live_actors == 0
        assert rt.close_cancelled == 0, "close() had to cancel work that should have ended"


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait (yielding to the loop, not sleeping a fixed time) until ``predicate()`` is true."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


# --- a real Redis (tests/redis_server.py) ------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (free loopback port, temp dir, AOF on)."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_redis_prefixes = itertools.count(1)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A store URL on the session's server with a key prefix of its own; flushed afterwards."""
    yield f"{redis_server.url}?prefix=test{next(_redis_prefixes)}"
    redis_server.flush()


@pytest.fixture
def make_redis_server(tmp_path: pathlib.Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of a test's own (to restart or kill, or with ``tls=True``);
    all stopped afterwards."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    started: list[RedisServer] = []

    def make(*, tls: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", tls=tls)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the chaos and lifecycle-model tests long: more tasks, seeds and examples",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --chaos-long, the chaos tests get the time they need (the default is 60 s)."""
    if config.getoption("--chaos-long"):
        for item in items:
            if item.get_closest_marker("chaos") is not None:
                item.add_marker(pytest.mark.timeout(3600))
