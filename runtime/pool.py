"""The instance pool actor: one per function. It owns the queue, the instances and their slots.

It dequeues a task when a slot is free (thawing a frozen instance, or cold-starting
a new one up to ``max_instances``), checks expiry at that moment, keeps
``min_instances`` warm, and on each lifecycle sweep enforces attempt timeouts,
freezes idle instances and destroys those idle past ``idle_timeout``.

New tasks reach it through the function's inbox (``FunctionEntry.inbox``), one
:class:`~runtime.messages.Wake` per batch. Task actors and instances reach it
with guarded direct calls to ``resubmit``, ``withdraw``, ``restart_for_stop``
and ``slot_free``; everything else arrives as a message.

The pool holds the truth about reservations: ``slot.reserved_by`` names the task a
slot was given to, from the dispatch until the slot is free again. When an
instance goes away, every reservation on it that had not started is voided and
its task queued again at the front; every attempt still on it is reported
interrupted. So no task can be left waiting on an instance that is gone.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from actors import Actor, ActorRef, Reply, TimerHandle

from .config import FunctionSpec
from .errors import InstanceStartError
from .instances import KINDS, Attempt, Instance, Slot
from .messages import (
    CodeReturned,
    DescribeInstances,
    Drain,
    Go,
    HookDone,
    InstanceCrashed,
    InstanceStarted,
    Interrupt,
    PoolRetired,
    Running,
    Shutdown,
    Sweep,
    Wake,
)
from .record import ErrorInfo
from .registry import FunctionEntry, Services
from .states import InstanceState

STARTING = InstanceState.STARTING
READY = InstanceState.READY
BUSY = InstanceState.BUSY
FROZEN = InstanceState.FROZEN
STOPPING = InstanceState.STOPPING
STOPPED = InstanceState.STOPPED
_ACCEPTING = frozenset({READY, BUSY, FROZEN})
_MAX_START_BACKOFF = 30.0

QueueEntry = tuple[ActorRef, float | None]  # (task, monotonic enqueue time; None: no expiry)


class InstancePoolActor(Actor):
    def __init__(self, spec: FunctionSpec, entry: FunctionEntry, services: Services) -> None:
        self.spec = spec
        self.config = spec.config
        self.entry = entry
        self.metrics = entry.metrics
        self.services = services
        self.inbox = entry.inbox
        self.queue: deque[QueueEntry] = deque()
        self.instances: dict[str, Instance] = {}
        self.idle: list[Slot] = []  # free slots of accepting instances; the top is used first
        self.starting_free: list[Slot] = []  # free slots of instances still starting
        self.spare: list[Slot] = []  # free slots of instances full to concurrency (prefetch)
        self.last_sweep = float("-inf")  # monotonic: attempts handed over before it waited a tick
        self.reserved: dict[ActorRef, Slot] = {}  # every reservation, until its slot is free
        self.restarts: dict[Instance, list[ActorRef]] = {}  # instance -> tasks stopped on it
        # destroyed, but their code still runs (a thread busy with a handler): listed by
        # rt.instances() until it ends; abandoned once it overruns pre_stop_timeout
        self.retiring: dict[str, tuple[Instance, float]] = {}
        self.draining = False  # closing or unregistered: no new task starts
        self.unregistered = False
        self.shutting_down = False  # PreStop is being run on every instance
        self.retired = False  # unregistered and done: the supervisor stops it
        self.drain_replies: list[Reply] = []
        self.shutdown_replies: list[Reply] = []
        self.start_failures = 0
        self.start_blocked_until = 0.0
        self._ids = itertools.count(1)
        # delayed tasks: (monotonic due time, sequence, task); one timer for the earliest
        self.delayed: list[tuple[float, int, ActorRef]] = []
        self._delayed_seq = itertools.count()
        self._delay_timer: TimerHandle | None = None

    def on_start(self) -> None:
        self.metrics.instances = self.instances  # read (on the loop) at scrape time
        self._ensure_min()  # warm min_instances now, not at the first tick
        if self.entry.source is not None:
            self._report_capacity()  # the cluster's queue may hold work for us already

    def on_stop(self) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()

    def receive(self, message: Any) -> Any:
        return _HANDLERS[type(message)](self, message)

    # the queue -------------------------------------------------------------------

    def _on_wake(self, _: Wake) -> None:
        self._pull_inbox()
        self._dispatch()

    def _pull_inbox(self) -> None:
        inbox = self.inbox
        if inbox:
            self.queue.extend(inbox)
            inbox.clear()
        self.entry.wake_pending = False

    def resubmit(self, task: ActorRef, enqueued_at: float | None) -> None:
        """A task waits for a slot again: a retry after its backoff, or a recovered task."""
        self.queue.append((task, enqueued_at))
        self._dispatch()

    def hold(self, task: ActorRef, due: float) -> None:
        """A task not to be dequeued before ``due`` (monotonic): it waits in the delayed heap.

        However many tasks wait, the pool arms one timer, for the earliest due time.
        """
        heapq.heappush(self.delayed, (due, next(self._delayed_seq), task))
        timer = self._delay_timer
        if timer is None or due < timer.when:
            if timer is not None:
                timer.cancel()
            self._delay_timer = self.system.scheduler.call_at(
                due, self.ref.send, InstancePoolActor._release_due
            )

    def _release_due(self) -> None:
        """Move every delayed task now due into the queue (max_event_age counts from here)."""
        self._delay_timer = None
        delayed = self.delayed
        now = self.clock.monotonic()
        while delayed and delayed[0][0] <= now:
            due, _, task = heapq.heappop(delayed)
            if task.is_alive:  # a task stopped while delayed is simply dropped
                self.queue.append((task, due))
        if delayed:
            self._delay_timer = self.system.scheduler.call_at(
                delayed[0][0], self.ref.send, InstancePoolActor._release_due
            )
        self._dispatch()

    def _dispatch(self) -> None:
        queue = self.queue
        if not queue or (self.draining and not self.unregistered):
            if self.entry.source is not None:
                self._report_capacity()
            return
        max_age = self.config.max_event_age
        now = self.clock.monotonic() if max_age is not None else 0.0
        while queue:
            slot = self._free_slot()
            if slot is None:
                return
            task, enqueued_at = queue.popleft()
            if not task.is_alive:  # stopped while it waited: its entry is simply dropped
                self._return_slot(slot)
                continue
            if max_age is not None and enqueued_at is not None and now - enqueued_at > max_age:
                self._return_slot(slot)
                task.send(TaskActor.expired, now - enqueued_at)
                continue
            self._reserve(slot, task)
        if self.entry.source is not None:
            self._report_capacity()

    def _report_capacity(self) -> None:
        """A shared store: tell the cluster's queue how many tasks this pool could start now
        (free slots, and slots of instances it may still start, less what it holds queued),
        so the node fetches no more than that."""
        config = self.config
        free = len(self.idle) + len(self.starting_free) + len(self.spare)
        if not self.draining and self.clock.monotonic() >= self.start_blocked_until:
            slots = config.concurrency + KINDS[config.kind].shared_prefetch
            free += max(0, config.max_instances - len(self.instances)) * slots
        free -= len(self.queue) + len(self.inbox)
        self.entry.source.want(self.spec.name, max(0, free))

    def _reserve(self, slot: Slot, task: ActorRef) -> None:
        instance = slot.instance
        slot.reserved_by = task
        self.reserved[task] = slot
        instance.in_flight += 1
        state = instance.state
        if state is STARTING:
            task.send(TaskActor.dispatched, slot, False)
            return
        if state is FROZEN:
            instance.thaw()
            instance.note("thawed")
        instance.state = BUSY
        task.send(TaskActor.dispatched, slot, True)

    def _free_slot(self) -> Slot | None:
        """The slot the next task gets: an idle one, one of an instance starting (cold
        start, up to ``max_instances``), and only when neither has room, a spare one.

        A spare slot (a kind with ``prefetch``) is one of an instance already running
        ``concurrency`` attempts: its task would wait there behind another. Such a slot
        met on the way is set aside in ``spare``, so a burst spreads over the idle
        instances (and starts new ones) before any task queues behind another.
        """
        concurrency = self.config.concurrency
        idle = self.idle
        while idle:
            slot = idle.pop()
            instance = slot.instance  # Instance.accepting, inlined: this runs once per task
            if (
                slot.reserved_by is None
                and instance.hook_running is None
                and instance.state in _ACCEPTING
            ):
                if instance.in_flight < concurrency:
                    return slot
                self.spare.append(slot)
        starting = self.starting_free
        while starting and starting[-1].instance.in_flight >= concurrency:
            self.spare.append(starting.pop())
        if not starting and self._can_start():
            self._start_instance()
        if starting:
            return starting.pop()
        return self._spare_slot()

    def _spare_slot(self) -> Slot | None:
        """A spare slot of the instance with the fewest attempts: no task waits behind
        more others than it must."""
        spare = self.spare = [  # taken, or of an instance that no longer accepts: forgotten
            slot
            for slot in self.spare
            if slot.reserved_by is None
            and (
                (instance := slot.instance).state is STARTING
                or (instance.hook_running is None and instance.state in _ACCEPTING)
            )
        ]
        best = -1
        fewest = 0
        for i in range(len(spare) - 1, -1, -1):  # the top first among equals
            in_flight = spare[i].instance.in_flight
            if best < 0 or in_flight < fewest:
                best, fewest = i, in_flight
        return spare.pop(best) if best >= 0 else None

    def _return_slot(self, slot: Slot) -> None:
        if slot.instance.state is STARTING:
            self.starting_free.append(slot)
        elif slot.instance.accepting:
            self.idle.append(slot)

    def _release(self, slot: Slot) -> None:
        """A reservation ends (its attempt is over, or it never ran): the slot is free again."""
        task = slot.reserved_by
        if task is not None:
            slot.reserved_by = None
            if self.reserved.get(task) is slot:  # its retry may hold another slot already
                del self.reserved[task]
            instance = slot.instance
            instance.in_flight -= 1
            if instance.in_flight == 0:
                instance.last_used = self.clock.monotonic()
                if instance.state is BUSY:
                    instance.state = READY
        self._return_slot(slot)

    def _void(self, slot: Slot, *, requeue: bool = True) -> None:
        """A reservation on an instance going away ends. If its attempt never started,
        the task goes back to the front of the queue (it stays Dequeued; no event)."""
        task = slot.reserved_by
        if task is None:
            return
        slot.reserved_by = None
        if self.reserved.get(task) is slot:
            del self.reserved[task]
        slot.instance.in_flight -= 1
        if requeue and task.is_alive:
            self.queue.appendleft((task, None))

    def slot_free(self, slot: Slot) -> None:
        """The attempt in ``slot`` has really ended where it ran."""
        slot.attempt = None
        instance = slot.instance
        if self.instances.get(instance.instance_id) is not instance:
            return  # destroyed meanwhile: its reservations were settled then
        instance.tasks_served += 1
        if self.queue and not self.draining and instance.state is BUSY and self._hand_on(slot):
            return
        self._release(slot)
        if self.queue or self.entry.source is not None:
            self._dispatch()
        if self.draining:
            self._check_drained()

    def _hand_on(self, slot: Slot) -> bool:
        """Give a freed slot of a busy instance straight to the next task in the queue.

        The instance stays Busy and keeps its in-flight count: no trip through the idle
        stack. False when the queue held nothing runnable (the slot is still reserved).
        """
        queue = self.queue
        max_age = self.config.max_event_age
        reserved = self.reserved
        while queue:
            task, enqueued_at = queue.popleft()
            if not task.is_alive:
                continue
            if max_age is not None and enqueued_at is not None:
                waited = self.clock.monotonic() - enqueued_at
                if waited > max_age:
                    task.send(TaskActor.expired, waited)
                    continue
            previous = slot.reserved_by
            if previous is not None and reserved.get(previous) is slot:
                del reserved[previous]
            slot.reserved_by = task
            reserved[task] = slot
            task.send(TaskActor.dispatched, slot, True)
            return True
        return False

    def withdraw(self, task: ActorRef) -> None:
        """A task stopped before it ran: free the slot reserved for it, if any.

        Its queue entry, if it has one, is dropped when the dispatch reaches it.
        """
        slot = self.reserved.get(task)
        if slot is not None:  # an attempt handed over, if any, was taken back by the task
            slot.attempt = None
            self._release(slot)
            self._dispatch()
        if self.draining:
            self._check_drained()  # it may have been the last task a retired pool waited for

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
            or instance.state is not STARTING
        ):
            return
        self._drop_free_slots(instance)
        if msg.seconds is not None:
            self.metrics.hook("initializer", msg.seconds, msg.error is not None)
        if msg.error is not None:
            self._start_failed(instance, msg.error)
            return
        instance.activate()
        instance.state = READY
        self.metrics.instance_start.observe(self.clock.monotonic() - instance.started_at)
        instance.note("ready")
        self.start_failures = 0
        if self.shutting_down:
            for slot in instance.slots:
                self._void(slot)
            self._stop_instance(instance, "close")
            return
        for slot in instance.slots:
            task = slot.reserved_by
            if task is None:
                self.idle.append(slot)
            elif task.is_alive:
                instance.state = BUSY
                task.send(TaskActor.start_attempt, slot)
            else:
                self._release(slot)
        self._dispatch()

    def _start_failed(self, instance: Instance, error: ErrorInfo) -> None:
        instance.note("start_failed", f"{error.type}: {error.message}", warn=True)
        instance.destroy()  # whatever it holds (a thread, a worker process) goes with it
        instance.state = STOPPED
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
                if task.is_alive:
                    task.send(TaskActor.start_failed, reason)
                served_fresh = True
        instance.in_flight = 0
        if not served_fresh:
            # Nobody's task paid for this failure (a warm-up or a retry): back off,
            # so a broken Initializer cannot spin in a hot loop of restarts.
            self.start_failures += 1
            delay = min(_MAX_START_BACKOFF, 0.1 * 2**self.start_failures)
            self.start_blocked_until = self.clock.monotonic() + delay
        self._dispatch()
        self._check_drained()

    def _drop_free_slots(self, instance: Instance) -> None:
        self.starting_free = [s for s in self.starting_free if s.instance is not instance]
        self.idle = [s for s in self.idle if s.instance is not instance]
        self.spare = [s for s in self.spare if s.instance is not instance]

    def _stop_instance(self, instance: Instance, reason: str, detail: str = "") -> None:
        self._drop_free_slots(instance)
        instance.stop(reason, detail)

    def restart_for_stop(self, task: ActorRef, attempt: Attempt) -> None:
        """A Running task was stopped: cut its attempt short and replace its instance.

        A restart already under way absorbs the stop; an instance already gone answers
        it at once.
        """
        instance = attempt.slot.instance
        if self.instances.get(instance.instance_id) is not instance:
            detail = f"instance {instance.instance_id} was already gone ({instance.stop_detail})"
            task.send(TaskActor.instance_replaced, detail)
            return
        self.restarts.setdefault(instance, []).append(task)
        if instance.state is STOPPING:  # on its way out already: this stop waits for it
            if attempt.slot.attempt is attempt:
                instance.interrupt(attempt.slot, "stop")
            return
        self._restart(instance, "stop", f"restart: task {task.name} was stopped", attempt.slot)

    def _restart(self, instance: Instance, reason: str, detail: str, cause: Slot) -> None:
        """Cut every attempt on ``instance`` short, run PreStop, and replace it."""
        for slot in instance.slots:
            attempt = slot.attempt
            if attempt is not None and not instance.withdraw(attempt):
                instance.interrupt(slot, reason if slot is cause else "restart")
            else:  # it never started here: its task runs elsewhere
                slot.attempt = None
                self._void(slot)
        instance.replace = True
        self._stop_instance(instance, reason, detail)
        self._dispatch()  # voided tasks may go to other instances now

    def _on_instance_crashed(self, msg: InstanceCrashed) -> None:
        instance = msg.instance
        if self.instances.get(instance.instance_id) is not instance:
            return
        if msg.protocol:
            self.metrics.protocol_errors += 1
        instance.hook_running = None
        instance.note("crashed", msg.detail, warn=True)
        self.metrics.instance_stops["crash"] += 1
        self._gone(instance, f"instance {instance.instance_id} crashed: {msg.detail}")
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
            self._destroyed(instance, msg)
        elif self.shutting_down:
            self._stop_instance(instance, "close")
        else:
            self._frozen(instance)
        if self.shutting_down:
            self._check_shutdown()

    def _frozen(self, instance: Instance) -> None:
        if instance.state is not READY or instance.in_flight:
            return
        instance.frozen()
        instance.state = FROZEN
        instance.note("frozen")
        self.idle[:0] = [s for s in instance.slots if s.reserved_by is None]  # used last
        self._dispatch()

    def _destroyed(self, instance: Instance, pre_stop: HookDone) -> None:
        """PreStop is over (it ran, failed, overran, or there is none): the instance goes."""
        instance.destroy()
        still_running = instance.still_running()
        if still_running and pre_stop.error is not None:
            # It overran pre_stop_timeout (a thread ignoring its stop flag): counted and
            # listed by rt.instances() until it ends, and replaced like any other.
            self._abandon(instance, f"still running after {instance.stop_detail}")
            after = " and abandoned: its code is still running"
        elif still_running:
            # No PreStop to wait for, but its code has not returned yet: it gets up to
            # pre_stop_timeout before it counts as abandoned.
            deadline = self.clock.monotonic() + self.config.pre_stop_timeout
            self.retiring[instance.instance_id] = (instance, deadline)
            instance.note("retiring", "waiting for its code to return")
            after = "; its code has not returned yet (stop_requested is set)"
        else:
            instance.note("stopped", instance.stop_detail)
            self.metrics.instance_stops[instance.stop_reason] += 1
            after = ""
        self._gone(instance, _what_happened(instance, pre_stop) + after)

    def _gone(self, instance: Instance, detail: str) -> None:
        """The instance is no more: settle everything still tied to it, replace it if due."""
        instance.state = STOPPED
        self.instances.pop(instance.instance_id, None)
        self._drop_free_slots(instance)
        for slot in instance.slots:
            attempt = slot.attempt
            ran = attempt is not None and not instance.withdraw(attempt)
            if ran:
                instance.interrupt(slot, "restart")  # reported now, whatever the kind does
            slot.attempt = None
            self._void(slot, requeue=not ran)
        instance.in_flight = 0
        replacement = None
        if (
            (instance.replace or instance in self.restarts)
            and not self.draining
            and len(self.instances) < self.config.max_instances
        ):
            replacement = self._start_instance()  # the restart: a fresh instance, Initializer
        tasks = self.restarts.pop(instance, [])
        if tasks:
            if replacement is not None:
                detail += f"; {replacement.instance_id} starts in its place"
            for task in tasks:
                if task.is_alive:
                    task.send(TaskActor.instance_replaced, detail)
        if not self.draining:
            self._ensure_min()
        self._dispatch()
        self._check_drained()

    def _abandon(self, instance: Instance, detail: str) -> None:
        instance.abandoned = True
        instance.note("abandoned", detail, warn=True)
        self.metrics.instance_stops["abandoned"] += 1
        self.retiring[instance.instance_id] = (instance, float("inf"))

    def _ensure_min(self) -> None:
        alive = sum(1 for i in self.instances.values() if i.state is not STOPPING)
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
            if instance.hook_running is not None or instance.state not in (READY, FROZEN):
                continue
            idle_for = now - instance.last_used
            if idle_for >= config.idle_timeout and self._above_min():
                self._stop_instance(instance, "idle", f"idle for {idle_for:.1f} s")
            elif instance.state is READY and idle_for >= config.freeze_after and not self.draining:
                self._drop_free_slots(instance)
                instance.freeze()
        if not self.draining:
            self._ensure_min()
            self._rebalance()
        self.last_sweep = now
        if self.retiring:
            self._check_retiring(now)
        self._dispatch()

    def _rebalance(self) -> None:
        """Take back attempts stuck behind a long one in a busy instance's inbox (a kind
        with ``prefetch``) while another instance has room for them.

        An attempt still unclaimed that was handed over before the last sweep has waited a
        whole tick: its thread is busy with something slow. It goes back to the front of
        the queue, as in a restart (it never started: its task stays Dequeued), so a
        burst's spare attempts wait at most a tick or two behind a slow one.
        """
        concurrency = self.config.concurrency
        room = 0  # free slots (spare ones too) of instances not running all they can
        for instance in self.instances.values():
            if (
                instance.in_flight < concurrency
                and instance.hook_running is None
                and instance.state in _ACCEPTING
            ):
                room += len(instance.slots) - instance.in_flight
        if self._can_start():
            room += (self.config.max_instances - len(self.instances)) * concurrency
        if not room:
            return
        stale = self.last_sweep
        waiting = [
            slot
            for instance in self.instances.values()
            if instance.in_flight > concurrency and instance.state is BUSY
            for slot in instance.slots
            if (attempt := slot.attempt) is not None
            and attempt.claimed_at is None
            and attempt.started <= stale
        ]
        waiting.sort(key=_last_handed_over_first)
        self._take_back(waiting[:room])  # the last handed over (they would wait longest)

    def _enforce_timeouts(self, instance: Instance, now: float) -> None:
        for slot in instance.slots:
            attempt = slot.attempt
            if attempt is None or attempt.deadline > now or attempt.done:
                continue
            if instance.restart_on_timeout and instance.state is not STOPPING:
                detail = f"restart: an attempt of {attempt.task.name} ran past the timeout"
                self._restart(instance, "timeout", detail, slot)
                return
            instance.interrupt(slot, "timeout")

    def _on_code_returned(self, msg: CodeReturned) -> None:
        instance = msg.instance
        if self.retiring.pop(instance.instance_id, None) is None:
            return
        if instance.abandoned:
            instance.note("ended", "the abandoned instance finally stopped")
        else:
            instance.note("stopped", instance.stop_detail)
            self.metrics.instance_stops[instance.stop_reason] += 1

    def _check_retiring(self, now: float) -> None:
        for instance, deadline in list(self.retiring.values()):
            if not instance.still_running():
                self._on_code_returned(CodeReturned(instance))
            elif now >= deadline and not instance.abandoned:
                timeout = self.config.pre_stop_timeout
                self._abandon(instance, f"still running {timeout} s after {instance.stop_detail}")

    def _above_min(self) -> bool:
        alive = sum(1 for i in self.instances.values() if i.state is not STOPPING)
        return alive > self.config.min_instances or self.draining

    # draining, shutdown, introspection -------------------------------------------------

    def _on_drain(self, msg: Drain) -> None:
        self._pull_inbox()
        self.draining = True
        if msg.unregister:
            self.unregistered = True
            reason = self._unregistered_reason()
            held = [task for _, _, task in self.delayed]
            self.delayed.clear()
            for task in [*(task for task, _ in self.queue), *held]:
                if task.is_alive:
                    task.send(TaskActor.invalidate, reason)
            # what is still alive is a retry owed (or a task that could not be told yet)
            self.queue = deque(item for item in self.queue if item[0].is_alive)
            for task, slot in list(self.reserved.items()):
                if slot.instance.state is STARTING:
                    self._release(slot)
                    if task.is_alive:
                        task.send(TaskActor.invalidate, reason)
        else:
            self._take_back_waiting()  # closing: what has not started does not start now
        self.drain_replies.append(self.defer_reply())
        self._check_drained()

    def _take_back_waiting(self) -> None:
        """Attempts handed to an instance that starts them on its own (a thread's spare
        slots) and not started yet go back to the queue: they stay Dequeued."""
        self._take_back(
            [
                slot
                for instance in self.instances.values()
                for slot in instance.slots
                if (attempt := slot.attempt) is not None and attempt.claimed_at is None
            ]
        )

    def _take_back(self, slots: list[Slot]) -> None:
        """Withdraw the unstarted attempts in ``slots`` from their instances; their tasks go
        back to the front of the queue in the order they were handed over (still Dequeued:
        no event), and the slots are free."""
        slots.sort(key=_last_handed_over_first)
        for slot in slots:  # the last handed over first: each goes in front of the last
            attempt = slot.attempt
            if attempt is None or not slot.instance.withdraw(attempt):
                continue  # it started meanwhile: it runs where it is
            task = slot.reserved_by
            slot.attempt = None
            self._release(slot)
            if task is not None and task.is_alive:
                self.queue.appendleft((task, None))

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
        for instance in list(self.instances.values()):
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
            if instance.state in (READY, BUSY, FROZEN) and instance.hook_running is None:
                detail = "unregistered" if self.unregistered else "runtime closing"
                self._stop_instance(instance, "close", detail)
        self._check_shutdown()

    def _check_shutdown(self) -> None:
        if any(i.state is not STARTING for i in self.instances.values()):
            return
        for instance in list(self.instances.values()):  # Initializers still running: end them
            instance.note("stopped", "closed while its Initializer ran")
            self.metrics.instance_stops["close"] += 1
            instance.destroy()
        self.instances.clear()
        for reply in self.shutdown_replies:
            reply.send(None)
        self.shutdown_replies.clear()
        if self.unregistered and not self.retired:
            # Not stop_self(): a Sweep or an instance's last report may be on its way. The
            # supervisor stops sending Sweeps, then tells the pool to go, behind them.
            self.retired = True
            parent = self.parent
            assert parent is not None
            parent.tell(PoolRetired(self.ref))

    def _on_go(self, _: Go) -> None:
        self.stop_self()

    def _on_describe(self, _: DescribeInstances) -> list[Any]:
        gone = [instance.info() for instance, _ in self.retiring.values()]
        return [instance.info() for instance in self.instances.values()] + gone

    def _on_running(self, _: Running) -> int:
        return sum(1 for i in self.instances.values() for s in i.slots if s.attempt is not None)

    def _unregistered_reason(self) -> str:
        return f"function {self.spec.name!r} was unregistered before the task ran"


def _last_handed_over_first(slot: Slot) -> float:
    """Sort key of slots holding attempts: the most recently handed over first."""
    attempt = slot.attempt
    return -attempt.started if attempt is not None else 0.0


def _what_happened(instance: Instance, pre_stop: HookDone) -> str:
    """What the Stopped event of a task stopped on ``instance`` says, truthfully."""
    gone = f"instance {instance.instance_id} was destroyed"
    if pre_stop.seconds is None and pre_stop.error is None:
        return f"no PreStop configured; {gone}"
    if pre_stop.error is None:
        return f"PreStop ran ({pre_stop.seconds:.3f} s); {gone}"
    return f"PreStop did not finish ({pre_stop.error.type}: {pre_stop.error.message}); {gone}"


_HANDLERS: dict[type, Callable[[InstancePoolActor, Any], Any]] = {
    Wake: InstancePoolActor._on_wake,
    InstanceStarted: InstancePoolActor._on_instance_started,
    InstanceCrashed: InstancePoolActor._on_instance_crashed,
    HookDone: InstancePoolActor._on_hook_done,
    CodeReturned: InstancePoolActor._on_code_returned,
    Sweep: InstancePoolActor._on_sweep,
    Drain: InstancePoolActor._on_drain,
    Interrupt: InstancePoolActor._on_interrupt,
    Shutdown: InstancePoolActor._on_shutdown,
    DescribeInstances: InstancePoolActor._on_describe,
    Go: InstancePoolActor._on_go,
    Running: InstancePoolActor._on_running,
}

# The pool and the task actor call each other's methods: one of the two imports has to
# come after the class it needs is defined.
from .task_actor import TaskActor  # noqa: E402
