"""What the hot path's shortcuts must never change: values handlers see, the GC setting."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from runtime import ConfigError, Runtime, TaskState
from tests.conftest import RuntimeFactory

S = TaskState


async def test_a_mutable_payload_is_fresh_for_every_attempt(make_runtime: RuntimeFactory) -> None:
    # Scalars go to the handler as invoke got them; containers are decoded per attempt,
    # so a handler that mutates its event cannot change what the retry sees.
    rt = await make_runtime()
    seen: list[Any] = []

    async def mutate(event: Any, ctx: Any) -> Any:
        seen.append(repr(event))
        if isinstance(event, dict):
            event["spoiled"] = True
        if ctx.attempt == 1:
            raise ValueError("again")
        return event

    rt.register("fn", mutate, retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn", {"a": [1, 2]}), timeout=5)
    assert seen == ["{'a': [1, 2]}", "{'a': [1, 2]}"]
    assert record.payload == {"a": [1, 2]}
    for value in (7, 2.5, "text", b"raw", True, None):
        done = await rt.wait(await rt.invoke("fn", value), timeout=5)
        assert done.status is S.SUCCEEDED and done.result == value and done.payload == value


async def test_gc_threshold_is_set_while_running_and_put_back() -> None:
    before = gc.get_threshold()
    rt = Runtime(gc_threshold=50_000)
    assert gc.get_threshold() == before  # nothing changes until start
    async with rt:
        assert gc.get_threshold() == (50_000, *before[1:])
    assert gc.get_threshold() == before
    async with Runtime():
        assert gc.get_threshold() == before  # never changed unless asked


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "700"])
def test_gc_threshold_is_checked(value: Any) -> None:
    with pytest.raises(ConfigError, match="gc_threshold"):
        Runtime(gc_threshold=value)
