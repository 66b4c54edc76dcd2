"""Closing a runtime: let running attempts finish, run PreStop everywhere, account for what
is left unfinished, and close every actor, background task and the store.

Kept apart from ``runtime.py`` (and never compiled by mypyc): cancelling ``close()``
must cut the waiting short and still close properly, and that path is plain asyncio
cancellation handling, best left to the interpreter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from actors import ActorRef

from .messages import Drain, Interrupt, Running, Shutdown

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger("stint")


async def shut_down(rt: Runtime) -> None:
    """What ``close`` does to a runtime that started (or began to)."""
    rt._state = "closing"
    try:
        await _wind_down(rt)
    except asyncio.CancelledError:
        logger.warning("stint: close interrupted: cutting running work short")
        await _tear_down(rt, hurry=True)
        raise
    await _tear_down(rt, hurry=False)


async def _wind_down(rt: Runtime) -> None:
    """Let running attempts finish (up to close_timeout), then PreStop every instance."""
    if rt._cluster is not None:
        await rt._cluster.node.stop_taking_work()  # no more work from the cluster
    pools = [pool for pool in rt._pools if pool.is_alive]
    running = sum(await _ask_each(pools, Running))
    if running:
        logger.warning(
            "stint: closing: waiting up to %.1f s for %d running attempt(s) to finish "
            "(cancel close(), or press Ctrl-C again, to stop waiting)",
            rt.close_timeout,
            running,
        )
    if not await _ask_all(pools, Drain, rt.close_timeout):
        logger.warning(
            "stint: closing: attempts still running after close_timeout=%s s: interrupted",
            rt.close_timeout,
        )
        for pool in pools:
            pool.tell(Interrupt())
        await _ask_all(pools, Drain, 5.0)
    longest_pre_stop = max(
        (e.spec.config.pre_stop_timeout for e in rt._functions.values()), default=0
    )
    await _ask_all(pools, Shutdown, longest_pre_stop + 5.0)


async def _tear_down(rt: Runtime, *, hurry: bool) -> None:
    """Stop background work, account for unfinished tasks, close actors and the store."""
    if rt._cluster is not None:
        await rt._cluster.node.close()  # its loops first: they are background work too
    if hurry:
        for pool in rt._pools:
            pool.tell(Interrupt())
        rt.close_cancelled = await rt._background.cancel_all()
    else:
        # worker processes get 1 s to exit; anything still running after 3 s is cut
        rt.close_cancelled = await rt._background.wait(timeout=3.0)
        if rt.close_cancelled:
            logger.warning("close() cancelled %d background task(s)", rt.close_cancelled)
    await _account_for_unfinished(rt)
    if rt._system is not None:
        rt._system.close()
    rt._waits.close()
    rt._live.clear()
    rt._gc.restore()
    try:
        await rt._store.close()
    finally:
        if rt._metrics_server is not None:
            await rt._metrics_server.close()
            rt._metrics_server = None
        rt._state = "closed"


async def _account_for_unfinished(rt: Runtime) -> None:
    """Count the tasks close leaves unfinished, by state, and say what becomes of them."""
    unfinished: Counter[str] = Counter()
    for task_id in rt._live:
        record = await rt._store.get(task_id)
        if record is not None and not record.is_terminal:
            unfinished[str(record.status)] += 1
    rt.close_unfinished = dict(unfinished)
    total = sum(unfinished.values())
    if not total:
        return
    states = ", ".join(f"{state}: {count}" for state, count in sorted(unfinished.items()))
    if rt._store.shared:
        fate = f"kept in {rt._store.url}: the other nodes reclaim them"
    elif rt._store.durable:
        fate = f"kept in {rt._store.url}: they are recovered on the next start"
    else:
        fate = "lost: the memory store keeps nothing (use a durable store to keep them)"
    logger.warning("stint: closed with %d unfinished task(s) (%s): %s", total, states, fate)


async def _ask_each(pools: list[ActorRef], message: type[Any]) -> list[Any]:
    answers = await asyncio.gather(
        *[pool.ask(message()) for pool in pools if pool.is_alive], return_exceptions=True
    )
    return [answer for answer in answers if not isinstance(answer, BaseException)]


async def _ask_all(pools: list[ActorRef], message: type[Any], timeout: float) -> bool:
    asks = [pool.ask(message()) for pool in pools if pool.is_alive]
    if not asks:
        return True
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*asks, return_exceptions=True)
    except TimeoutError:
        return False
    return True
