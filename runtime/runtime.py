"""The public face of stint: :class:`Runtime`."""

from __future__ import annotations

import asyncio
import builtins
import datetime
import gc
import logging
import math
import os
import random
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from prometheus_client import CollectorRegistry, generate_latest

from actors import ActorRef, ActorSystem, Clock, SystemClock

from . import codec
from .client import RuntimeClient
from .closing import shut_down
from .config import (
    FunctionConfig,
    FunctionSpec,
    check_name,
    config_from_wire,
    config_to_wire,
    make_spec,
)
from .errors import (
    ConfigError,
    FunctionNotFoundError,
    QueueFullError,
    RuntimeClosedError,
    StintError,
    StoreError,
    TaskExistsError,
    TaskFinishedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
    WrongLoopError,
)
from .hooks import BackgroundTasks
from .ids import TaskIdGenerator, check_task_id
from .instances import InstanceInfo
from .instances.base import NOT_DECODED
from .listing import Query, TaskList
from .messages import (
    AddFunction,
    DescribeInstances,
    Recover,
    RemoveFunction,
    Running,
    Wake,
)
from .metrics import (
    NO_CLUSTER_YET,
    UNKNOWN_REJECT_REASONS,
    ClusterReading,
    FunctionMetrics,
    StintCollector,
    rejection_reason,
)
from .metrics_server import MetricsServer
from .nodes import NodeInfo, check_node_id, default_node_id
from .pool import InstancePoolActor
from .record import TaskEvent, TaskRecord
from .registry import FunctionEntry, Services
from .states import FINISHED, TaskState
from .stores import Store, open_store
from .supervisor import SupervisorActor
from .task_actor import TaskActor
from .waiting import TaskWatch, Waits

logger = logging.getLogger("stint")
_BACKPRESSURE = 4096  # inbox length past which invoke yields to the loop
_WAKE = Wake()
_ENQUEUED = TaskState.ENQUEUED
# payload types a handler can be given as invoke got them (nothing in them can change)
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None)})
F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from .cluster.tasks import ClusterTasks


