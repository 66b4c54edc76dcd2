"""Handlers and hooks shared by every instance kind in the tests.

Module-level so a ``kind="process"`` worker can import them. Kinds run them in
other threads or processes, so they coordinate through files, named by the
environment variable STINT_TEST_DIR (workers inherit the environment):

- ``log``: one line per hook or handler call, appended atomically;
- ``release``: handlers that block return once this file exists.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

from runtime import NonRetryableError


def _dir() -> pathlib.Path:
    return pathlib.Path(os.environ["STINT_TEST_DIR"])


def log(line: str) -> None:
    fd = os.open(_dir() / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log() -> list[str]:
    path = _dir() / "log"
    return path.read_text().splitlines() if path.exists() else []


def release() -> None:
    (_dir() / "release").touch()


def _released() -> bool:
    return (_dir() / "release").exists()


# --- handlers: a sync and an async version of each ---------------------------------


def echo(event: Any, ctx: Any) -> Any:
    log(f"run {ctx.task_id} on {ctx.instance.instance_id}")
    return {"echo": event, "attempt": ctx.attempt, "state": ctx.instance.state.get("conn")}


async def echo_async(event: Any, ctx: Any) -> Any:
    return echo(event, ctx)


def fail(event: Any, ctx: Any) -> None:
    raise ValueError(f"attempt {ctx.attempt} broke")


async def fail_async(event: Any, ctx: Any) -> None:
    fail(event, ctx)


def refuse(event: Any, ctx: Any) -> None:
    raise NonRetryableError("the input is wrong")


async def refuse_async(event: Any, ctx: Any) -> None:
    refuse(event, ctx)


class PageMissing(KeyError):
    """An error class of the handler's module: retry policies name it, or its bases."""


def raise_named(event: str, ctx: Any) -> None:
    """Raises the error ``event`` names: value, key, missing (PageMissing) or refuse."""
    errors = {"value": ValueError, "key": KeyError, "missing": PageMissing}
    raise errors.get(event, NonRetryableError)(f"attempt {ctx.attempt}")


async def raise_named_async(event: str, ctx: Any) -> None:
    raise_named(event, ctx)


def block(event: Any, ctx: Any) -> str:
    """Runs until the test releases it or the runtime asks it to stop."""
    log(f"run {ctx.task_id} on {ctx.instance.instance_id}")
    while not _released():
        if ctx.stop_requested:
            return "stopped"
        time.sleep(0.002)
    return "released"


async def block_async(event: Any, ctx: Any) -> str:
    log(f"run {ctx.task_id} on {ctx.instance.instance_id}")
    while not _released():
        await asyncio.sleep(0.002)
    return "released"


def fail_first(event: Any, ctx: Any) -> int:
    if ctx.attempt == 1:
        raise ConnectionError("try again")
    return int(ctx.attempt)


async def fail_first_async(event: Any, ctx: Any) -> int:
    return fail_first(event, ctx)


def where_is_inspect(event: Any, ctx: Any) -> str:
    import inspect

    return str(inspect.__file__)


def whoami(event: Any, ctx: Any) -> int:
    return os.getpid()


async def whoami_async(event: Any, ctx: Any) -> int:
    return os.getpid()


# --- hooks ---------------------------------------------------------------------------


def initializer(instance: Any) -> None:
    instance.state["conn"] = f"conn-{instance.instance_id}"
    log(f"initializer {instance.instance_id}")


def pre_freeze(instance: Any) -> None:
    log(f"pre_freeze {instance.instance_id}")


def pre_stop(instance: Any) -> None:
    log(f"pre_stop {instance.instance_id}")


def broken_initializer(instance: Any) -> None:
    raise OSError("model file missing")


# --- process-only misbehaviour ------------------------------------------------------------


def exit_hard(event: Any, ctx: Any) -> None:
    log(f"run {ctx.task_id} on {ctx.instance.instance_id}")
    os._exit(3)


def crash_in_batch(event: str, ctx: Any) -> str:
    """``quick`` returns at once; ``block`` runs until stopped; ``crash`` runs until the
    file ``crash`` exists, then ends the worker."""
    if event == "quick":
        return "quick"
    log(f"run {event} {ctx.task_id}")
    while not (event == "crash" and (_dir() / "crash").exists()):
        if ctx.stop_requested:
            return "stopped"
        time.sleep(0.002)
    os._exit(3)


def chatty(event: Any, ctx: Any) -> str:
    for i in range(200):
        print(f"line {i} of chatter from the handler")
    print("to stderr", file=sys.stderr)
    return "still fine"


def garbage(event: Any, ctx: Any) -> None:
    if ctx.attempt == 1:  # corrupt the protocol once, then behave
        os.write(int(os.environ["STINT_WORKER_FD"]), b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
        time.sleep(5)


def oversized_frame(event: Any, ctx: Any) -> None:
    if ctx.attempt == 1:
        os.write(int(os.environ["STINT_WORKER_FD"]), b"\xff\xff\xff\xff")
        time.sleep(5)


# --- timing -------------------------------------------------------------------------------


def sleep_ms(event: Any, ctx: Any) -> None:
    time.sleep(event / 1000)


async def sleep_ms_async(event: Any, ctx: Any) -> None:
    await asyncio.sleep(event / 1000)


def stubborn(event: Any, ctx: Any) -> str:
    """Runs for ``event`` seconds (or until released), never checking its stop flag."""
    log(f"run {ctx.task_id} on {ctx.instance.instance_id}")
    deadline = time.monotonic() + float(event or 0.5)
    while time.monotonic() < deadline and not _released():
        time.sleep(0.005)
    return "late"


def send_frame(event: Any, ctx: Any) -> str:
    """On attempt 1, write ``event`` (raw bytes) to the worker's frame socket and wait to be
    killed for it; later attempts behave."""
    if ctx.attempt == 1:
        os.write(int(os.environ["STINT_WORKER_FD"]), event)
        time.sleep(5)
    return "ok"


def frame_initializer(instance: Any) -> None:
    """Writes the raw bytes of the file ``frame`` (in STINT_TEST_DIR) to the frame socket."""
    os.write(int(os.environ["STINT_WORKER_FD"]), (_dir() / "frame").read_bytes())


_children: list[subprocess.Popen[bytes]] = []  # held, so no ResourceWarning in the worker


def spawn_child(event: Any, ctx: Any) -> str:
    """Starts a ``sleep 60`` child (its pid goes to the log); then blocks if asked to."""
    child = subprocess.Popen(["sleep", "60"])
    _children.append(child)
    log(f"child {child.pid} of {os.getpid()}")
    return block(event, ctx) if event == "block" else "spawned"


def long_line(event: Any, ctx: Any) -> str:
    sys.stdout.write("x" * event + "\n")  # one line, far over any reader's line limit
    print(f"after the long line of {ctx.task_id}")
    return "done"
