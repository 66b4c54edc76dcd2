"""What the runtime and its actors share about each registered function."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors import ActorRef, ActorSystem, Clock

    from .config import FunctionSpec
    from .hooks import BackgroundTasks
    from .metrics import FunctionMetrics
    from .record import TaskRecord
    from .stores.base import Store


class FunctionEntry:
    """One registration: its spec, its pool, and two counters read without a message.

    ``queued`` (accepted and not yet taken by the pool) is raised by ``invoke``
    and lowered by the pool; ``live`` (not yet terminal) is raised by ``invoke``
    and lowered when a task ends. Both are touched only on the loop thread.
    """

    __slots__ = ("live", "metrics", "pool", "queued", "spec")

    def __init__(self, spec: FunctionSpec, metrics: FunctionMetrics) -> None:
        self.spec = spec
        self.metrics = metrics
        self.pool: ActorRef | None = None
        self.queued = 0
        self.live = 0


class Services:
    """What runtime actors need from their runtime, handed to them at creation."""

    __slots__ = (
        "background",
        "clock",
        "now",
        "random",
        "store",
        "store_update",
        "system",
        "task_finished",
    )

    def __init__(  # noqa: PLR0917 - built in one place, by Runtime.start
        self,
        system: ActorSystem,
        clock: Clock,
        store: Store,
        background: BackgroundTasks,
        task_finished: Callable[[TaskRecord, FunctionEntry], None],
        rng: random.Random,
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
