"""Fixtures for the service: the app in-process over httpx's ASGI transport, on both stores;
``stint serve`` as a real process."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from runtime import Runtime
from runtime.service import create_app
from tests.conftest import RuntimeFactory
from tests.runtime.helpers import Gate
from tests.service import node_app

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class InProcess:
    rt: Runtime
    app: FastAPI
    client: httpx.AsyncClient
    gate: Gate


@pytest.fixture
async def node(make_runtime: RuntimeFactory) -> AsyncIterator[InProcess]:
    """A started runtime (memory or sqlite) behind the app, and a client of it."""
    rt = await make_runtime(max_payload_bytes=1024)
    gate = Gate()
    rt.register("greet", node_app.greet, concurrency=10)
    rt.register("hold", gate.handler, concurrency=10, max_instances=1)
    rt.register("fail", node_app.fail, max_retries=0)
    rt.register("narrow", gate.handler, concurrency=1, max_instances=1, max_queued=1)
    app = create_app(rt, heartbeat=0.05)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stint") as client:
        yield InProcess(rt, app, client, gate)
    gate.open()  # let held tasks end before the runtime closes


def problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """Check an error answer's shape and return the problem document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == type_ and body["status"] == status and body["detail"]
    return body


@dataclasses.dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    lines: list[str]

    def log(self) -> str:
        return "\n".join(self.lines)


def start_node(*args: str, env: dict[str, str] | None = None, cwd: pathlib.Path = ROOT) -> Served:
    """``stint serve tests.service.node_app:build --port 0 ARGS``, once it listens."""
    command = [sys.executable, "-m", "runtime.cli", "serve", "tests.service.node_app:build"]
    process = subprocess.Popen(
        [*command, "--port", "0", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip())
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return Served(found.group(1), process, lines)
    process.kill()
    raise AssertionError("stint serve did not start:\n" + "\n".join(lines))


def finish(served: Served, timeout: float = 20) -> str:
    """Wait for the process to exit; its whole log."""
    _, rest = served.process.communicate(timeout=timeout)
    served.lines.extend((rest or "").splitlines())
    return served.log()


@pytest.fixture
def served() -> Iterator[Served]:
    """A node in a subprocess (memory store); terminated afterwards."""
    node = start_node()
    yield node
    if node.process.poll() is None:
        node.process.terminate()
        try:
            node.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.communicate()
