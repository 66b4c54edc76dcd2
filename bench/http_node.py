"""The node the HTTP benchmark serves: ``stint serve bench.http_node:build``."""

from __future__ import annotations

from runtime import Runtime


async def noop(event: object, ctx: object = None) -> object:
    return event


def build() -> Runtime:
    rt = Runtime(store="memory://?max_records=1000000")
    rt.register("noop", noop, concurrency=100, max_instances=10, max_queued=1_000_000)
    return rt
