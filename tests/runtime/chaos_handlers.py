"""Handlers and hooks of the chaos test (tests/runtime/test_chaos.py) and of the tests of
what it found (tests/runtime/test_unregister_races.py).

Module-level so a ``kind="process"`` worker can import them. Each task's payload
says what its attempts do: ``{"ms": how long it works, "mode": what happens}``,
with modes

- ``ok``: work ``ms`` milliseconds, return the task id;
- ``fail``: work, then raise a retryable error (so it retries, then fails);
- ``flaky``: fail on the first attempt only;
- ``refuse``: raise :class:`NonRetryableError` at once (Failed after one attempt);
- ``hang``: run far past the function's timeout (until cut short; blocking
  handlers honour ``stop_requested``, so no thread is ever abandoned).

The process Initializer writes the worker's pid under ``$STINT_TEST_DIR/pids/``
so that the test can SIGKILL workers at random moments.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

from runtime import NonRetryableError

HANG_SECONDS = 2.0  # far past every chaos timeout; a stop flag or a cancel ends it first


def _outcome(event: Any, ctx: Any) -> str:
    mode = event["mode"]
    if mode == "fail" or (mode == "flaky" and ctx.attempt == 1):
        raise ConnectionError(f"attempt {ctx.attempt} of {ctx.task_id} broke")
    return str(ctx.task_id)


async def chaos_async(event: Any, ctx: Any) -> str:
    mode = event["mode"]
    if mode == "refuse":
        raise NonRetryableError("the input is wrong")
    await asyncio.sleep(HANG_SECONDS if mode == "hang" else event["ms"] / 1000)
    return _outcome(event, ctx)


def chaos_blocking(event: Any, ctx: Any) -> str:
    """The thread and process version: sleeps in steps, returns early once asked to stop."""
    mode = event["mode"]
    if mode == "refuse":
        raise NonRetryableError("the input is wrong")
    seconds = HANG_SECONDS if mode == "hang" else event["ms"] / 1000
    if ctx.stop_event.wait(seconds):
        return "stopped"
    return _outcome(event, ctx)


async def init_async(instance: Any) -> None:
    instance.state["ready"] = True


def init_blocking(instance: Any) -> None:
    instance.state["ready"] = True


def init_process(instance: Any) -> None:
    """Record this worker's pid, for the test to kill."""
    pids = pathlib.Path(os.environ["STINT_TEST_DIR"]) / "pids"
    pids.mkdir(exist_ok=True)
    (pids / str(os.getpid())).touch()


async def pre_stop_async(instance: Any) -> None:
    await asyncio.sleep(0)


def pre_stop_blocking(instance: Any) -> None:
    time.sleep(0)


def pre_stop_forever(instance: Any) -> None:
    """A PreStop that says it started (in the ``kind_handlers`` log), then waits to be killed."""
    log = pathlib.Path(os.environ["STINT_TEST_DIR"]) / "log"
    with log.open("a") as file:
        file.write("pre_stop\n")
    time.sleep(30)
