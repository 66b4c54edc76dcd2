"""Small tools for runtime tests: gates that handlers wait on, and status helpers."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime import Runtime, TaskRecord, TaskState
from tests.conftest import eventually


class Gate:
    """A handler or hook blocks on ``wait()`` until the test calls ``open()``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.entered = 0
        self.cancelled = 0

    def open(self) -> None:
        self._event.set()

    async def handler(self, event: Any, ctx: Any) -> None:
        """A task handler that blocks until the gate opens."""
        await self.wait()

    async def wait(self) -> None:
        self.entered += 1
        try:
            await self._event.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def list_all(rt: Runtime, **filters: Any) -> list[TaskRecord]:
    """Every matching record, following rt.list's cursors page by page."""
    found: list[TaskRecord] = []
    cursor = None
    while True:
        page = await rt.list(**filters, limit=1000, cursor=cursor)
        found += page
        cursor = page.next_cursor
        if cursor is None:
            return found


def statuses(record: TaskRecord) -> list[str]:
    return [str(event.status) for event in record.events]


async def until_status(
    rt: Runtime, task_id: str, status: TaskState, timeout: float = 5.0
) -> TaskRecord:
    """Wait until the task has reached ``status`` (now or at some point in its history)."""
    box: dict[str, Any] = {}

    async def reached() -> bool:
        record = await rt.get(task_id)
        box["record"] = record
        return status in [e.status for e in record.events]

    async with asyncio.timeout(timeout):
        while not await reached():
            await asyncio.sleep(0.001)
    record: TaskRecord = box["record"]
    return record


__all__ = ["Gate", "eventually", "list_all", "statuses", "until_status"]


def patch_or_skip(monkeypatch: Any, target: Any, name: str, value: Any) -> None:
    """Replace ``target.name`` for a fault-injection test, or skip it where it cannot be.

    Objects of classes compiled by mypyc (STINT_COMPILE=1) have fixed attributes: a
    test that injects its fault by patching one runs on the pure build, which runs the
    same source, and is skipped with the reason on the compiled one.
    """
    if not hasattr(target, "__dict__"):
        import pytest

        pytest.skip(
            f"injects a fault by patching {type(target).__name__}.{name}, which the compiled "
            "build fixes in place; the pure build (pip install -e '.[test]') runs this test"
        )
    monkeypatch.setattr(target, name, value)