class Runtime:
    """Registers functions, accepts tasks, runs them on warm instances, tracks every state.

    Use it as ``async with Runtime() as rt:`` (or ``await rt.start()`` and
    ``await rt.close()``) inside a running event loop; uvloop is not required
    but is what ``runtime.loop.run`` and the ``stint`` command use.

    Arguments a caller can get wrong (names, task ids, limits) are annotated ``Any``
    and checked by the method, which raises stint's own error: compiled by mypyc
    (``STINT_COMPILE=1``), a narrower annotation would be enforced at the call with
    a bare ``TypeError`` instead (docs/performance.md, "Compiled build").
    """

    def __init__(
        self,
        store: Any = "memory://",  # a URL (str)
        *,
        max_payload_bytes: Any = 128 * 1024,  # an int
        clock: Clock | None = None,
        tick_interval: Any = 0.05,  # seconds
        close_timeout: Any = 30.0,  # seconds
        seed: Any = None,  # an int (or anything random.Random takes) or None
        metrics_port: Any = None,  # an int or None
        metrics_host: Any = "127.0.0.1",  # a str
        gc_threshold: Any = None,  # an int or None
        node_id: Any = None,  # a str or None
    ) -> None:
        if not isinstance(max_payload_bytes, int) or not 1 <= max_payload_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_payload_bytes must be an integer from 1 to 67108864 (64 MiB)")
        if not _seconds(tick_interval) or not _seconds(close_timeout) or not tick_interval > 0:
            raise ConfigError("tick_interval must be > 0 seconds and close_timeout >= 0 seconds")
        _check_metrics_address(metrics_host, metrics_port)
        if gc_threshold is not None and (
            not isinstance(gc_threshold, int) or isinstance(gc_threshold, bool) or gc_threshold < 1
        ):
            raise ConfigError(
                f"gc_threshold={gc_threshold!r} must be an integer >= 1 (the collector's "
                "generation-0 threshold while the runtime runs), or None to leave it alone"
            )
        self._gc = _GcThreshold(gc_threshold)
        self._started_at = 0.0
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.tick_interval = tick_interval
        self.close_timeout = close_timeout
        #: This runtime's name as a node (of a cluster, on a shared store).
        self.node_id = default_node_id() if node_id is None else check_node_id(node_id)
        self._store: Store = open_store(store, self.clock, self.node_id)
        self._random = random.Random(seed)
        self._functions: dict[str, FunctionEntry] = {}
        self._pools: list[ActorRef] = []  # every pool ever started, retiring ones included
        self._live: dict[str, ActorRef] = {}  # task id -> actor, while the task is not terminal
        self._orphans: dict[str, builtins.list[TaskRecord]] = {}  # recovered, function unknown
        self._waits = Waits()
        self._cluster: ClusterTasks | None = None  # on a shared store: the cluster half
        self._registering: dict[str, asyncio.Task[Any]] = {}  # cluster registrations under way
        self._delivering: Counter[str] = Counter()  # destination tasks being stored, by function
        self._last_created = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._new_id = TaskIdGenerator()
        self._background = BackgroundTasks()
        self._system: ActorSystem | None = None
        self._supervisor: ActorRef | None = None
        self._services: Services | None = None
        self._state = "new"  # new -> started -> closing -> closed
        #: How many background tasks (hooks, workers) close() had to cancel.
        self.close_cancelled = 0
        #: The tasks close() left unfinished, by state (recovered later by a durable store).
        self.close_unfinished: dict[str, int] = {}
        self._metrics: dict[str, FunctionMetrics] = {}  # outlives unregister: counters only grow
        # invokes refused for a name never registered, by reason
        self._unknown_rejected: Counter[str] = Counter(dict.fromkeys(UNKNOWN_REJECT_REASONS, 0))
        self._collector = StintCollector(
            lambda: self._metrics,
            lambda: {name: e.queued for name, e in self._functions.items()},
            lambda: self._system,
            _version(),
            self._unknown_rejected,
            cluster=self._cluster_reading,
        )
        #: This runtime's own registry: two runtimes in one process never collide.
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self.metrics_registry.register(self._collector)
        self._metrics_server: MetricsServer | None = None
        self._metrics_address = (metrics_host, metrics_port)

    # lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def started(self) -> bool:
        return self._state == "started"

    @property
    def store(self) -> Store:
        return self._store

    @property
    def actor_system(self) -> ActorSystem | None:
        """The kernel underneath (for introspection: dead letters, failures)."""
        return self._system

    async def start(self) -> None:
        """Open the store, serve metrics (with ``metrics_port``), and start the supervisor
        and one pool per registered function.

        If anything fails once the store is open, everything started so far is closed
        again (the store too) before the error propagates: the runtime is then closed.
        """
        if self._state != "new":
            raise RuntimeClosedError(
                f"this runtime is {self._state}; create a new Runtime to start again"
            )
        recovered = await self._store.open()  # a store that fails to open holds nothing
        try:
            await self._start_opened(recovered)
        except BaseException:
            await self._undo_start()
            raise

    async def _start_opened(self, recovered: builtins.list[TaskRecord]) -> None:
        self._collector.bind(asyncio.get_running_loop())
        host, port = self._metrics_address
        if port is not None:  # first: a busy port fails before any actor or instance runs
            self._metrics_server = await MetricsServer.start(self.metrics_registry, host, port)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._started_at = self.clock.time()
        self._system = ActorSystem(clock=self.clock)
        self._services = Services(
            self._system,
            self.clock,
            self._store,
            self._background,
            self._task_finished,
            self._random,
            self._waits,
            self._invoke_destination,
            self._task_released,
        )
        self._supervisor = self._system.spawn(
            SupervisorActor, self.tick_interval, name="supervisor"
        )
        self._state = "started"
        self._gc.apply()
        self._collector.bind(asyncio.get_running_loop())
        if self._store.shared:
            self._cluster = self._join_cluster()
        for entry in self._functions.values():
            self._start_pool(entry)
        self._recover(recovered)
        if self._cluster is not None:
            await self._cluster.node.start()
        self._system.scheduler.call_later(1.0, self._maintain)

    def _join_cluster(self) -> ClusterTasks:
        from .cluster.tasks import ClusterTasks
        from .stores.redis.store import RedisStore

        assert isinstance(self._store, RedisStore)
        return ClusterTasks(self, self._store)

    def _cluster_reading(self) -> ClusterReading | None:
        """The cluster's numbers for a scrape: None on a local store (no cluster families)."""
        if self._cluster is not None:
            return self._cluster.reading()
        return NO_CLUSTER_YET if self._store.shared else None

    def _function_config(self, name: str) -> bytes:
        """What the cluster's registry keeps of a function this node serves."""
        return config_to_wire(self._functions[name].spec.config)

    async def _undo_start(self) -> None:
        """``start`` failed after the store opened: close whatever it started, store
        included, so the runtime holds nothing (a failure here is logged, not raised,
        so that the error of ``start`` is the one the caller sees)."""
        try:
            await self._shut_down()
        except Exception:
            logger.exception("cleaning up after a failed start() failed too")
        self._state = "closed"

    def _recover(self, records: builtins.list[TaskRecord]) -> None:
        """Adopt the unfinished tasks a durable store found (each task actor applies the rules).

        Tasks of a function not registered yet wait until it is.
        """
        for record in records:
            entry = self._functions.get(record.function)
            if entry is None:
                self._orphans.setdefault(record.function, []).append(record)
            else:
                self._adopt(record, entry)
        for function, waiting in self._orphans.items():
            logger.info(
                "%d unfinished task(s) of %r recover once it is registered", len(waiting), function
            )

    def _adopt(self, record: TaskRecord, entry: FunctionEntry) -> None:
        assert self._system is not None and entry.pool is not None
        ref = self._system.spawn(
            TaskActor, record, entry, self._services, name=record.task_id, parent=self._supervisor
        )
        self._live[record.task_id] = ref
        entry.live += 1
        if record.status in (TaskState.ENQUEUED, TaskState.DEQUEUED):
            entry.queued += 1  # the task counts itself out when it leaves the queue
        ref.tell(Recover())

    async def close(self) -> None:
        """Stop accepting tasks, let running ones finish (up to ``close_timeout``), run
        PreStop on every instance, and stop every actor and background task.

        It logs what it waits for, and accounts for every task left unfinished
        (``close_unfinished``): kept for recovery by a durable store, lost with the
        memory store. Cancelling ``close()`` — a second Ctrl-C under ``asyncio.run``
        does — stops the waiting: attempts are cut short and workers killed, the store
        is still closed properly, then the cancellation goes on.
        """
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        await self._shut_down()

    async def _shut_down(self) -> None:
        """What ``close`` does to a runtime that started (or began to): runtime/closing.py."""
        await shut_down(self)

    def _maintain(self) -> None:
        dropped = self._store.evict()
        if dropped:
            logger.debug("retention dropped %d terminal records", dropped)
        if self._state == "started" and self._system is not None:
            self._system.scheduler.call_later(1.0, self._maintain)

    # metrics ------------------------------------------------------------------------

    async def serve_metrics(self, host: str = "127.0.0.1", port: Any = 9464) -> tuple[str, int]:
        """Serve ``metrics_registry`` over HTTP (Prometheus text format) on ``host:port``.

        Binds loopback by default; pass another address only on purpose. Port 0
        picks a free one. Returns the bound address. Stopped by ``close()``.
        """
        if self._state != "started":
            raise self._closed_error()
        if self._metrics_server is not None:
            raise ConfigError(
                f"metrics are already served on {self._metrics_server.address}; serve once"
            )
        self._metrics_server = await MetricsServer.start(self.metrics_registry, host, port)
        return self._metrics_server.address

    async def metrics_text(self) -> str:
        """The current metrics in Prometheus text format (what a scrape would get)."""
        return generate_latest(self.metrics_registry).decode()

    # registration ---------------------------------------------------------------------

    def register(self, name: Any, handler: Callable[..., Any], **config: Any) -> None:
        """Register ``handler`` under ``name`` (before or after ``start``).

        Raises :class:`ConfigError` for a bad name, key or value, or a name already in use.
        """
        spec = make_spec(name, handler, config)
        if name in self._functions:
            raise ConfigError(
                f"a function named {name!r} is already registered; unregister it first"
            )
        if self._state in ("closing", "closed"):
            raise RuntimeClosedError("the runtime is closed: register functions on a new Runtime")
        metrics = self._metrics.get(name)
        if metrics is None or metrics.kind != spec.config.kind:
            metrics = self._metrics[name] = FunctionMetrics(spec.config.kind)
        entry = FunctionEntry(spec, metrics)
        self._functions[name] = entry
        if self._state == "started":
            self._start_pool(entry)
            for record in self._orphans.pop(name, []):
                self._adopt(record, entry)
            if self._cluster is not None:  # recorded cluster-wide; invoke waits for it
                self._registering[name] = self._background.start(
                    self._cluster.node.register(name), f"stint-register-{name}"
                )

    @overload
    def function(self, name: F) -> F: ...

    @overload
    def function(self, name: str | None = None, **config: Any) -> Callable[[F], F]: ...

    def function(self, name: Any = None, **config: Any) -> Any:
        """Decorator form of :meth:`register`; returns the function unchanged.

        ``@rt.function`` registers it under its own name; ``@rt.function("name",
        **config)`` or ``@rt.function(**config)`` with a name or settings.
        """
        if callable(name) and not isinstance(name, str):  # used bare: @rt.function
            self.register(name.__name__, name)
            return name
        if name is not None and not isinstance(name, str):
            raise ConfigError(
                f"@rt.function takes the function name (a str) or nothing, got {name!r}"
            )

        def decorate(fn: F) -> F:
            self.register(name if name is not None else fn.__name__, fn, **config)
            return fn

        return decorate

    def unregister(self, name: Any) -> None:
        """Remove a function: its queued tasks become Invalid, running ones finish."""
        check_name(name)
        entry = self._functions.pop(name, None)
        if entry is None:
            raise FunctionNotFoundError(self._not_found(name))
        if self._cluster is not None:  # this node stops serving it; its tasks wait for others
            self._cluster.node.source.stop_serving(name)
        if self._supervisor is not None and self._state == "started":
            self._supervisor.tell(RemoveFunction(name))

    async def delete_function(self, name: Any) -> None:
        """Remove a function everywhere: this node stops serving it and, on a shared store,
        the cluster forgets it (new invokes are refused) and its queued tasks become
        Invalid ("function deleted"). On a store that is not shared it is
        :meth:`unregister`."""
        self._check_running()
        check_name(name)
        if name in self._functions:
            self.unregister(name)
        elif self._cluster is None:
            raise FunctionNotFoundError(self._not_found(name))
        if self._cluster is not None and not await self._cluster.delete_function(name):
            raise FunctionNotFoundError(
                f"no function named {name!r} is registered in the cluster; nothing to delete"
            )

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return {name: entry.spec for name, entry in self._functions.items()}

    def _start_pool(self, entry: FunctionEntry) -> None:
        assert self._system is not None and self._supervisor is not None and self._services
        if self._cluster is not None:
            entry.source = self._cluster.node.source  # its work comes from the cluster
        entry.pool = self._system.spawn(
            InstancePoolActor,
            entry.spec,
            entry,
            self._services,
            name=f"pool:{entry.spec.name}",
            parent=self._supervisor,
        )
        self._pools.append(entry.pool)
        self._supervisor.tell(AddFunction(entry.spec, entry))

    # tasks ------------------------------------------------------------------------------

    async def invoke(
        self,
        name: Any,  # a str
        payload: Any = None,
        *,
        task_id: Any = None,  # a str or None
        delay: Any = None,  # seconds or None
    ) -> str:
        """Accept a task for ``name``; returns its id once it is stored as Enqueued.

        ``delay`` (seconds, 0 to the function's ``max_delay``) holds the task back:
        it is stored now and dequeued no earlier than ``due_at``.

        Raises (and counts in ``stint_invokes_rejected_total``) :class:`RuntimeClosedError`,
        :class:`FunctionNotFoundError`, :class:`PayloadError`, :class:`InvalidTaskIdError`,
        :class:`QueueFullError`, :class:`TaskExistsError`, :class:`StoreError` or
        :class:`ConfigError` (a bad ``delay``); nothing is stored then.
        """
        try:
            if not isinstance(name, str):
                raise FunctionNotFoundError(self._not_found(name))
            data = codec.encode_payload(payload, self.max_payload_bytes)
            if task_id is not None:
                task_id = check_task_id(task_id)
        except StintError as error:
            self._count_rejected(name, error)
            raise
        if self._cluster is not None:  # (straight there: one coroutine fewer per pending invoke)
            return await self._accept_shared(name, data, task_id, delay=delay, note="accepted")
        event = payload if type(payload) in _IMMUTABLE else NOT_DECODED
        return await self._accept(name, data, event, task_id, delay=delay)

    async def _accept(
        self,
        name: str,
        data: bytes,
        event: object,
        task_id: str | None,
        *,
        delay: Any = None,  # seconds or None: checked here, against the function's max_delay
        note: str = "accepted",
    ) -> str:
        """Store a new Enqueued task (its payload already encoded) and queue it."""
        if self._cluster is not None:
            return await self._accept_shared(name, data, task_id, delay=delay, note=note)
        clock = self.clock
        try:  # zero-cost while nothing raises: only a rejected invoke pays for its count
            self._check_running()
            entry = self._functions.get(name)
            if entry is None:
                raise FunctionNotFoundError(self._not_found(name))
            config = entry.spec.config
            if task_id is not None:
                check_task_id(task_id)
            if entry.queued >= config.max_queued:
                raise QueueFullError(
                    f"function {name!r} already has {entry.queued} tasks waiting (max_queued="
                    f"{config.max_queued}); retry later, add capacity (max_instances, "
                    "concurrency) or raise max_queued"
                )
            if delay is not None:
                _check_delay(delay, config.max_delay, name)
            record = await self._store_new(name, data, task_id, note, delay)
        except StintError as error:
            self._count_rejected(name, error)
            raise
        assert self._system is not None and self._services is not None and entry.pool is not None
        task_id = record.task_id
        ref = self._system.spawn(
            TaskActor, record, entry, self._services, event, name=task_id, parent=self._supervisor
        )
        self._live[task_id] = ref
        entry.queued += 1
        entry.live += 1
        metrics = entry.metrics
        metrics.submitted += 1
        metrics.entered[_ENQUEUED] += 1
        if delay:
            # held back by the pool until it is due (one timer for all its delayed tasks)
            entry.pool.send(InstancePoolActor.hold, ref, clock.monotonic() + delay)
            return task_id
        inbox = entry.inbox
        # no clock read unless the function can expire
        inbox.append((ref, clock.monotonic() if config.max_event_age is not None else None))
        if not entry.wake_pending:
            entry.wake_pending = True
            entry.pool.tell(_WAKE)
        elif len(inbox) > _BACKPRESSURE:
            # A burst of invokes that never yields would pile every task up before
            # the first one runs. Letting the loop turn keeps work flowing (and
            # memory flat); the task is already accepted and stored.
            await asyncio.sleep(0)
        return record.task_id

    def _created_now(self) -> float:
        """Now, as a task's ``created_at``: strictly increasing within this runtime, so
        tasks list in the order they were accepted even when two share a clock reading."""
        now = self.clock.time()
        if now <= self._last_created:
            now = math.nextafter(self._last_created, math.inf)
        self._last_created = now
        return now

    async def _accept_shared(
        self, name: str, data: bytes, task_id: str | None, *, delay: Any, note: str
    ) -> str:
        """A shared store: the task is stored with its queue entry in the cluster, where
        whichever node has a free slot takes it (maybe this one); no actor is made here.

        A burst keeps thousands of these pending at once, so the common case (a function
        this node serves) awaits nothing but the store's own future: every coroutine and
        object per pending invoke is work for the garbage collector.
        """
        try:
            self._check_running()
            config = self._served_config(name)
            if config is None:
                config = await self._cluster_config(name)
            if task_id is not None:
                check_task_id(task_id)
            if delay is not None:
                _check_delay(delay, config.max_delay, name)
            assert self._cluster is not None
            self._cluster.store.queue_limits[name] = config.max_queued
            record = self._new_record(name, data, task_id, note, delay)
            try:
                pending = self._store.add(record)  # (a shared store: a future)
                if pending is not None:
                    await pending
            except TaskExistsError:
                if task_id is not None:
                    raise
                record = await self._store_new(name, data, task_id, note, delay, fresh=True)
        except StintError as error:
            self._count_rejected(name, error)
            raise
        metrics = self._metrics.get(name)
        if metrics is not None:  # the node that stores a task counts its entry in Enqueued
            metrics.submitted += 1
            metrics.entered[_ENQUEUED] += 1
        if delay and self._cluster is not None:
            self._cluster.node.due_soon()
        return record.task_id

    def _served_config(self, name: str) -> FunctionConfig | None:
        """This node's settings of a function it serves (None: ask the cluster, or wait for
        the registration under way)."""
        entry = self._functions.get(name)
        if entry is None or name in self._registering:
            return None
        return entry.spec.config

    async def _cluster_config(self, name: str) -> FunctionConfig:
        """The settings of a function for an invoke on a shared store: this node's own if it
        serves it (registered in the cluster first), else the cluster's."""
        assert self._cluster is not None
        registering = self._registering.pop(name, None)
        if registering is not None:
            await registering
        entry = self._functions.get(name)
        if entry is not None:
            return entry.spec.config
        info = await self._cluster.node.function(name)
        if info is None:
            known = ", ".join(sorted(self._functions)) or "none"
            raise FunctionNotFoundError(
                f"no node of the cluster has registered a function named {name!r} (registered "
                f"on this node: {known}); register it on a node first"
            )
        return config_from_wire(info.config)

    async def _store_new(
        self,
        name: str,
        data: bytes,
        task_id: str | None,
        note: str,
        delay: float | None,
        *,
        fresh: bool = False,  # a generated id was taken already: start from new ones
    ) -> TaskRecord:
        """Create and store the Enqueued record; a generated id that is somehow taken (by a
        task from an earlier runtime) is simply generated anew."""
        for _ in range(3):
            if fresh:
                self._new_id = TaskIdGenerator()  # a fresh random prefix
            record = self._new_record(name, data, task_id, note, delay)
            try:
                pending = self._store.add(record)
                if pending is not None:
                    await pending
            except TaskExistsError:
                if task_id is not None:
                    raise
                fresh = True
                continue
            return record
        raise StoreError(  # pragma: no cover - three collisions of 48 random bits
            "could not generate an unused task id; the store holds ids of this runtime's shape"
        )

    def _new_record(
        self, name: str, data: bytes, task_id: str | None, note: str, delay: float | None
    ) -> TaskRecord:
        created = self._created_now()
        due_at = None if delay is None else created + delay
        first = note if due_at is None else f"{note}; due at {_iso(due_at)} (in {delay:g} s)"
        record = TaskRecord(
            self._new_id() if task_id is None else task_id, name, data, created, note=first
        )
        record.due_at = due_at
        return record

    def _count_rejected(self, name: object, error: StintError) -> None:
        """Count a refused invoke under its function, or under ``function=""`` for a name
        never registered (callers choose names: theirs would make the series unbounded)."""
        reason = rejection_reason(error)
        if reason is None:
            return
        metrics = self._metrics.get(name) if isinstance(name, str) else None
        counts = metrics.rejected if metrics is not None else self._unknown_rejected
        counts[reason] += 1

    def _invoke_destination(self, name: str, task_id: str, payload: bytes, source: str) -> str:
        """A task ended with a destination: check it now (the source's event says what
        happens), then store the destination's task in the background."""
        if self._state != "started":
            return f"not invoked: the runtime is {self._state}"
        if name not in self._functions:
            logger.warning(
                "stint: task %s ended, but its destination %r is not registered: not invoked",
                source,
                name,
            )
            return f"not invoked: no function named {name!r} is registered"
        if len(payload) > self.max_payload_bytes:
            logger.warning("stint: the destination payload of task %s is too large", source)
            return (
                f"not invoked: the payload for {name!r} is {len(payload)} bytes, over "
                f"max_payload_bytes={self.max_payload_bytes}"
            )
        self._delivering[name] += 1  # join() counts it as unfinished already
        self._background.start(
            self._deliver_destination(name, task_id, payload, source), f"stint-dest-{task_id}"
        )
        return f"invoking {name!r} as task {task_id}"

    async def _deliver_destination(
        self, name: str, task_id: str, payload: bytes, source: str
    ) -> None:
        try:
            await self._accept(
                name, payload, NOT_DECODED, task_id, note=f"accepted: destination of {source}"
            )
        except TaskExistsError:
            logger.info("stint: destination task %s exists already: not invoked twice", task_id)
        except StintError as error:
            logger.warning("stint: destination task %s was not stored: %s", task_id, error)
        finally:
            self._delivering[name] -= 1
            if not self._delivering[name]:
                del self._delivering[name]
                self._waits.idle(self._idle)

    def _task_released(self, record: TaskRecord, entry: FunctionEntry, delay: float) -> None:
        """A shared store: a task actor gave its task back to the cluster (not finished)."""
        self._live.pop(record.task_id, None)
        entry.live -= 1
        if self._waits.has_joiners and (entry.live == 0 or not self._live):
            self._waits.idle(self._idle)
        assert self._cluster is not None
        self._cluster.released(record, entry, delay)

    def _task_finished(self, record: TaskRecord, entry: FunctionEntry) -> None:
        self._live.pop(record.task_id, None)
        entry.live -= 1
        self._store.finished(record)
        waits = self._waits
        if waits.has_joiners and (entry.live == 0 or not self._live):
            waits.idle(self._idle)
        waits.finished(record)

    async def join(self, name: Any = None, timeout: Any = None) -> None:
        """Wait until ``name`` (or every function, if None) has no unfinished task.

        Tasks invoked while waiting count too. Raises :class:`WaitTimeoutError`.
        """
        self._check_running()
        timeout = _check_timeout(timeout)
        if name is not None and not isinstance(name, str):
            raise FunctionNotFoundError(self._not_found(name))
        if self._cluster is not None:
            await self._cluster.join(name, timeout)
            return
        if name is not None and name not in self._functions:
            raise FunctionNotFoundError(self._not_found(name))
        await self._waits.join(name, timeout, self._idle)

    def _idle(self, name: str | None) -> bool:
        if name is None:
            return not self._live and not self._delivering
        entry = self._functions.get(name)
        return (entry is None or entry.live == 0) and name not in self._delivering

    async def get(self, task_id: Any) -> TaskRecord:
        """The task's record (a snapshot); raises :class:`TaskNotFoundError`."""
        self._check_running()
        return (await self._record(task_id)).copy()

    async def wait(self, task_id: Any, timeout: Any = None) -> TaskRecord:
        """Wait until the task is terminal and return its record.

        Raises :class:`WaitTimeoutError` after ``timeout`` seconds (the task goes on).
        """
        self._check_running()
        timeout = _check_timeout(timeout)
        if self._cluster is not None:  # held here or elsewhere, or by nobody: it may end
            return await self._cluster.wait(task_id, timeout)  # on another node (a retry)
        if task_id not in self._live:  # a live task is unfinished: no need to read it
            record = await self._record(task_id)
            if record.is_terminal:
                return record.copy()
        try:
            return await self._waits.wait_finished(task_id, timeout)
        except TimeoutError:
            now = await self._store.get(task_id)
            status = now.status if now is not None else "unknown"
            raise WaitTimeoutError(
                f"task {task_id} is still {status} after {timeout} s; wait longer, "
                "or stop it with rt.stop"
            ) from None

    def watch(self, task_id: Any) -> AsyncIterator[TaskEvent]:
        """``async for event in rt.watch(task_id)``: every event of the task from its first,
        then each new one as it happens, ending after the terminal one.

        A finished task yields its history and ends. Stopping early is fine: nothing
        stays registered once the caller no longer waits. The first ``__anext__``
        raises :class:`TaskNotFoundError` for an unknown id.
        """
        self._check_running()
        if self._cluster is None:
            return TaskWatch(task_id, self._store.get, self._waits, poll=None)
        # elsewhere in a cluster: its changes published to this node, and looked at again
        cluster = self._cluster
        return TaskWatch(task_id, cluster.read_watched, self._waits, poll=cluster.poll)

    async def stop(self, task_id: Any) -> TaskRecord:
        """Stop a task; returns its record once Stopped.

        A Running task's instance runs PreStop and is replaced first. Stopping a
        Stopping or Stopped task is fine; a finished one raises :class:`TaskFinishedError`.
        """
        self._check_running()
        ref = self._live.get(task_id)
        if ref is not None and ref.is_alive:
            reply: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
            ref.send(TaskActor.request_stop, reply)
            return await reply
        if self._cluster is not None:
            return await self._cluster.stop(task_id)
        record = await self._record(task_id)
        if record.status is TaskState.STOPPED:
            return record.copy()
        if record.status in FINISHED:
            raise TaskFinishedError.of(task_id, record.status)
        raise self._closed_error()

    async def rerun(self, task_id: Any, *, new_task_id: Any = None) -> str:
        """Run a finished task again: a new task of the same function and payload.

        Its first event names the task it re-runs; the id is generated unless
        ``new_task_id`` is given. Allowed from any terminal state (the dead-letter
        workflow: ``rt.list(status="Failed")``, then ``rerun``); an unfinished task
        raises :class:`TaskNotFinishedError`.
        """
        self._check_running()
        if new_task_id is not None:
            new_task_id = check_task_id(new_task_id)
        source = await self._record(task_id)
        if not source.is_terminal:
            raise TaskNotFinishedError(
                f"task {task_id} is still {source.status}: only a finished task can be re-run "
                "(wait for it with rt.wait, or stop it with rt.stop first)"
            )
        return await self._accept(
            source.function,
            source.payload_bytes,
            NOT_DECODED,
            new_task_id,
            note=f"accepted: re-run of {task_id}",
        )

    async def list(
        self,
        # Typed Any on purpose: Query checks each argument and answers a bad one
        # with a ConfigError (a compiled build would raise a bare TypeError).
        function: Any = None,  # str | None
        status: Any = None,  # a TaskState, its name, or None
        prefix: Any = None,  # str | None
        limit: Any = 50,  # int
        *,
        created_after: Any = None,  # float | None
        created_before: Any = None,  # float | None
        order: Any = "desc",  # "desc" | "asc"
        cursor: Any = None,  # str | None
    ) -> TaskList:
        """A page of task records, newest first (``order="asc"``: oldest first).

        Filters: function, status, id prefix, and creation time strictly between
        ``created_after`` and ``created_before`` (epoch seconds). ``limit`` is 1 to
        1000. Pass the page's ``next_cursor`` (None on the last page) to get the next
        one: following cursors yields every matching task exactly once, in order, even
        while new tasks are invoked. Bad arguments raise :class:`ConfigError`.
        """
        self._check_running()
        if status is not None:
            try:
                status = TaskState(status)
            except ValueError:
                raise ConfigError(
                    f"unknown status {status!r}; use one of {', '.join(s.value for s in TaskState)}"
                ) from None
        query = Query(
            function,
            None if status is None else str(status),
            prefix,
            limit,
            created_after,
            created_before,
            order,
            cursor,
        )
        page = query.page(await self._store.list(query))
        page[:] = [record.copy() for record in page]
        return page

    async def instances(self, name: Any) -> builtins.list[InstanceInfo]:
        """What the pool of ``name`` holds: id, state, in-flight count, times, tasks served."""
        self._check_running()
        entry = self._functions.get(name)
        if entry is None:
            raise FunctionNotFoundError(self._not_found(name))
        assert entry.pool is not None
        result: builtins.list[InstanceInfo] = await entry.pool.ask(DescribeInstances())
        return result

    async def function_stats(self) -> dict[str, dict[str, Any]]:
        """Per registered function, what an operator looks at first: ``kind``, ``queued``
        (accepted, not yet dequeued), ``running`` (attempts under way), ``unfinished``
        (every task not terminal) and ``instances`` (a count per instance state).

        On a shared store, ``queued`` and ``unfinished`` also count the tasks waiting in
        the cluster's queue that no node has taken yet (read from the store, one round
        trip); ``running`` and ``instances`` are this node's."""
        self._check_running()
        stats: dict[str, dict[str, Any]] = {}
        functions = list(self._functions.items())
        waiting: dict[str, int] = {}
        if self._cluster is not None and functions:
            found = await self._cluster.store.queue.stats(name for name, _ in functions)
            waiting = {name: queue.depth for name, queue in found.items()}
        for name, entry in functions:
            assert entry.pool is not None
            infos: builtins.list[InstanceInfo] = await entry.pool.ask(DescribeInstances())
            running: int = await entry.pool.ask(Running())
            in_cluster = waiting.get(name, 0)
            stats[name] = {
                "kind": entry.spec.config.kind,
                "queued": entry.queued + in_cluster,
                "running": running,
                "unfinished": entry.live + in_cluster,
                "instances": dict(Counter(str(info.state) for info in infos)),
            }
        return stats

    async def nodes(self) -> builtins.list[NodeInfo]:
        """The live nodes of this runtime's cluster; on a store that is not shared, just
        this runtime (``rt.store.shared`` says which)."""
        self._check_running()
        if self._cluster is not None:
            return await self._cluster.store.nodes.nodes()
        now = self.clock.time()
        in_flight = sum(entry.live for entry in self._functions.values())
        return [
            NodeInfo(
                self.node_id,
                socket.gethostname(),
                os.getpid(),
                self._started_at,
                now,
                tuple(sorted(self._functions)),
                in_flight,
            )
        ]

    async def ping_store(self) -> None:
        """Check the store answers (for readiness probes); raises :class:`StoreError` if not."""
        self._check_running()
        await self._store.ping()

    # helpers ----------------------------------------------------------------------------

    async def _record(self, task_id: Any) -> TaskRecord:
        record = await self._store.get(task_id) if isinstance(task_id, str) else None
        if record is None:
            raise TaskNotFoundError(
                f"no task with id {task_id!r}: check the id (rt.list shows recent ones); "
                "finished tasks are dropped after the store's retention period"
            )
        return record

    def _not_found(self, name: object) -> str:
        known = ", ".join(sorted(self._functions)) or "none"
        return f"no function named {name!r} is registered (registered: {known}); register it first"

    def client(self) -> RuntimeClient:
        """Blocking ``invoke``, ``get``, ``wait``, ``stop``, ``list`` and ``rerun`` for plain
        threaded code (a Flask view, a script) while this runtime runs on its loop in
        another thread. See :func:`runtime.start_in_thread` to run it that way."""
        if self._state != "started" or self._loop is None:
            raise self._closed_error()
        return RuntimeClient(self, self._loop, self._loop_thread)

    def _check_running(self) -> None:
        """Refuse a call before ``start``, after ``close``, or from another event loop."""
        if self._state != "started":
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise WrongLoopError(
                "this runtime runs on another event loop (the one it was started in): call it "
                "from that loop, or from other threads through rt.client()"
            )

    def _closed_error(self) -> RuntimeClosedError:
        if self._state == "new":
            return RuntimeClosedError(
                "the runtime is not started: use 'async with Runtime() as rt' or 'await rt.start()'"
            )
        return RuntimeClosedError(
            f"the runtime is {self._state}; create a new Runtime to run tasks"
        )


