"""Metrics: scraped over real HTTP while tasks run, parsed, and checked against what ran."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import pathlib
import re
import socket
import threading
import urllib.request
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from runtime import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    ManualClock,
    PayloadError,
    QueueFullError,
    Runtime,
    RuntimeClosedError,
    StoreError,
    TaskExistsError,
    TaskState,
)
from runtime.metrics import BUCKETS, FunctionMetrics, Histogram
from tests.conftest import RuntimeFactory, eventually

from . import kind_handlers as kh
from .helpers import Gate, patch_or_skip, until_status

DOC = pathlib.Path(__file__).parents[2] / "docs" / "metrics.md"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(host: str, port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://{host}:{port}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        text: str = response.read().decode()
    return text


def scrape(host: str, port: int) -> Samples:
    return parse(fetch(host, port))


def parse(text: str) -> Samples:
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


# --- the catalogue in docs/metrics.md is what a scrape shows -----------------------------


def doc_section(heading: str) -> str:
    """The text of docs/metrics.md under ``heading``, up to the next heading."""
    text = DOC.read_text()
    start = text.index(f"{heading}\n")
    following = re.search(r"^#", text[start + len(heading) :], re.MULTILINE)
    end = start + len(heading) + following.start() if following else len(text)
    return text[start:end]


def doc_rows(heading: str) -> list[list[str]]:
    """The body rows of the tables under ``heading``, cells stripped."""
    rows = []
    for line in doc_section(heading).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if (
            line.startswith("|")
            and not set(cells[0]) <= {"-"}
            and cells[0] not in ("metric", "label")
        ):
            rows.append(cells)
    return rows


def names(cell: str) -> list[str]:
    """The backticked words of a table cell, or its comma-separated words."""
    quoted = re.findall(r"`([^`]*)`", cell)
    return quoted if quoted else [word.strip() for word in cell.split(",") if word.strip()]


Family = tuple[str, dict[str, set[str]], int]  # type, label -> values, number of samples


def scraped(text: str, openmetrics: bool) -> dict[str, Family]:
    """Each family of a scrape under the name the catalogue uses (counters: ``…_total``)."""
    parse_families = openmetrics_families if openmetrics else text_string_to_metric_families
    out: dict[str, Family] = {}
    for family in parse_families(text):
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                labels.setdefault(label, set()).add(label_value)
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out[name] = (family.type, labels, len(family.samples))
    return out


async def test_docs_catalogue_matches_a_scrape() -> None:
    """In both exposition formats (Prometheus asks for OpenMetrics first)."""
    async with Runtime() as rt:
        rt.register("a", echo)
        rt.register("t", echo_thread, kind="thread")
        rt.register("p", kh.echo, kind="process")  # nothing runs: every series is still there
        host, port = await rt.serve_metrics(port=0)
        for accept in (None, OPENMETRICS):
            text = await asyncio.to_thread(fetch, host, port, accept)
            check_catalogue(scraped(text, openmetrics=accept is not None))


def check_catalogue(families: dict[str, Family]) -> None:
    catalogue = {row[0].strip("`"): row for row in doc_rows("## Catalogue")}
    assert sorted(catalogue) == sorted(families)
    for name, (_, doc_type, labels, _) in catalogue.items():
        family_type, family_labels, count = families[name]
        assert (name, family_type) == (name, doc_type)
        assert (name, sorted(set(family_labels) - {"le"})) == (name, sorted(names(labels)))
        assert count > 0, f"{name} has no series"

    documented_values = doc_rows("### Label values")
    assert documented_values
    for label, on, values in documented_values:
        for name in names(on):
            assert (name, label, families[name][1][label]) == (name, label, set(names(values)))

    edge_list = next(n for n in names(doc_section("### Histogram buckets")) if n[0].isdigit())
    edges = [float(edge) for edge in edge_list.split(",")]
    assert tuple(edges) == BUCKETS
    le = families["stint_task_queue_wait_seconds"][1]["le"]
    assert sorted(float(bound) for bound in le) == [*edges, float("inf")]


async def test_a_registered_idle_function_shows_every_series_at_zero(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    rt.register("fn", echo)
    s = parse(await rt.metrics_text())
    fn = {"function": "fn"}
    for outcome in ("succeeded", "failed", "timeout", "stop", "restart", "close"):
        assert value(s, "stint_task_attempt_duration_seconds_count", **fn, outcome=outcome) == 0
    for reason in ("idle", "stop", "timeout", "crash", "close", "abandoned", "start_failed"):
        assert value(s, "stint_instance_stops_total", **fn, kind="async", reason=reason) == 0
    for hook in ("initializer", "pre_freeze", "pre_stop"):
        assert value(s, "stint_hook_failures_total", **fn, hook=hook) == 0
        assert value(s, "stint_hook_duration_seconds_count", **fn, hook=hook) == 0
    for reason in ("payload", "task_id", "duplicate", "queue_full", "closed", "store"):
        assert value(s, "stint_invokes_rejected_total", **fn, reason=reason) == 0
    assert value(s, "stint_invokes_rejected_total", function="", reason="unknown_function") == 0
    assert value(s, "stint_instance_start_seconds_count", **fn, kind="async") == 0
    assert value(s, "stint_task_transitions_total", **fn, state="Stopped") == 0


# --- buckets ------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0])
def test_an_attempt_cut_at_a_round_timeout_lands_just_below_an_edge(timeout: float) -> None:
    """A bucket that starts at the timeout would put timed-out attempts up to 2x high."""
    assert timeout not in BUCKETS
    for observed in (timeout, timeout + 0.05):  # the timeout, plus up to one tick
        histogram = Histogram()
        histogram.observe(observed)
        index = histogram.counts.index(1)
        assert index == bisect.bisect_left(BUCKETS, timeout)
        assert BUCKETS[index - 1] < timeout and BUCKETS[index] <= 1.2 * timeout


def test_buckets_cover_50_microseconds_to_10_minutes() -> None:
    assert BUCKETS[0] <= 0.00005 and BUCKETS[-1] >= 600
    assert list(BUCKETS) == sorted(set(BUCKETS))
    assert max(b / a for a, b in itertools.pairwise(BUCKETS)) < 2.1


# --- rejected invokes, instance start time ------------------------------------------------


async def test_rejected_invokes_are_counted_by_reason(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = await make_runtime()
    gate = Gate()
    rt.register("fn", gate.handler, max_queued=1, max_instances=1)
    await until_status(rt, await rt.invoke("fn", task_id="dup"), TaskState.RUNNING)
    with pytest.raises(TaskExistsError):
        await rt.invoke("fn", task_id="dup")
    await rt.invoke("fn")  # waits: the queue is full now
    with pytest.raises(QueueFullError):
        await rt.invoke("fn")
    with pytest.raises(PayloadError):
        await rt.invoke("fn", object())
    with pytest.raises(InvalidTaskIdError):
        await rt.invoke("fn", task_id="no spaces")
    for name in ("ghost", "ghost2", "ghost3"):  # callers' names never become label values
        with pytest.raises(FunctionNotFoundError):
            await rt.invoke(name)

    def broken_store(record: Any) -> None:
        raise StoreError("the disk is full")

    gate.open()
    await rt.join("fn", timeout=5)
    patch_or_skip(monkeypatch, rt.store, "add", broken_store)
    with pytest.raises(StoreError):
        await rt.invoke("fn")
    await rt.close()
    for name in ("fn", "ghost"):
        with pytest.raises(RuntimeClosedError):
            await rt.invoke(name)

    s = parse(await rt.metrics_text())
    rejected = {
        (labels[0][1], labels[1][1]): count
        for (name, labels), count in s.items()
        if name == "stint_invokes_rejected_total"
    }
    assert rejected == {
        ("fn", "unknown_function"): 0, ("fn", "payload"): 1, ("fn", "task_id"): 1,
        ("fn", "duplicate"): 1, ("fn", "queue_full"): 1, ("fn", "closed"): 1, ("fn", "store"): 1,
        ("", "unknown_function"): 3, ("", "closed"): 1,
    }  # fmt: skip
    assert value(s, "stint_tasks_submitted_total", function="fn") == 2


async def test_instance_start_seconds_run_from_creation_to_ready(
    make_runtime: RuntimeFactory,
) -> None:
    clock = ManualClock()
    rt = await make_runtime(clock=clock, tick_interval=1.0)
    gate = Gate()

    async def initializer(instance: Any) -> None:
        await gate.wait()

    rt.register("fn", echo, initializer=initializer)
    task_id = await rt.invoke("fn")
    await eventually(lambda: gate.entered == 1)
    clock.advance(2.5)  # the Initializer takes 2.5 s
    gate.open()
    await rt.wait(task_id, timeout=5)
    s = parse(await rt.metrics_text())
    labels = {"function": "fn", "kind": "async"}
    assert value(s, "stint_instance_start_seconds_count", **labels) == 1
    assert value(s, "stint_instance_start_seconds_sum", **labels) == 2.5
    assert value(s, "stint_instance_start_seconds_bucket", **labels, le="2.3") == 0
    assert value(s, "stint_instance_start_seconds_bucket", **labels, le="3.5") == 1


async def test_a_process_instance_start_includes_the_worker_boot() -> None:
    async with Runtime() as rt:
        rt.register("fn", kh.echo, kind="process", min_instances=1)
        labels = {"function": "fn", "kind": "process"}

        async def started() -> float:
            s = parse(await rt.metrics_text())
            if value(s, "stint_instance_start_seconds_count", **labels) == 1:
                return value(s, "stint_instance_start_seconds_sum", **labels)
            return 0.0

        async with asyncio.timeout(10):
            while not (seconds := await started()):
                await asyncio.sleep(0.01)
        (instance,) = rt._functions["fn"].metrics.instances.values()
        boot = getattr(instance, "cold_start_seconds", None)
        assert boot is not None and seconds >= boot > 0  # creation to Ready spans the boot


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

    patch_or_skip(monkeypatch, rt, "_recover", fail)
    with pytest.raises(RuntimeError, match="recovery broke"):
        await rt.start()
    await assert_nothing_left(rt, url, threads)


async def test_a_scrape_copies_on_the_loop_and_formats_off_it(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop pays for a copy of the numbers, not for building thousands of samples."""
    rt = await make_runtime()
    rt.register("fn", echo)
    collector = rt._collector
    built_on: list[int] = []
    build = collector._families

    def families(reading: Any) -> Any:
        built_on.append(threading.get_ident())
        return build(reading)

    patch_or_skip(monkeypatch, collector, "_families", families)
    host, port = await rt.serve_metrics(port=0)
    samples = await asyncio.to_thread(scrape, host, port)
    assert value(samples, "stint_tasks_submitted_total", function="fn") == 0
    assert built_on and threading.get_ident() not in built_on


def test_a_metrics_copy_is_detached() -> None:
    live = FunctionMetrics("async")
    live.attempt("failed", 1.0)
    copy = live.copy()
    live.attempt("failed", 1.0)
    live.rejected["payload"] += 1
    live.entered[TaskState.RUNNING] += 1
    assert copy.attempts["failed"].counts != live.attempts["failed"].counts
    assert copy.attempts["failed"].sum == 1.0
    assert copy.rejected["payload"] == 0 and copy.entered[TaskState.RUNNING] == 0
