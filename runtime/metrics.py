"""Prometheus metrics, counted in plain integers on the hot path and exposed at scrape time.

Actors bump attributes of a :class:`FunctionMetrics` (no lock, no ``labels()``
lookup, no metric object per transition); :class:`StintCollector` turns them
into metric families when Prometheus scrapes. A scrape from another thread (the
HTTP server's) hops onto the event loop to read, so it never sees a half-done
update.
"""

from __future__ import annotations

import asyncio
import bisect
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .states import TERMINAL, InstanceState, TaskState

if TYPE_CHECKING:
    from actors import ActorSystem

    from .instances.base import Instance

#: Latency buckets (seconds) shared by every histogram: 50 µs to 5 min.
BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
NON_TERMINAL = [s for s in TaskState if s not in TERMINAL]
SCRAPE_TIMEOUT = 10.0


class Histogram:
    """Bucket counts and a sum, nothing more: ``observe`` is one bisect and two adds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class FunctionMetrics:
    """Every number stint keeps about one function; survives unregister (counters never go back)."""

    __slots__ = (
        "attempts",
        "entered",
        "exited",
        "hook_failures",
        "hooks",
        "instance_starts",
        "instance_stops",
        "instances",
        "kind",
        "protocol_errors",
        "queue_wait",
        "retries",
        "submitted",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.submitted = 0
        self.retries = 0
        self.entered: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.exited: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.attempts: dict[str, Histogram] = {}
        self.queue_wait = Histogram()
        self.instance_starts = 0
        self.protocol_errors = 0  # worker frames that were not valid (kind "process")
        self.instance_stops: Counter[str] = Counter()
        self.hooks: dict[str, Histogram] = {}
        self.hook_failures: Counter[str] = Counter()
        self.instances: dict[str, Instance] = {}  # the pool's own dict, read at scrape time

    def attempt(self, outcome: str, seconds: float) -> None:
        histogram = self.attempts.get(outcome)
        if histogram is None:
            histogram = self.attempts[outcome] = Histogram()
        histogram.observe(seconds)

    def hook(self, hook: str, seconds: float, failed: bool) -> None:
        histogram = self.hooks.get(hook)
        if histogram is None:
            histogram = self.hooks[hook] = Histogram()
        histogram.observe(seconds)
        if failed:
            self.hook_failures[hook] += 1


class StintCollector(Collector):
    """Reads one runtime's counters when its registry is scraped."""

    def __init__(
        self,
        functions: Callable[[], dict[str, FunctionMetrics]],
        queued: Callable[[], dict[str, int]],
        system: Callable[[], ActorSystem | None],
        version: str,
    ) -> None:
        self._functions = functions
        self._queued = queued
        self._system = system
        self._version = version
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def collect(self) -> Iterator[Metric]:
        loop = self.loop
        if loop is None or threading.get_ident() == self._loop_thread or loop.is_closed():
            return iter(self._families())
        # The HTTP server's thread: read on the loop, where every update happens.
        done = asyncio.run_coroutine_threadsafe(self._on_loop(), loop)
        return iter(done.result(timeout=SCRAPE_TIMEOUT))

    async def _on_loop(self) -> list[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        functions = self._functions()
        out: list[Metric] = [self._build_info()]
        out += _task_families(functions, self._queued())
        out += _instance_families(functions)
        out += _hook_families(functions)
        system = self._system()
        dead = CounterMetricFamily(
            "stint_actor_dead_letters", "Messages that reached a stopped actor."
        )
        dead.add_metric([], system.dead_letters if system else 0)
        failures = CounterMetricFamily(
            "stint_actor_failures", "Exceptions raised by runtime actors (each one is a stint bug)."
        )
        failures.add_metric([], system.failure_count if system else 0)
        return [*out, dead, failures]

    def _build_info(self) -> Metric:
        info = InfoMetricFamily("stint_build", "stint's version and the Python running it.")
        python = ".".join(map(str, sys.version_info[:3]))
        info.add_metric([], {"version": self._version, "python": python})
        return info


def _task_families(functions: dict[str, FunctionMetrics], queued: dict[str, int]) -> list[Metric]:
    submitted = CounterMetricFamily(
        "stint_tasks_submitted", "Tasks accepted by invoke.", labels=["function"]
    )
    transitions = CounterMetricFamily(
        "stint_task_transitions",
        "Entries into each task state (the first Enqueued included).",
        labels=["function", "state"],
    )
    current = GaugeMetricFamily(
        "stint_tasks", "Tasks now in each non-terminal state.", labels=["function", "state"]
    )
    retries = CounterMetricFamily("stint_task_retries", "Retries scheduled.", labels=["function"])
    attempts = HistogramMetricFamily(
        "stint_task_attempt_duration_seconds",
        "How long attempts ran, by outcome.",
        labels=["function", "outcome"],
    )
    waits = HistogramMetricFamily(
        "stint_task_queue_wait_seconds", "From enqueue to first Running.", labels=["function"]
    )
    depth = GaugeMetricFamily(
        "stint_queue_depth", "Tasks accepted and not yet dequeued.", labels=["function"]
    )
    for name, m in functions.items():
        submitted.add_metric([name], m.submitted)
        retries.add_metric([name], m.retries)
        for state in TaskState:
            transitions.add_metric([name, state.value], m.entered[state])
        for state in NON_TERMINAL:
            current.add_metric([name, state.value], m.entered[state] - m.exited[state])
        for outcome, histogram in sorted(m.attempts.items()):
            attempts.add_metric([name, outcome], histogram.cumulative(), histogram.sum)
        waits.add_metric([name], m.queue_wait.cumulative(), m.queue_wait.sum)
        depth.add_metric([name], queued.get(name, 0))
    return [submitted, transitions, current, retries, attempts, waits, depth]


def _instance_families(functions: dict[str, FunctionMetrics]) -> list[Metric]:
    instances = GaugeMetricFamily(
        "stint_instances", "Instances by state.", labels=["function", "kind", "state"]
    )
    starts = CounterMetricFamily(
        "stint_instance_starts", "Instance cold starts.", labels=["function", "kind"]
    )
    stops = CounterMetricFamily(
        "stint_instance_stops",
        "Instances gone, by reason (idle, stop, timeout, crash, close, abandoned, start_failed).",
        labels=["function", "kind", "reason"],
    )
    protocol = CounterMetricFamily(
        "stint_worker_protocol_errors",
        "Malformed or oversized frames from worker processes (each ends that worker).",
        labels=["function"],
    )
    for name, m in functions.items():
        if m.kind == "process":
            protocol.add_metric([name], m.protocol_errors)
        by_state = Counter(instance.state for instance in m.instances.values())
        for state in InstanceState:
            if state is not InstanceState.STOPPED:
                instances.add_metric([name, m.kind, state.value], by_state[state])
        starts.add_metric([name, m.kind], m.instance_starts)
        for reason, count in sorted(m.instance_stops.items()):
            stops.add_metric([name, m.kind, reason], count)
    return [instances, starts, stops, protocol]


def _hook_families(functions: dict[str, FunctionMetrics]) -> list[Metric]:
    durations = HistogramMetricFamily(
        "stint_hook_duration_seconds", "How long hooks ran.", labels=["function", "hook"]
    )
    failures = CounterMetricFamily(
        "stint_hook_failures", "Hooks that raised or overran.", labels=["function", "hook"]
    )
    for name, m in functions.items():
        for hook, histogram in sorted(m.hooks.items()):
            durations.add_metric([name, hook], histogram.cumulative(), histogram.sum)
        for hook, count in sorted(m.hook_failures.items()):
            failures.add_metric([name, hook], count)
    return [durations, failures]
