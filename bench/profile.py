"""The workload docs/performance.md profiles ("What remains"): 100,000 no-op async tasks
in waves of 5,000 on the memory store, invoked and joined.

    py-spy record -r 400 --format raw -o prof.raw -- python -m bench.profile
"""

from __future__ import annotations

from typing import Any

from runtime import Runtime
from runtime.loop import run


async def noop(event: Any, ctx: Any) -> None:
    return None


async def main(waves: int = 20, size: int = 5000) -> None:
    rt = Runtime()
    await rt.start()
    rt.register("noop", noop, concurrency=1000, max_instances=1)
    for _ in range(waves):
        for _ in range(size):
            await rt.invoke("noop")
        await rt.join("noop")
    await rt.close()


if __name__ == "__main__":
    run(main())
