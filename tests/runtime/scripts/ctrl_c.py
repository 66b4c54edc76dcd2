"""A program embedding stint, for the Ctrl-C test: it runs a task that never ends.

It prints READY once the task runs, then waits; the test sends SIGINT twice.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from runtime import Runtime
from runtime.loop import run


async def forever(event: object, ctx: object) -> None:
    await asyncio.Event().wait()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    async with Runtime(close_timeout=60) as rt:
        rt.register("forever", forever)
        await rt.invoke("forever")
        while not (await rt.function_stats())["forever"]["running"]:
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        run(main(), loop=sys.argv[1] if len(sys.argv) > 1 else "auto")
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
