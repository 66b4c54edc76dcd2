"""runtime.loop.cancel_and_wait and the interruptible Redis reads built on the same lesson:
a cancel must never be lost, and a blocking read must end when told to."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from runtime.loop import cancel_and_wait


async def slow_to_end() -> None:
    """A child that takes a few loop turns to end once cancelled (as a network call does)."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        for _ in range(3):
            await asyncio.sleep(0)
        raise


async def test_our_own_cancel_goes_on_after_the_children_end() -> None:
    # The old idiom, ``child.cancel(); with suppress(CancelledError): await child``,
    # returned normally here: the parent's cancel looked like the child's and was lost.
    in_wait = asyncio.Event()
    children: list[asyncio.Task[None]] = []

    async def parent() -> str:
        child = asyncio.create_task(slow_to_end())
        children.append(child)
        await asyncio.sleep(0)  # the child is running
        in_wait.set()
        await cancel_and_wait(child)
        return "the cancel was swallowed"

    task = asyncio.create_task(parent())
    await in_wait.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children[0].cancelled()  # and the child ended before the parent did


async def test_outcomes_are_retrieved_and_done_tasks_left_alone() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    running = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(failed, finished, running)
    assert isinstance(failed.exception(), ValueError) and finished.done() and running.cancelled()


async def test_an_interrupted_blocking_read_ends_at_once(redis_url: str) -> None:
    from runtime.stores.redis import RedisConnection, parse_redis_url
    from runtime.stores.redis.client import ReadInterrupted

    conn = RedisConnection(parse_redis_url(redis_url))
    reader = conn.blocking_reader("test")
    try:
        for _ in range(3):  # and the reader works again after each interrupt
            read = asyncio.create_task(
                reader.command("XREAD", "BLOCK", 0, "STREAMS", "nothing-here", "$")
            )
            await asyncio.sleep(0.05)
            reader.interrupt()
            with pytest.raises(ReadInterrupted):
                await read  # BLOCK 0 waits forever: only the interrupt ends this
        assert await reader.command("PING") in (b"PONG", True)
        assert conn.failures == 0  # an interrupt is not an outage
    finally:
        await reader.close()
        await conn.close()


async def test_a_child_that_swallows_its_cancel_is_cancelled_again() -> None:
    # redis-py 8 swallows a cancel that lands in the middle of a command; the cluster's
    # loops then went on to wait on an event, and Runtime.close() hung forever on them.
    waiting = asyncio.Event()

    async def swallows_once() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the library's bug: lost
            await asyncio.sleep(60)
        waiting.set()
        await asyncio.Event().wait()  # our loop's next wait: only a new cancel ends it

    child = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(child)
    assert waiting.is_set() and child.cancelled()
