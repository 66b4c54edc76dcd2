"""Prometheus metrics, counted in plain integers on the hot path and exposed at scrape time.

Actors bump attributes of a :class:`FunctionMetrics` (no lock, no ``labels()``
lookup, no metric object per transition); :class:`StintCollector` turns them
into metric families when Prometheus scrapes. A scrape from another thread (the
HTTP server's) hops onto the event loop only to copy the numbers, so it never sees
a half-done update, and builds the families in its own thread: the loop pays for
a copy, not for the thousands of samples a scrape formats.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .errors import (
    FunctionNotFoundError,
    InvalidTaskIdError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    StintError,
    StoreError,
    TaskExistsError,
)
from .states import TERMINAL, InstanceState, TaskState

if TYPE_CHECKING:
    from actors import ActorSystem

    from .instances.base import Instance

#: Histogram bucket edges (seconds), shared by every histogram: 42 µs to 700 s.
#: Above 0.5 s each edge sits 13-17 % above a common timeout (1, 2, 3, 5, 10, 15, 20,
#: 30, 45, 60, 90, 120, 180, 300, 600 s), never on it: an attempt cut at its timeout
#: is observed at the timeout plus up to one tick, and lands in the bucket that ends
#: just above it, so quantiles read at most ~1.2x the timeout instead of the 2x of a
#: bucket that starts there. Below that, edges roughly double (leaving room for the
#: 50 ms tick above 0.1 and 0.25 s). docs/metrics.md explains the choice.
BUCKETS = (
    0.000042, 0.000083, 0.00017, 0.00033, 0.00066, 0.0013, 0.0027, 0.0053, 0.011, 0.021,
    0.043, 0.085, 0.16, 0.32, 0.58, 1.15, 2.3, 3.5, 5.8, 11.5, 17.0, 23.0, 35.0, 52.0, 70.0,
    105.0, 140.0, 210.0, 350.0, 700.0,
)  # fmt: skip
_LE = (*map(repr, BUCKETS), "+Inf")  # the ``le`` label of each bucket
NON_TERMINAL = [s for s in TaskState if s not in TERMINAL]
#: The values of each bounded label, all exposed (at 0) from registration on, so the
#: first event of a series is an increase that ``rate()`` and ``increase()`` see.
OUTCOMES = ("succeeded", "failed", "timeout", "stop", "restart", "close")
STOP_REASONS = ("idle", "stop", "timeout", "crash", "close", "abandoned", "start_failed")
HOOKS = ("initializer", "pre_freeze", "pre_stop")
REJECT_REASONS: dict[type[StintError], str] = {
    FunctionNotFoundError: "unknown_function",
    PayloadError: "payload",
    InvalidTaskIdError: "task_id",
    TaskExistsError: "duplicate",
    QueueFullError: "queue_full",
    RuntimeClosedError: "closed",
    StoreError: "store",
}
#: The ``function`` label of an invoke rejected for a name never registered: callers
#: choose names, so using theirs would let anyone grow the series without bound (and
#: an empty string is no function's name).
UNKNOWN_FUNCTION = ""
#: The reasons an invoke for a name never registered can be rejected for.
UNKNOWN_REJECT_REASONS = ("unknown_function", "closed")
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

    def copy(self) -> Histogram:
        twin = Histogram()  # (not Histogram.__new__: see FunctionMetrics.copy)
        twin.counts = self.counts.copy()
        twin.sum = self.sum
        return twin

    def cumulative(self) -> list[tuple[str, float]]:
        return list(zip(_LE, itertools.accumulate(self.counts), strict=True))


class FunctionMetrics:
    """Every number stint keeps about one function; survives unregister (counters never go back).

    Every series of a bounded label (state, outcome, reason, hook) exists from
    registration on, at 0.
    """

    __slots__ = (
        "attempts",
        "entered",
        "exited",
        "hook_failures",
        "hooks",
        "instance_start",
        "instance_starts",
        "instance_states",
        "instance_stops",
        "instances",
        "kind",
        "protocol_errors",
        "queue_wait",
        "rejected",
        "retries",
        "submitted",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.submitted = 0
        self.retries = 0
        self.entered: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.exited: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.attempts: dict[str, Histogram] = {outcome: Histogram() for outcome in OUTCOMES}
        self.queue_wait = Histogram()
        self.instance_starts = 0
        self.instance_start = Histogram()  # creation to Ready, Initializer (and worker) included
        self.protocol_errors = 0  # worker frames that were not valid (kind "process")
        self.instance_stops: Counter[str] = Counter(dict.fromkeys(STOP_REASONS, 0))
        self.hooks: dict[str, Histogram] = {hook: Histogram() for hook in HOOKS}
        self.hook_failures: Counter[str] = Counter(dict.fromkeys(HOOKS, 0))
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS.values(), 0))
        self.instances: dict[str, Instance] = {}  # the pool's own dict, read at scrape time
        self.instance_states: Counter[InstanceState] = Counter()  # filled in copies only

    def copy(self) -> FunctionMetrics:
        """A detached copy for a scrape: every number as it is now, and the pool's
        instances reduced to a count by state (cheap enough to take on the loop)."""
        # FunctionMetrics(kind), not FunctionMetrics.__new__: a class compiled by mypyc runs
        # __init__ from __new__ (docs/performance.md, "Compiled build")
        twin = FunctionMetrics(self.kind)
        twin.submitted = self.submitted
        twin.retries = self.retries
        twin.entered = self.entered.copy()
        twin.exited = self.exited.copy()
        twin.attempts = {outcome: h.copy() for outcome, h in self.attempts.items()}
        twin.queue_wait = self.queue_wait.copy()
        twin.instance_starts = self.instance_starts
        twin.instance_start = self.instance_start.copy()
        twin.protocol_errors = self.protocol_errors
        twin.instance_stops = self.instance_stops.copy()
        twin.hooks = {hook: h.copy() for hook, h in self.hooks.items()}
        twin.hook_failures = self.hook_failures.copy()
        twin.rejected = self.rejected.copy()
        twin.instances = {}
        twin.instance_states = Counter(instance.state for instance in self.instances.values())
        return twin

    def attempt(self, outcome: str, seconds: float) -> None:
        histogram = self.attempts.get(outcome)
        if histogram is None:  # a new outcome would be a stint bug: still counted, not lost
            histogram = self.attempts[outcome] = Histogram()
        histogram.observe(seconds)

    def hook(self, hook: str, seconds: float, failed: bool) -> None:
        histogram = self.hooks.get(hook)
        if histogram is None:
            histogram = self.hooks[hook] = Histogram()
        histogram.observe(seconds)
        if failed:
            self.hook_failures[hook] += 1


def rejection_reason(error: StintError) -> str | None:
    """The ``reason`` label of an invoke that raised ``error`` (None: not a rejection)."""
    for error_type, reason in REJECT_REASONS.items():
        if isinstance(error, error_type):
            return reason
    return None


class ClusterReading(NamedTuple):
    """A cluster node's numbers (``redis://`` store only), copied with the rest."""

    #: function -> (depth, pending) as Redis last showed them (every function of the cluster)
    queues: dict[str, tuple[int, int]]
    tasks_reclaimed: int  #: tasks this node took over from dead nodes
    nodes_reclaimed: int  #: dead nodes this node reclaimed to the end
    fenced_writes: int  #: this node's late writes refused: the task was reclaimed meanwhile
    reconnects: int  #: times Redis answered again after this node lost it


