"""A node for the service tests: ``stint serve tests.service.node_app:build``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runtime import NonRetryableError, Runtime


async def greet(event: Any, ctx: Any) -> dict[str, Any]:
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {"hello": name}


async def hold(event: Any, ctx: Any) -> str:
    """Runs for ``event`` seconds (a number), or until stopped."""
    seconds = event if isinstance(event, int | float) else None
    if seconds is None:
        await asyncio.Event().wait()
    await asyncio.sleep(seconds)
    return "held"


async def fail(event: Any, ctx: Any) -> None:
    raise NonRetryableError("fails on purpose")


def build() -> Runtime:
    """A fresh runtime on STINT_STORE (memory by default)."""
    rt = Runtime(store=os.environ.get("STINT_STORE", "memory://"), close_timeout=10.0)
    rt.register("greet", greet, concurrency=50, max_instances=4)
    rt.register("hold", hold, concurrency=10, max_instances=2)
    rt.register("fail", fail, max_retries=0)
    rt.register("tiny", greet, max_queued=1, max_instances=1)
    return rt


rt = build()
