"""The public face of stint: :class:`Runtime`."""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from actors import ActorRef, ActorSystem, Clock, SystemClock

from . import codec
from .config import FunctionSpec, check_name, make_spec
from .errors import (
    ConfigError,
    FunctionNotFoundError,
    QueueFullError,
    RuntimeClosedError,
    TaskFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from .hooks import BackgroundTasks
from .ids import TaskIdGenerator, check_task_id
from .instances import InstanceInfo
from .messages import (
    AddFunction,
    DescribeInstances,
    Drain,
    Interrupt,
    Recover,
    RemoveFunction,
    Running,
    Shutdown,
    Wake,
)
from .metrics import FunctionMetrics, StintCollector
from .metrics_server import MetricsServer
from .pool import InstancePoolActor
from .record import TaskRecord
from .registry import FunctionEntry, Services
from .states import FINISHED, TaskState
from .stores import Store, open_store
from .supervisor import SupervisorActor
from .task_actor import TaskActor

logger = logging.getLogger("stint")
_BACKPRESSURE = 4096  # inbox length past which invoke yields to the loop
_WAKE = Wake()
_ENQUEUED = TaskState.ENQUEUED
F = TypeVar("F", bound=Callable[..., Any])


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
        tick_interval: float = 0.05,
        close_timeout: float = 30.0,
        seed: int | None = None,
        metrics_port: Any = None,  # an int or None
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if not isinstance(max_payload_bytes, int) or not 1 <= max_payload_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_payload_bytes must be an integer from 1 to 67108864 (64 MiB)")
        if not tick_interval > 0 or not close_timeout >= 0:
            raise ConfigError("tick_interval must be > 0 seconds and close_timeout >= 0 seconds")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.tick_interval = tick_interval
        self.close_timeout = close_timeout
        self._store: Store = open_store(store, self.clock)
        self._random = random.Random(seed)
        self._functions: dict[str, FunctionEntry] = {}
        self._pools: list[ActorRef] = []  # every pool ever started, retiring ones included
        self._live: dict[str, ActorRef] = {}  # task id -> actor, while the task is not terminal
        self._orphans: dict[str, builtins.list[TaskRecord]] = {}  # recovered, function unknown
        self._waiters: dict[str, list[asyncio.Future[TaskRecord]]] = {}
        self._join_waiters: list[tuple[str | None, asyncio.Future[None]]] = []
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
        self._collector = StintCollector(
            lambda: self._metrics,
            lambda: {name: e.queued for name, e in self._functions.items()},
            lambda: self._system,
            _version(),
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
        """Open the store and start the supervisor and one pool per registered function."""
        if self._state != "new":
            raise RuntimeClosedError(
                f"this runtime is {self._state}; create a new Runtime to start again"
            )
        self._system = ActorSystem(clock=self.clock)
        recovered = await self._store.open()
        self._services = Services(
            self._system,
            self.clock,
            self._store,
            self._background,
            self._task_finished,
            self._random,
        )
        self._supervisor = self._system.spawn(
            SupervisorActor, self.tick_interval, name="supervisor"
        )
        self._state = "started"
        self._collector.bind(asyncio.get_running_loop())
        for entry in self._functions.values():
            self._start_pool(entry)
        self._recover(recovered)
        host, port = self._metrics_address
        if port is not None:
            await self.serve_metrics(host=host, port=port)
        self._system.scheduler.call_later(1.0, self._maintain)

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
        self._state = "closing"
        try:
            await self._wind_down()
        except asyncio.CancelledError:
            logger.warning("stint: close interrupted: cutting running work short")
            await self._tear_down(hurry=True)
            raise
        await self._tear_down(hurry=False)

    async def _wind_down(self) -> None:
        """Let running attempts finish (up to close_timeout), then PreStop every instance."""
        pools = [pool for pool in self._pools if pool.is_alive]
        running = sum(await self._ask_each(pools, Running))
        if running:
            logger.warning(
                "stint: closing: waiting up to %.1f s for %d running attempt(s) to finish "
                "(cancel close(), or press Ctrl-C again, to stop waiting)",
                self.close_timeout,
                running,
            )
        if not await self._ask_all(pools, Drain, self.close_timeout):
            logger.warning(
                "stint: closing: attempts still running after close_timeout=%s s: interrupted",
                self.close_timeout,
            )
            for pool in pools:
                pool.tell(Interrupt())
            await self._ask_all(pools, Drain, 5.0)
        longest_pre_stop = max(
            (e.spec.config.pre_stop_timeout for e in self._functions.values()), default=0
        )
        await self._ask_all(pools, Shutdown, longest_pre_stop + 5.0)

    async def _tear_down(self, *, hurry: bool) -> None:
        """Stop background work, account for unfinished tasks, close actors and the store."""
        assert self._system is not None
        if hurry:
            for pool in self._pools:
                pool.tell(Interrupt())
            self.close_cancelled = await self._background.cancel_all()
        else:
            # worker processes get 1 s to exit; anything still running after 3 s is cut
            self.close_cancelled = await self._background.wait(timeout=3.0)
            if self.close_cancelled:
                logger.warning("close() cancelled %d background task(s)", self.close_cancelled)
        await self._account_for_unfinished()
        self._system.close()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(
                        RuntimeClosedError("the runtime closed before the task ended")
                    )
        self._waiters.clear()
        self._live.clear()
        for _, joiner in self._join_waiters:
            if not joiner.done():
                joiner.set_exception(RuntimeClosedError("the runtime closed before it was idle"))
        try:
            await self._store.close()
        finally:
            if self._metrics_server is not None:
                await self._metrics_server.close()
                self._metrics_server = None
            self._state = "closed"

    async def _account_for_unfinished(self) -> None:
        """Count the tasks close leaves unfinished, by state, and say what becomes of them."""
        unfinished: Counter[str] = Counter()
        for task_id in self._live:
            record = await self._store.get(task_id)
            if record is not None and not record.is_terminal:
                unfinished[str(record.status)] += 1
        self.close_unfinished = dict(unfinished)
        total = sum(unfinished.values())
        if not total:
            return
        states = ", ".join(f"{state}: {count}" for state, count in sorted(unfinished.items()))
        if self._store.durable:
            fate = f"kept in {self._store.url}: they are recovered on the next start"
        else:
            fate = "lost: the memory store keeps nothing (use a durable store to keep them)"
        logger.warning("stint: closed with %d unfinished task(s) (%s): %s", total, states, fate)

    async def _ask_each(self, pools: list[ActorRef], message: type[Any]) -> list[Any]:
        answers = await asyncio.gather(
            *[pool.ask(message()) for pool in pools if pool.is_alive], return_exceptions=True
        )
        return [answer for answer in answers if not isinstance(answer, BaseException)]

    async def _ask_all(self, pools: list[ActorRef], message: type[Any], timeout: float) -> bool:
        asks = [pool.ask(message()) for pool in pools if pool.is_alive]
        if not asks:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*asks, return_exceptions=True)
        except TimeoutError:
            return False
        return True

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

    def function(self, name: Any = None, **config: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

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
        if self._supervisor is not None and self._state == "started":
            self._supervisor.tell(RemoveFunction(name))

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return {name: entry.spec for name, entry in self._functions.items()}

    def _start_pool(self, entry: FunctionEntry) -> None:
        assert self._system is not None and self._supervisor is not None and self._services
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

    async def invoke(self, name: Any, payload: Any = None, *, task_id: Any = None) -> str:
        """Accept a task for ``name``; returns its id once it is stored as Enqueued."""
        if self._state != "started":
            raise self._closed_error()
        entry = self._functions.get(name)
        if entry is None:
            raise FunctionNotFoundError(self._not_found(name))
        data = codec.encode_payload(payload, self.max_payload_bytes)
        task_id = self._new_id() if task_id is None else check_task_id(task_id)
        config = entry.spec.config
        if entry.queued >= config.max_queued:
            raise QueueFullError(
                f"function {name!r} already has {entry.queued} tasks waiting (max_queued="
                f"{config.max_queued}); retry later, add capacity (max_instances, concurrency) "
                "or raise max_queued"
            )
        clock = self.clock
        record = TaskRecord(task_id, name, data, clock.time())
        pending = self._store.add(record)
        if pending is not None:
            await pending
        assert self._system is not None and self._services is not None and entry.pool is not None
        ref = self._system.spawn(
            TaskActor, record, entry, self._services, name=task_id, parent=self._supervisor
        )
        self._live[task_id] = ref
        entry.queued += 1
        entry.live += 1
        metrics = entry.metrics
        metrics.submitted += 1
        metrics.entered[_ENQUEUED] += 1
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

    def _task_finished(self, record: TaskRecord, entry: FunctionEntry) -> None:
        self._live.pop(record.task_id, None)
        entry.live -= 1
        self._store.finished(record)
        if self._join_waiters and (entry.live == 0 or not self._live):
            self._wake_joiners()
        waiters = self._waiters.pop(record.task_id, None)
        if waiters:
            snapshot = record.copy()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(snapshot)

    async def join(self, name: Any = None, timeout: float | None = None) -> None:
        """Wait until ``name`` (or every function, if None) has no unfinished task.

        Tasks invoked while waiting count too. Raises :class:`WaitTimeoutError`.
        """
        if name is not None and name not in self._functions:
            raise FunctionNotFoundError(self._not_found(name))
        if self._idle(name):
            return
        if self._state != "started":
            raise self._closed_error()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pair = (name, waiter)
        self._join_waiters.append(pair)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            what = f"function {name!r}" if name else "the runtime"
            raise WaitTimeoutError(f"{what} still has unfinished tasks after {timeout} s") from None
        finally:
            if pair in self._join_waiters:
                self._join_waiters.remove(pair)

    def _idle(self, name: str | None) -> bool:
        if name is None:
            return not self._live
        return self._functions[name].live == 0

    def _wake_joiners(self) -> None:
        for name, waiter in self._join_waiters:
            if not waiter.done() and (name not in self._functions or self._idle(name)):
                waiter.set_result(None)

    async def get(self, task_id: Any) -> TaskRecord:
        """The task's record (a snapshot); raises :class:`TaskNotFoundError`."""
        return (await self._record(task_id)).copy()

    async def wait(self, task_id: Any, timeout: float | None = None) -> TaskRecord:
        """Wait until the task is terminal and return its record.

        Raises :class:`WaitTimeoutError` after ``timeout`` seconds (the task goes on).
        """
        if task_id not in self._live:  # a live task is unfinished: no need to read it
            record = await self._record(task_id)
            if record.is_terminal:
                return record.copy()
            if self._state != "started":
                raise self._closed_error()
        waiter: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(waiter)
        try:
            if timeout is None:  # the common case: no timer to arm and disarm
                return await waiter
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            now = await self._store.get(task_id)
            status = now.status if now is not None else "unknown"
            raise WaitTimeoutError(
                f"task {task_id} is still {status} after {timeout} s; wait longer, "
                "or stop it with rt.stop"
            ) from None
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[task_id]

    async def stop(self, task_id: Any) -> TaskRecord:
        """Stop a task; returns its record once Stopped.

        A Running task's instance runs PreStop and is replaced first. Stopping a
        Stopping or Stopped task is fine; a finished one raises :class:`TaskFinishedError`.
        """
        ref = self._live.get(task_id)
        if ref is not None and ref.is_alive:
            reply: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
            ref.send(TaskActor.request_stop, reply)
            return await reply
        record = await self._record(task_id)
        if record.status is TaskState.STOPPED:
            return record.copy()
        if record.status in FINISHED:
            raise TaskFinishedError.of(task_id, record.status)
        raise self._closed_error()

    async def list(
        self,
        function: str | None = None,
        status: Any = None,  # a TaskState, its name, or None
        prefix: str | None = None,
        limit: Any = 50,  # an int
    ) -> list[TaskRecord]:
        """Task records, newest first, filtered by function, status and id prefix."""
        if status is not None:
            try:
                status = TaskState(status)
            except ValueError:
                raise ConfigError(
                    f"unknown status {status!r}; use one of {', '.join(s.value for s in TaskState)}"
                ) from None
        if not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"limit={limit!r} must be an integer >= 0")
        records = await self._store.list(
            function=function, status=status, prefix=prefix, limit=limit
        )
        return [record.copy() for record in records]

    async def instances(self, name: Any) -> builtins.list[InstanceInfo]:
        """What the pool of ``name`` holds: id, state, in-flight count, times, tasks served."""
        entry = self._functions.get(name)
        if entry is None:
            raise FunctionNotFoundError(self._not_found(name))
        if self._state != "started" or entry.pool is None:
            raise self._closed_error()
        result: builtins.list[InstanceInfo] = await entry.pool.ask(DescribeInstances())
        return result

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

    def _closed_error(self) -> RuntimeClosedError:
        if self._state == "new":
            return RuntimeClosedError(
                "the runtime is not started: use 'async with Runtime() as rt' or 'await rt.start()'"
            )
        return RuntimeClosedError(
            f"the runtime is {self._state}; create a new Runtime to run tasks"
        )


def _version() -> str:
    from . import __version__

    return __version__