#: A runtime on a ``redis://`` store that has not joined its cluster yet.
NO_CLUSTER_YET = ClusterReading({}, 0, 0, 0, 0)


class Reading(NamedTuple):
    """One runtime's numbers, copied on the loop in one go; families are built from it."""

    functions: dict[str, FunctionMetrics]
    queued: dict[str, int]
    unknown_rejected: Counter[str]
    dead_letters: int
    actor_failures: int
    cluster: ClusterReading | None  #: None: not a cluster node (a local store)


class StintCollector(Collector):
    """Reads one runtime's counters when its registry is scraped."""

    def __init__(
        self,
        functions: Callable[[], dict[str, FunctionMetrics]],
        queued: Callable[[], dict[str, int]],
        system: Callable[[], ActorSystem | None],
        version: str,
        unknown_rejected: Counter[str],
        *,
        cluster: Callable[[], ClusterReading | None] = lambda: None,
    ) -> None:
        self._functions = functions
        self._cluster = cluster
        self._unknown_rejected = unknown_rejected
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
            return iter(self._families(self._read()))
        # The HTTP server's thread: copy the numbers on the loop, where every update
        # happens (so no half-done one is seen), and build the families here, off it.
        reading = asyncio.run_coroutine_threadsafe(self._read_on_loop(), loop)
        return iter(self._families(reading.result(timeout=SCRAPE_TIMEOUT)))

    async def _read_on_loop(self) -> Reading:
        return self._read()

    def _read(self) -> Reading:
        system = self._system()
        return Reading(
            {name: m.copy() for name, m in self._functions().items()},
            dict(self._queued()),
            self._unknown_rejected.copy(),
            system.dead_letters if system else 0,
            system.failure_count if system else 0,
            self._cluster(),
        )

    def _families(self, reading: Reading) -> list[Metric]:
        functions = reading.functions
        out: list[Metric] = [self._build_info()]
        out += _task_families(functions, reading.queued)
        out += _instance_families(functions)
        out += _hook_families(functions)
        out.append(_rejected_family(functions, reading.unknown_rejected))
        dead = CounterMetricFamily(
            "stint_actor_dead_letters", "Messages that reached a stopped actor."
        )
        dead.add_metric([], reading.dead_letters)
        failures = CounterMetricFamily(
            "stint_actor_failures", "Exceptions raised by runtime actors (each one is a stint bug)."
        )
        failures.add_metric([], reading.actor_failures)
        out += [dead, failures]
        if reading.cluster is not None:
            out += _cluster_families(reading.cluster)
        return out

    def _build_info(self) -> Metric:
        # A gauge, not an InfoMetricFamily: that one is typed "info" in OpenMetrics and
        # "gauge" in the classic text format, so the type a scrape shows would depend on
        # the Accept header. This reads the same in both (the convention of *_build_info).
        info = GaugeMetricFamily(
            "stint_build_info",
            "stint's version and the Python running it (always 1).",
            labels=["version", "python"],
        )
        info.add_metric([self._version, ".".join(map(str, sys.version_info[:3]))], 1)
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
    start_time = HistogramMetricFamily(
        "stint_instance_start_seconds",
        "From an instance's creation to Ready (Initializer and worker boot included).",
        labels=["function", "kind"],
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
        for state in InstanceState:
            if state is not InstanceState.STOPPED:
                instances.add_metric([name, m.kind, state.value], m.instance_states[state])
        starts.add_metric([name, m.kind], m.instance_starts)
        start = m.instance_start
        start_time.add_metric([name, m.kind], start.cumulative(), start.sum)
        for reason, count in sorted(m.instance_stops.items()):
            stops.add_metric([name, m.kind, reason], count)
    return [instances, starts, start_time, stops, protocol]


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


def _rejected_family(functions: dict[str, FunctionMetrics], unknown: Counter[str]) -> Metric:
    rejected = CounterMetricFamily(
        "stint_invokes_rejected",
        "Invokes refused before anything was stored, by reason.",
        labels=["function", "reason"],
    )
    for name, m in functions.items():
        for reason, count in m.rejected.items():
            rejected.add_metric([name, reason], count)
    for reason, count in unknown.items():
        rejected.add_metric([UNKNOWN_FUNCTION, reason], count)
    return rejected


def _cluster_families(cluster: ClusterReading) -> list[Metric]:
    """What a node of a cluster adds (docs/metrics.md, "Cluster metrics")."""
    depth = GaugeMetricFamily(
        "stint_cluster_queue_depth",
        "Tasks in the function's Redis stream that no node has taken yet (the whole cluster's).",
        labels=["function"],
    )
    pending = GaugeMetricFamily(
        "stint_cluster_queue_pending",
        "Tasks taken from the function's Redis stream by some node and not yet finished.",
        labels=["function"],
    )
    for name, (queued, taken) in sorted(cluster.queues.items()):
        depth.add_metric([name], queued)
        pending.add_metric([name], taken)
    counters = (
        ("stint_cluster_tasks_reclaimed", "Tasks this node took over from dead nodes.",
         cluster.tasks_reclaimed),
        ("stint_cluster_nodes_reclaimed", "Dead nodes this node reclaimed to the end.",
         cluster.nodes_reclaimed),
        ("stint_cluster_fenced_writes",
         "This node's task writes Redis refused because another node had reclaimed the task.",
         cluster.fenced_writes),
        ("stint_store_reconnects", "Times Redis answered again after this node lost it.",
         cluster.reconnects),
    )  # fmt: skip
    out: list[Metric] = [depth, pending]
    for name, documentation, count in counters:
        family = CounterMetricFamily(name, documentation)
        family.add_metric([], count)
        out.append(family)
    return out
