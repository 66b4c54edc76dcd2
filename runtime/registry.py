"""What the runtime and its actors share about each registered function."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors import ActorRef, ActorSystem, Clock

    from .config import FunctionSpec
    from .hooks import BackgroundTasks
    from .metrics import FunctionMetrics
    from .record import TaskRecord
    from .stores.base import Store
    from .waiting import Waits


class FunctionEntry:
    """One registration: its spec, its pool, its inbox, and two counters read without a message.

    ``invoke`` appends new tasks to ``inbox`` and tells the pool one ``Wake`` per
    batch (``wake_pending`` says one is on its way). ``queued`` (accepted and not
    yet dequeued) is raised by ``invoke`` and lowered by each task when it leaves
    the queue; ``live`` (not yet terminal) is raised by ``invoke`` and lowered
    when a task ends. All of it is touched only on the loop thread.
    """

    __slots__ = ("inbox", "live", "metrics", "pool", "queued", "spec", "wake_pending")

    def __init__(self, spec: FunctionSpec, metrics: FunctionMetrics) -> None:
        self.spec = spec
        self.metrics = metrics
        self.pool: ActorRef | None = None
        self.inbox: deque[tuple[ActorRef, float | None]] = deque()
        self.wake_pending = False
        self.queued = 0
        self.live = 0


class Services:
    """What runtime actors need from their runtime, handed to them at creation."""

    __slots__ = (
        "_thread_reports",
        "attempt_finished",
        "attempt_started",
        "background",
        "changed",
        "clock",
        "invoke_destination",
        "now",
        "random",
        "slot_free",
        "store",
        "store_update",
        "system",
        "task_finished",
        "watched",
    )

    def __init__(  # noqa: PLR0917 - built in one place, by Runtime.start
        self,
        system: ActorSystem,
        clock: Clock,
        store: Store,
        background: BackgroundTasks,
        task_finished: Callable[[TaskRecord, FunctionEntry], None],
        rng: random.Random,
        waits: Waits,
        invoke_destination: Callable[[str, str, bytes, str], str],
    ) -> None:
        self.system = system
        self.clock = clock
        self.now = clock.time  # bound once: read on every transition
        self.store = store
        # None when the store holds the live record itself and needs no update call
        self.store_update = store.update if store.writes_updates else None
        self.background = background
        self.task_finished = task_finished
        self.random = rng
        self.watched = waits.watched  # task id -> watchers: non-empty only while someone watches
        # (function, task id, payload, source task id) -> what the source's event says
        self.invoke_destination = invoke_destination
        self.changed = waits.changed
        # What an instance calls (with ActorRef.send) when an attempt ends: the task's
        # and the pool's methods, handed over here so instance kinds need neither class.
        from .pool import InstancePoolActor
        from .task_actor import TaskActor

        self.attempt_finished: Callable[..., Any] = TaskActor.attempt_finished
        self.attempt_started: Callable[..., Any] = TaskActor.attempt_started
        self.slot_free: Callable[..., Any] = InstancePoolActor.slot_free
        self._thread_reports: Any = None

    def thread_reports(self) -> Any:
        """The one batch channel from every instance thread to the loop (made on first use)."""
        if self._thread_reports is None:
            from .instances.thread_kind import ThreadReports

            self._thread_reports = ThreadReports(self.system.loop)
        return self._thread_reports
