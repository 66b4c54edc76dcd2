"""Handlers the benchmark runs in threads and worker processes.

Kept free of heavy imports on purpose: a ``kind="process"`` worker imports this
module at start-up, and its cold start is one of the figures.
"""

from __future__ import annotations

from typing import Any


def blocking_noop(event: object, ctx: object = None) -> object:
    return event


def until_stopped(event: object, ctx: Any) -> None:
    """Blocks until the runtime asks the attempt to stop (thread and process kinds)."""
    ctx.stop_event.wait(60)
