"""Metrics: scraped over real HTTP while tasks run, parsed, and checked against what ran."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import threading
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime import ConfigError, Runtime, RuntimeClosedError, TaskState
from tests.conftest import RuntimeFactory, eventually

from .helpers import Gate, until_status


def scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def echo(event: Any, ctx: Any) -> Any:
    return event


def echo_thread(event: Any, ctx: Any) -> Any:
    return event


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_counts_match_what_ran(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()
    failing = {f"bad{i}" for i in range(3)}

    async def work(event: Any, ctx: Any) -> str:
        if ctx.task_id in failing:
            raise ValueError("always")
        if event == "hold":
            await gate.wait()
        return "ok"

    rt.register("work", work, max_retries=2, retry_backoff=0, concurrency=10)
    host, port = await rt.serve_metrics(port=0)
    assert host == "127.0.0.1"
    held = await rt.invoke("work", "hold")
    await until_status(rt, held, TaskState.RUNNING)
    during = await asyncio.to_thread(scrape, host, port)  # a scrape while a task runs
    assert value(during, "stint_tasks", function="work", state="Running") == 1
    for i in range(96):
        await rt.invoke("work", i)
    for task_id in sorted(failing):
        await rt.invoke("work", task_id=task_id)
    gate.open()
    await rt.join("work", timeout=10)
    s = await asyncio.to_thread(scrape, host, port)
    transitions = {
        state.value: value(s, "stint_task_transitions_total", function="work", state=state.value)
        for state in TaskState
    }
    assert transitions == {
        "Enqueued": 100, "Dequeued": 100, "Running": 106, "Retrying": 6, "Succeeded": 97,
        "Failed": 3, "Expired": 0, "Invalid": 0, "Stopping": 0, "Stopped": 0,
    }  # fmt: skip
    assert value(s, "stint_tasks_submitted_total", function="work") == 100
    assert value(s, "stint_task_retries_total", function="work") == 6
    assert value(s, "stint_tasks", function="work", state="Running") == 0
    attempts = "stint_task_attempt_duration_seconds_count"
    assert value(s, attempts, function="work", outcome="succeeded") == 97
    assert value(s, attempts, function="work", outcome="failed") == 9
    assert value(s, "stint_task_queue_wait_seconds_count", function="work") == 100
    assert value(s, "stint_queue_depth", function="work") == 0
    assert value(s, "stint_instance_starts_total", function="work", kind="async") >= 1
    assert value(s, "stint_actor_dead_letters_total") == 0
    assert ("stint_build_info", ()) not in s  # it carries version labels
    assert any(name == "stint_build_info" for name, _ in s)


async def test_hooks_and_instance_stops_are_counted(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    def initializer(instance: Any) -> None:
        raise OSError("no model")

    async def echo(event: Any, ctx: Any) -> Any:
        return event

    rt.register("broken", echo, initializer=initializer)
    await rt.wait(await rt.invoke("broken"), timeout=5)
    s = {
        (f.name, tuple(sorted(sm.labels.items())), sm.name): sm.value
        for f in text_string_to_metric_families(await rt.metrics_text())
        for sm in f.samples
    }
    failures = ("stint_hook_failures", (("function", "broken"), ("hook", "initializer")))
    assert s[(*failures, "stint_hook_failures_total")] == 1
    stops = ("function", "broken"), ("kind", "async"), ("reason", "start_failed")
    assert s[("stint_instance_stops", stops, "stint_instance_stops_total")] == 1
    hook_count = ("stint_hook_duration_seconds", (("function", "broken"), ("hook", "initializer")))
    assert s[(*hook_count, "stint_hook_duration_seconds_count")] == 1


async def test_two_runtimes_have_separate_registries(make_runtime: RuntimeFactory) -> None:
    first, second = await make_runtime(), await make_runtime()

    async def echo(event: Any, ctx: Any) -> Any:
        return event

    first.register("echo", echo)
    second.register("echo", echo)
    await first.wait(await first.invoke("echo"), timeout=5)
    assert first.metrics_registry is not second.metrics_registry
    assert 'stint_tasks_submitted_total{function="echo"} 1.0' in await first.metrics_text()
    assert 'stint_tasks_submitted_total{function="echo"} 0.0' in await second.metrics_text()


async def test_metrics_port_option_serves_on_loopback_and_close_stops_it() -> None:
    rt = Runtime(metrics_port=0)
    async with rt:
        assert rt._metrics_server is not None
        host, port = rt._metrics_server.address
        assert host == "127.0.0.1"
        samples = await asyncio.to_thread(scrape, host, port)
        assert value(samples, "stint_actor_failures_total") == 0
        with pytest.raises(ConfigError, match="already served"):
            await rt.serve_metrics(port=0)
    with pytest.raises(OSError):
        await asyncio.to_thread(scrape, host, port)


# --- metrics_port: checked early, and a failed start leaves nothing behind -----------------


@pytest.mark.parametrize(
    "options",
    [
        {"metrics_port": -1},
        {"metrics_port": 65536},
        {"metrics_port": "9464"},
        {"metrics_port": True},
        {"metrics_port": 9464.0},
        {"metrics_host": ""},
        {"metrics_host": None},
        {"metrics_host": 127},
    ],
)
def test_runtime_refuses_a_bad_metrics_address(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="metrics_"):
        Runtime(**options)


def sqlite_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'tasks.db'}"


async def assert_nothing_left(rt: Runtime, url: str, threads: set[threading.Thread]) -> None:
    """The runtime is closed, holds no thread, task or actor, and its store is unlocked."""
    assert not rt.started
    with pytest.raises(RuntimeClosedError):
        await rt.invoke("fn")
    await eventually(lambda: set(threading.enumerate()) <= threads)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    system = rt.actor_system
    assert system is None or system.live_actors == 0
    async with Runtime(url) as second:  # the SQLite file is no longer locked
        second.register("fn", echo)
        await second.wait(await second.invoke("fn", 1), timeout=5)


async def test_start_on_a_busy_metrics_port_leaves_nothing_running(
    tmp_path: pathlib.Path,
) -> None:
    url = sqlite_url(tmp_path)
    threads = set(threading.enumerate())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rt = Runtime(url, metrics_port=busy.getsockname()[1])
        rt.register("fn", echo_thread, kind="thread", min_instances=1)
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            await rt.start()
    await assert_nothing_left(rt, url, threads)


async def test_a_failure_late_in_start_closes_everything_started(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    threads = set(threading.enumerate())
    rt = Runtime(url)
    rt.register("fn", echo_thread, kind="thread", min_instances=1)  # a thread starts with the pool

    def fail(records: Any) -> None:
        raise RuntimeError("recovery broke")

    monkeypatch.setattr(rt, "_recover", fail)
    with pytest.raises(RuntimeError, match="recovery broke"):
        await rt.start()
    await assert_nothing_left(rt, url, threads)
