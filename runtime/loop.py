"""Event loop choice: uvloop where it imports, the plain asyncio loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory for ``name``: "uvloop", "asyncio", or "auto" (uvloop when installed)."""
    if name not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"unknown loop {name!r}: use 'auto', 'uvloop' or 'asyncio'")
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop (uvloop by default)."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)
