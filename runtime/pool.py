"""The instance pool actor: one per function. It owns the queue, the instances and their slots.

It dequeues a task when a slot is free (thawing a frozen instance, or cold-starting
a new one up to ``max_instances``), checks expiry at that moment, keeps
``min_instances`` warm, and on each lifecycle sweep enforces attempt timeouts,
freezes idle instances and destroys those idle past ``idle_timeout``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from actors import Actor, ActorRef, Reply

from .config import FunctionSpec
from .errors import InstanceStartError
from .instances import KINDS, Instance, Slot
from .messages import (
    DescribeInstances,
    Dispatch,
    Drain,
    HookDone,
    InstanceCrashed,
    InstanceReplaced,
    InstanceStarted,
    Interrupt,
    Invalidate,
    RestartInstance,
    Shutdown,
    SlotFree,
    StartAttempt,
    StartFailed,
    Submit,
    Sweep,
    Withdraw,
)
from .record import ErrorInfo
from .registry import FunctionEntry, Services
from .states import InstanceState

IS = InstanceState
_MAX_START_BACKOFF = 30.0


class InstancePoolActor(Actor):
    def __init__(self, spec: FunctionSpec, entry: FunctionEntry, services: Services) -> None:
        self.spec = spec
        self.config = spec.config
        self.entry = entry
        self.metrics = entry.metrics
        self.services = services
        self.queue: deque[Submit] = deque()
        self.instances: dict[str, Instance] = {}
        self.idle: list[Slot] = []  # free slots of accepting instances; the top is used first
        self.starting_free: list[Slot] = []  # free slots of instances still starting
        self.reserved: dict[ActorRef, Slot] = {}
        self.restarts: dict[Instance, list[ActorRef]] = {}  # instance -> tasks stopped on it
        self.abandoned: dict[str, Instance] = {}  # destroyed, but would not end (threads)
        self.draining = False  # closing or unregistered: no new task starts
        self.unregistered = False
        self.shutting_down = False  # PreStop is being run on every instance
        self.drain_replies: list[Reply] = []
        self.shutdown_replies: list[Reply] = []
        self.start_failures = 0
        self.start_blocked_until = 0.0
        self._ids = itertools.count(1)

    def on_start(self) -> None:
        self.metrics.instances = self.instances  # read (on the loop) at scrape time
        self._ensure_min()  # warm min_instances now, not at the first tick

    def receive(self, message: Any) -> Any:
        return _HANDLERS[type(message)](self, message)

    # the queue -------------------------------------------------------------------

    def _on_submit(self, msg: Submit) -> None:
        if self.unregistered and not msg.retry:
            self.entry.queued -= 1
            msg.task.tell(Invalidate(self._unregistered_reason()))
            return
        self.queue.append(msg)
        self._dispatch()

    def _dispatch(self) -> None:
        queue = self.queue
        if not queue or (self.draining and not self.unregistered):
            return
        now = self.clock.monotonic()
        max_age = self.config.max_event_age
        while queue:
            slot = self._free_slot()
            if slot is None:
                return
            sub = queue.popleft()
            if not sub.retry:
                self.entry.queued -= 1
            task = sub.task
            if not task.is_alive:  # stopped and gone while it waited
                self._return_slot(slot)
                continue
            if max_age is not None and not sub.retry and now - sub.enqueued_at > max_age:
                self._return_slot(slot)
                task.tell(Dispatch(None, False, now - sub.enqueued_at))
                continue
            self._reserve(slot, task)

    def _reserve(self, slot: Slot, task: ActorRef) -> None:
        instance = slot.instance
        slot.reserved_by = task
        self.reserved[task] = slot
        instance.in_flight += 1
        ready = instance.state is not IS.STARTING
        if ready:
            if instance.state is IS.FROZEN:
                instance.thaw()
                instance.note("thawed")
            instance.state = IS.BUSY
        task.tell(Dispatch(slot, ready))

    def _free_slot(self) -> Slot | None:
        idle = self.idle
        while idle:
            slot = idle.pop()
            if slot.reserved_by is None and slot.instance.accepting:
                return slot
        if not self.starting_free and self._can_start():
            self._start_instance()
        if self.starting_free:
            return self.starting_free.pop()
        return None

    def _return_slot(self, slot: Slot) -> None:
        if slot.instance.state is IS.STARTING:
            self.starting_free.append(slot)
        elif slot.instance.accepting:
            self.idle.append(slot)

    def _release(self, slot: Slot) -> None:
        """A reservation ends without (more) work: the slot is free again."""
        task = slot.reserved_by
        if task is not None:
            self.reserved.pop(task, None)
            slot.reserved_by = None
        instance = slot.instance
        instance.in_flight -= 1
        if instance.state is IS.BUSY and instance.in_flight == 0:
            instance.state = IS.READY
        self._return_slot(slot)

    def _on_slot_free(self, msg: SlotFree) -> None:
        slot = msg.slot
        slot.attempt = None
        instance = slot.instance
        instance.tasks_served += 1
        instance.touch()
        self._release(slot)
        if self.queue:
            self._dispatch()
        if self.draining:
            self._check_drained()

    def _on_withdraw(self, msg: Withdraw) -> None:
        slot = self.reserved.get(msg.task)
        if slot is not None:
            self._release(slot)
            self._dispatch()
            return
        for index, sub in enumerate(self.queue):
            if sub.task is msg.task:
                del self.queue[index]
                if not sub.retry:
                    self.entry.queued -= 1
                return

    # instances ---------------------------------------------------------------------

    def _can_start(self) -> bool:
        # An unregistered function still starts instances for the retries it owes.
        allowed = not self.draining or (self.unregistered and not self.shutting_down)
        return (
            allowed
            and len(self.instances) < self.config.max_instances
            and self.clock.monotonic() >= self.start_blocked_until
        )

    def _start_instance(self) -> Instance:
        instance_id = f"{self.spec.name}-{next(self._ids)}"
        instance = KINDS[self.config.kind](self.spec, instance_id, self.ref, self.services)
        self.instances[instance_id] = instance
        self.metrics.instance_starts += 1
        self.starting_free.extend(reversed(instance.slots))
        instance.note("starting")
        instance.start()
        return instance

    def _on_instance_started(self, msg: InstanceStarted) -> None:
        instance = msg.instance
        if (
            self.instances.get(instance.instance_id) is not instance
            or instance.state is not IS.STARTING
        ):
            return
        self._drop_free_slots(instance)
        if msg.seconds is not None:
            self.metrics.hook("initializer", msg.seconds, msg.error is not None)
        if msg.error is not None:
            self._start_failed(instance, msg.error)
            return
        instance.activate()
        instance.state = IS.READY
        self.metrics.instance_start.observe(self.clock.monotonic() - instance.created_monotonic)
        instance.note("ready")
        self.start_failures = 0
        if self.shutting_down:
            self._release_all(instance)
            self._stop_instance(instance, "close")
            return
        for slot in instance.slots:
            task = slot.reserved_by
            if task is None:
                self.idle.append(slot)
            else:
                instance.state = IS.BUSY
                task.tell(StartAttempt(slot))
        self._dispatch()

    def _start_failed(self, instance: Instance, error: ErrorInfo) -> None:
        instance.note("start_failed", f"{error.type}: {error.message}", warn=True)
        instance.destroy()  # whatever it holds (a thread, a worker process) goes with it
        instance.state = IS.STOPPED
        self.metrics.instance_stops["start_failed"] += 1
        del self.instances[instance.instance_id]
        reason = ErrorInfo(
            InstanceStartError.__name__,
            f"instance {instance.instance_id} could not start: {error.type}: {error.message}",
            error.traceback,
        )
        served_fresh = False
        for slot in instance.slots:
            task = slot.reserved_by
            if task is not None:
                self.reserved.pop(task, None)
                slot.reserved_by = None
                task.tell(StartFailed(reason))
                served_fresh = True
        if not served_fresh:
            # Nobody's task paid for this failure (a warm-up or a retry): back off,
            # so a broken Initializer cannot spin in a hot loop of restarts.
            self.start_failures += 1
            delay = min(_MAX_START_BACKOFF, 0.1 * 2**self.start_failures)
            self.start_blocked_until = self.clock.monotonic() + delay
        self._dispatch()
        self._check_drained()

    def _release_all(self, instance: Instance) -> None:
        for slot in instance.slots:
            if slot.reserved_by is not None:
                self.reserved.pop(slot.reserved_by, None)
                slot.reserved_by = None
        instance.in_flight = 0

    def _drop_free_slots(self, instance: Instance) -> None:
        self.starting_free = [s for s in self.starting_free if s.instance is not instance]
        self.idle = [s for s in self.idle if s.instance is not instance]

    def _stop_instance(self, instance: Instance, reason: str, detail: str = "") -> None:
        self._drop_free_slots(instance)
        instance.stop(reason, detail)

    def _on_restart_instance(self, msg: RestartInstance) -> None:
        instance = msg.slot.instance
        self.restarts.setdefault(instance, []).append(msg.task)
        if instance.state is IS.STOPPING:  # already on its way out
            instance.interrupt(msg.slot, "stop")
            return
        self._restart(instance, "stop", f"restart: task {msg.task.name} was stopped", msg.slot)

    def _restart(self, instance: Instance, reason: str, detail: str, cause: Slot) -> None:
        """Cut every attempt on ``instance`` short, run PreStop, and replace it."""
        for slot in instance.slots:
            if slot.attempt is not None:
                instance.interrupt(slot, reason if slot is cause else "restart")
        instance.replace = True
        self._stop_instance(instance, reason, detail)

    def _on_instance_crashed(self, msg: InstanceCrashed) -> None:
        instance = msg.instance
        if self.instances.get(instance.instance_id) is not instance:
            return
        del self.instances[instance.instance_id]
        self._drop_free_slots(instance)
        instance.hook_running = None
        instance.state = IS.STOPPED
        instance.note("crashed", msg.detail, warn=True)
        self.metrics.instance_stops["crash"] += 1
        if msg.protocol:
            self.metrics.protocol_errors += 1
        for task in self.restarts.pop(instance, []):  # a stop under way: the instance is gone
            task.tell(InstanceReplaced(f"instance {instance.instance_id} crashed: {msg.detail}"))
        if not self.draining:
            self._ensure_min()
        self._dispatch()
        self._check_drained()
        if self.shutting_down:
            self._check_shutdown()

    def _on_hook_done(self, msg: HookDone) -> None:
        instance = msg.instance
        if self.instances.get(instance.instance_id) is not instance:
            return  # gone already (its worker crashed): nothing left to freeze or destroy
        instance.hook_running = None
        if msg.seconds is not None:
            self.metrics.hook(msg.hook, msg.seconds, msg.error is not None)
        if msg.error is not None:
            instance.note(f"{msg.hook}_failed", f"{msg.error.type}: {msg.error.message}", warn=True)
        if msg.hook != "pre_freeze":
            self._destroyed(instance)
        elif self.shutting_down:
            self._stop_instance(instance, "close")
        else:
            self._frozen(instance)
        if self.shutting_down:
            self._check_shutdown()

    def _frozen(self, instance: Instance) -> None:
        if instance.state is not IS.READY or instance.in_flight:
            return
        instance.frozen()
        instance.state = IS.FROZEN
        instance.note("frozen")
        self.idle[:0] = [s for s in instance.slots if s.reserved_by is None]  # used last
        self._dispatch()

    def _destroyed(self, instance: Instance) -> None:
        instance.destroy()
        instance.state = IS.STOPPED
        self.instances.pop(instance.instance_id, None)
        if instance.abandoned:
            # It would not end (a thread ignoring its stop flag): counted, listed by
            # rt.instances() until it does, and replaced like any other.
            instance.note("abandoned", f"still running after {instance.stop_detail}", warn=True)
            self.metrics.instance_stops["abandoned"] += 1
            self.abandoned[instance.instance_id] = instance
        else:
            instance.note("stopped", instance.stop_detail)
            self.metrics.instance_stops[instance.stop_reason] += 1
        for task in self.restarts.pop(instance, []):
            task.tell(
                InstanceReplaced(f"PreStop ran and instance {instance.instance_id} was replaced")
            )
        if (
            instance.replace
            and not self.draining
            and len(self.instances) < self.config.max_instances
        ):
            self._start_instance()  # the restart: a fresh instance runs the Initializer
        self._ensure_min()
        self._dispatch()
        self._check_drained()

    def _ensure_min(self) -> None:
        alive = sum(1 for i in self.instances.values() if i.state is not IS.STOPPING)
        while alive < self.config.min_instances and self._can_start():
            self._start_instance()
            alive += 1

    # the lifecycle clock -----------------------------------------------------------

    def _on_sweep(self, _: Sweep) -> None:
        now = self.clock.monotonic()
        config = self.config
        for instance in list(self.instances.values()):
            if instance.in_flight:
                self._enforce_timeouts(instance, now)
                continue
            if instance.hook_running is not None or instance.state not in (IS.READY, IS.FROZEN):
                continue
            idle_for = now - instance.last_used
            if idle_for >= config.idle_timeout and self._above_min():
                self._stop_instance(instance, "idle", f"idle for {idle_for:.1f} s")
            elif (
                instance.state is IS.READY and idle_for >= config.freeze_after and not self.draining
            ):
                self._drop_free_slots(instance)
                instance.freeze()
        if not self.draining:
            self._ensure_min()
        if self.abandoned:
            self._prune_abandoned()
        self._dispatch()

    def _enforce_timeouts(self, instance: Instance, now: float) -> None:
        for slot in instance.slots:
            attempt = slot.attempt
            if attempt is None or attempt.deadline > now or instance.state is IS.STOPPING:
                continue
            if instance.restart_on_timeout:
                detail = f"restart: an attempt of {attempt.task.name} ran past the timeout"
                self._restart(instance, "timeout", detail, slot)
                return
            instance.interrupt(slot, "timeout")

    def _prune_abandoned(self) -> None:
        for instance_id, instance in list(self.abandoned.items()):
            if not instance.still_running():
                instance.note("ended", "the abandoned instance finally stopped")
                del self.abandoned[instance_id]

    def _above_min(self) -> bool:
        alive = sum(1 for i in self.instances.values() if i.state is not IS.STOPPING)
        return alive > self.config.min_instances or self.draining

    # draining, shutdown, introspection -------------------------------------------------

    def _on_drain(self, msg: Drain) -> None:
        self.draining = True
        if msg.unregister:
            self.unregistered = True
            reason = self._unregistered_reason()
            for sub in self.queue:
                if not sub.retry:
                    self.entry.queued -= 1
                    sub.task.tell(Invalidate(reason))
            self.queue = deque(sub for sub in self.queue if sub.retry)
            for slot in list(self.reserved.values()):
                if slot.instance.state is IS.STARTING and slot.reserved_by is not None:
                    slot.reserved_by.tell(Invalidate(reason))
                    self._release(slot)
        self.drain_replies.append(self.defer_reply())
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.draining:
            return
        if any(s.attempt is not None for i in self.instances.values() for s in i.slots):
            return
        if self.unregistered and (self.entry.live > 0 or self.queue):
            return  # retries of an unregistered function still finish here
        for reply in self.drain_replies:
            reply.send(None)
        self.drain_replies.clear()
        if self.unregistered:
            self._shutdown()

    def _on_interrupt(self, _: Interrupt) -> None:
        for instance in self.instances.values():
            for slot in instance.slots:
                if slot.attempt is not None:
                    instance.interrupt(slot, "close")

    def _on_shutdown(self, _: Shutdown) -> None:
        self.shutdown_replies.append(self.defer_reply())
        self._shutdown()

    def _shutdown(self) -> None:
        self.draining = True
        self.shutting_down = True
        for instance in list(self.instances.values()):
            if instance.state in (IS.READY, IS.BUSY, IS.FROZEN) and instance.hook_running is None:
                detail = "unregistered" if self.unregistered else "runtime closing"
                self._stop_instance(instance, "close", detail)
        self._check_shutdown()

    def _check_shutdown(self) -> None:
        if any(i.state is not IS.STARTING for i in self.instances.values()):
            return
        for instance in list(self.instances.values()):  # Initializers still running: end them
            instance.note("stopped", "closed while its Initializer ran")
            self.metrics.instance_stops["close"] += 1
            instance.destroy()
        self.instances.clear()
        for reply in self.shutdown_replies:
            reply.send(None)
        self.shutdown_replies.clear()
        if self.unregistered:
            self.stop_self()

    def _on_describe(self, _: DescribeInstances) -> list[Any]:
        gone = [instance.info() for instance in self.abandoned.values()]
        return [instance.info() for instance in self.instances.values()] + gone

    def _unregistered_reason(self) -> str:
        return f"function {self.spec.name!r} was unregistered before the task ran"


_HANDLERS: dict[type, Callable[[InstancePoolActor, Any], Any]] = {
    Submit: InstancePoolActor._on_submit,
    SlotFree: InstancePoolActor._on_slot_free,
    Withdraw: InstancePoolActor._on_withdraw,
    InstanceStarted: InstancePoolActor._on_instance_started,
    InstanceCrashed: InstancePoolActor._on_instance_crashed,
    RestartInstance: InstancePoolActor._on_restart_instance,
    HookDone: InstancePoolActor._on_hook_done,
    Sweep: InstancePoolActor._on_sweep,
    Drain: InstancePoolActor._on_drain,
    Interrupt: InstancePoolActor._on_interrupt,
    Shutdown: InstancePoolActor._on_shutdown,
    DescribeInstances: InstancePoolActor._on_describe,
}