def _seconds(value: object) -> bool:
    """A finite number of seconds, >= 0 (a bool is not one)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not _seconds(timeout):
        raise ConfigError(f"timeout={timeout!r} must be a number of seconds >= 0, or None")
    return float(timeout)  # type: ignore[arg-type]


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")


def _check_delay(delay: object, max_delay: float, name: str) -> None:
    ok = (
        isinstance(delay, int | float)
        and not isinstance(delay, bool)
        and math.isfinite(delay)
        and 0 <= delay <= max_delay
    )
    if not ok:
        raise ConfigError(
            f"delay={delay!r} is out of range for {name!r}: it must be a number of seconds from "
            f"0 to max_delay={max_delay} (raise max_delay when registering the function to "
            "schedule further ahead)"
        )


class _GcThreshold:
    """``Runtime(gc_threshold=N)``: the collector's generation-0 threshold while it runs.

    Each task allocates and frees a handful of container objects, so the default
    threshold (700) runs a young collection every ~100 tasks. A service that wants
    fewer can raise it. The setting is process-global, so stint never changes it
    unless asked, and puts back what it found when the runtime closes.
    """

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self.saved: tuple[int, int, int] | None = None

    def apply(self) -> None:
        if self.threshold is not None and self.saved is None:
            self.saved = gc.get_threshold()
            gc.set_threshold(self.threshold, *self.saved[1:])

    def restore(self) -> None:
        if self.saved is not None:
            gc.set_threshold(*self.saved)
            self.saved = None


def _version() -> str:
    from . import __version__

    return __version__


def _check_metrics_address(host: object, port: object) -> None:
    """Refuse a metrics address ``start`` could never bind, before anything is opened."""
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535
    ):
        raise ConfigError(
            f"metrics_port={port!r} must be an integer from 0 to 65535 (0 picks a free port), "
            "or None not to serve metrics"
        )
    if not isinstance(host, str) or not host:
        raise ConfigError(
            f"metrics_host={host!r} must be a host name or address such as '127.0.0.1'"
        )
