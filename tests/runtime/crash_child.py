"""Run by the crash test: a runtime on a SQLite file, invoking tasks until it is killed.

python -m tests.runtime.crash_child DB ACCEPTED_FILE EXECUTED_FILE N
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from runtime import Runtime


async def main(db: str, accepted_path: str, executed_path: str, n: int) -> None:
    executed = os.open(executed_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    accepted = os.open(accepted_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    async def work(event: Any, ctx: Any) -> Any:
        os.write(executed, f"{ctx.task_id} {ctx.attempt}\n".encode())
        await asyncio.sleep(0.005)
        return event

    async with Runtime(store=f"sqlite:///{db}") as rt:
        rt.register("work", work, concurrency=20, max_instances=2, max_queued=n + 1)

        async def one(i: int) -> None:
            task_id = await rt.invoke("work", i, task_id=f"job-{i}")
            os.write(accepted, f"{task_id}\n".encode())  # only once invoke has returned

        for base in range(0, n, 250):
            await asyncio.gather(*(one(i) for i in range(base, min(n, base + 250))))
        await rt.join()


if __name__ == "__main__":
    db, accepted_file, executed_file, count = sys.argv[1:5]
    asyncio.run(main(db, accepted_file, executed_file, int(count)))
