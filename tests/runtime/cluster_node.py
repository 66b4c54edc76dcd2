"""One node of a cluster on Redis as a real OS process (tests/runtime/test_redis_multiprocess.py).

python -m tests.runtime.cluster_node URL NODE_ID LOG_DIR LOOP

It starts ``Runtime(store=URL, node_id=NODE_ID)`` on the event loop ``LOOP`` (``uvloop``
or ``asyncio``), serves the function ``work`` (``concurrency`` 20, one instance: a stop
must restart the instance the stopped task runs on), prints ``ready NODE_ID`` once
started, and runs until SIGTERM (or until its stdin ends: the test process is gone, however
it ended, so no node outlives it), then closes.

What the node does is written, one line at a time, to ``LOG_DIR/NODE_ID.log`` (a single
``write`` of a short line to a file opened with O_APPEND, so a SIGKILL leaves no torn
line), for the test to read from its own process:

- ``start TASK ATTEMPT`` when an attempt begins, ``end TASK ATTEMPT`` when its handler
  returns (not when Redis has the outcome: the node writes behind);
- ``init INSTANCE`` and ``prestop INSTANCE`` from the Initializer and PreStop hooks.

The payload says how long an attempt sleeps (``{"sleep": s}``); ``{"block": True}``
sleeps until the attempt is cancelled (a stop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any

from runtime import Runtime
from runtime.loop import run

CONCURRENCY = 20


class Journal:
    """Lines appended to this node's log file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, *words: object) -> None:
        os.write(self._fd, (" ".join(map(str, words)) + "\n").encode())


async def main(url: str, node_id: str, log_dir: str) -> None:
    journal = Journal(os.path.join(log_dir, f"{node_id}.log"))

    async def work(event: Any, ctx: Any) -> Any:
        journal.write("start", ctx.task_id, ctx.attempt)
        if event.get("block"):
            await asyncio.Event().wait()  # until the attempt is cancelled
        await asyncio.sleep(event.get("sleep", 0))
        journal.write("end", ctx.task_id, ctx.attempt)
        return node_id

    def initializer(ictx: Any) -> None:
        journal.write("init", ictx.instance_id)

    def pre_stop(ictx: Any) -> None:
        journal.write("prestop", ictx.instance_id)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the test process closed the pipe or died
        loop.call_soon_threadsafe(stopping.set)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    rt = Runtime(store=url, node_id=node_id, close_timeout=2.0)
    rt.register(
        "work",
        work,
        concurrency=CONCURRENCY,
        max_instances=1,
        max_retries=5,
        retry_backoff=0.05,
        initializer=initializer,
        pre_stop=pre_stop,
    )
    await rt.start()
    print("ready", node_id, flush=True)
    try:
        await stopping.wait()
    finally:
        await rt.close()
    print("closed", node_id, flush=True)


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    url_arg, node_arg, dir_arg, loop_arg = sys.argv[1:5]
    run(main(url_arg, node_arg, dir_arg), loop=loop_arg)
