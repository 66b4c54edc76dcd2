"""The actor system: one run queue drained by the event loop, supervision, dead letters."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Any

from ._actor import Actor, ActorFactory
from ._clock import Clock, SystemClock
from ._errors import ActorDeadError, SystemClosedError
from ._ref import NO_REPLY, ActorRef, Ask, Call, Reply
from ._scheduler import Scheduler
from ._supervision import Directive, RestartWindow, SupervisorStrategy

logger = logging.getLogger("actors")


class Failure:
    """One exception raised by a ``receive``, and what supervision did about it."""

    __slots__ = ("actor", "directive", "error", "message")

    def __init__(
        self, actor: str, error: BaseException, message: Any, directive: Directive
    ) -> None:
        self.actor = actor
        self.error = error
        self.message = message
        self.directive = directive

    def __repr__(self) -> str:
        return f"<Failure {self.actor} {self.directive.value}: {self.error!r}>"


class ActorSystem:
    """Runs actors on the current event loop.

    Messages for all actors wait in one FIFO run queue, drained by a callback the
    loop schedules with ``call_soon`` (at most ``batch`` messages per turn, so I/O
    is never starved). An actor's mailbox is its share of that queue: messages
    reach it one at a time, in arrival order, and a short-lived actor costs two
    small objects, not a coroutine or a queue of its own.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        batch: int = 2048,
        root_strategy: SupervisorStrategy | None = None,
        max_recorded_failures: int = 100,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.scheduler = Scheduler(self.loop, self.clock)
        #: Messages that reached a stopped actor (asks among them were failed).
        self.dead_letters = 0
        #: Every failure of a ``receive`` and the directive applied, newest last (bounded).
        self.failures: deque[Failure] = deque(maxlen=max_recorded_failures)
        self.failure_count = 0
        self._root_strategy = root_strategy or SupervisorStrategy()
        self._batch = batch
        self._queue: deque[tuple[ActorRef, Any]] = deque()
        self._stops: deque[ActorRef] = deque()
        self._scheduled = False
        self._closed = False
        self._roots: dict[ActorRef, None] = {}  # ordered, keyed by identity
        self._live = 0
        self._names = itertools.count(1)
        self._reply: Reply = NO_REPLY

    @property
    def live_actors(self) -> int:
        """Actors started and not yet stopped."""
        return self._live

    @property
    def pending_messages(self) -> int:
        return len(self._queue)

    def spawn(
        self,
        factory: ActorFactory,
        *args: Any,
        name: str | None = None,
        parent: ActorRef | None = None,
    ) -> ActorRef:
        """Create an actor with ``factory(*args)`` and start it (a restart calls it again).

        ``on_start`` runs before this returns; if it raises, the error reaches the
        caller and nothing is registered.
        """
        if self._closed:
            raise SystemClosedError("the actor system is closed: create a new one to spawn actors")
        ref = ActorRef(self, factory, args, name or f"actor-{next(self._names)}", parent)
        self._start(ref)
        if parent is None:
            self._roots[ref] = None
        else:
            children = parent._children
            if children is None:
                children = parent._children = {}
            children[ref] = None
        self._live += 1
        return ref

    def close(self) -> None:
        """Stop every actor (children first), fail pending asks, drop all timers."""
        if self._closed:
            return
        self._closed = True
        for ref in list(self._roots):
            self._terminate(ref)
        self.scheduler.close()
        while self._queue:
            _, message = self._queue.popleft()
            self._undeliverable(message)
        self._stops.clear()

    # the run queue -----------------------------------------------------------

    def _arm(self) -> None:
        self._scheduled = True
        self.loop.call_soon(self._run)

    def _stop_soon(self, ref: ActorRef) -> None:
        self._stops.append(ref)
        if not self._scheduled:
            self._arm()

    def run_queued(self) -> None:
        """Deliver up to one batch of queued messages now, from outside any ``receive``.

        For code that just produced messages and would otherwise wait a loop turn
        for their effect (a worker that finished an attempt and wants its next one).
        The scheduled drain still runs; it finds less to do.
        """
        if self._queue or self._stops:
            self._drain()

    def _run(self) -> None:
        self._drain()
        if (self._queue or self._stops) and not self._closed:
            self.loop.call_soon(self._run)
        else:
            self._scheduled = False

    def _drain(self) -> None:
        queue = self._queue
        stops = self._stops
        budget = self._batch
        deliver = self._deliver
        while budget > 0:
            if stops:
                self._terminate(stops.popleft())
                continue
            if not queue:
                break
            ref, message = queue.popleft()
            budget -= 1
            ref._queued -= 1
            if ref._alive:
                deliver(ref, message)
            else:
                self._undeliverable(message)

    def _deliver(self, ref: ActorRef, message: Any) -> None:
        if type(message) is Call:
            self._call(ref, message.fn, message.args)
            return
        actor = ref._actor
        assert actor is not None
        if type(message) is Ask:
            reply = message.reply
            message = message.message
        else:
            reply = NO_REPLY
        self._reply = reply
        ref._busy = True
        try:
            result = actor.receive(message)
        except Exception as exc:
            ref._busy = False
            if self._reply is reply:
                reply.fail(exc)  # the asker learns what went wrong
            self._reply = NO_REPLY
            self._supervise(ref, exc, message)
        else:
            ref._busy = False
            if self._reply is reply and reply is not NO_REPLY:
                reply.send(result)
            self._reply = NO_REPLY
        if ref._stop_requested and ref._alive:
            self._terminate(ref)

    def _call(self, ref: ActorRef, fn: Any, args: tuple[Any, ...]) -> None:
        """Run ``fn(actor, *args)`` as one message: no reply, supervised, stop honoured.

        It may run inside another actor's receive (a direct :meth:`ActorRef.send`),
        so the current ask's reply is kept aside and put back.
        """
        actor = ref._actor
        assert actor is not None
        outer = self._reply
        self._reply = NO_REPLY
        ref._busy = True
        try:
            fn(actor, *args)
        except Exception as exc:
            ref._busy = False
            self._supervise(ref, exc, Call(fn, args))
        else:
            ref._busy = False
        self._reply = outer
        if ref._stop_requested and ref._alive:
            self._terminate(ref)

    def _take_reply(self, ref: ActorRef) -> Reply:
        reply = self._reply
        self._reply = NO_REPLY
        return ref._defer(reply)

    def _undeliverable(self, message: Any) -> None:
        self.dead_letters += 1
        if type(message) is Ask:
            message.reply.fail(ActorDeadError("the actor stopped before it handled this ask"))

    # lifecycle and supervision ---------------------------------------------

    def _start(self, ref: ActorRef) -> None:
        actor = ref._factory(*ref._args)
        if not isinstance(actor, Actor):
            raise TypeError(f"an actor factory must return an Actor, got {type(actor).__name__}")
        actor.ref = ref
        ref._actor = actor
        actor.on_start()

    def _terminate(self, ref: ActorRef) -> None:
        if not ref._alive:
            return
        ref._alive = False
        if ref._children:
            self._stop_children(ref)
        actor = ref._actor
        if actor is not None:
            try:
                actor.on_stop()
            except Exception:
                logger.exception("on_stop of %s raised", ref.name)
        if ref._deferred:
            ref._fail_deferred()
        parent = ref._parent
        if parent is None:
            self._roots.pop(ref, None)
        else:
            children = parent._children
            if children is not None:
                children.pop(ref, None)
            ref._parent = None
        ref._actor = None  # break the ref <-> actor cycle at once
        self._live -= 1

    def _stop_children(self, ref: ActorRef) -> None:
        if ref._children:
            for child in list(ref._children):
                self._terminate(child)

    def _supervise(self, ref: ActorRef, exc: BaseException, message: Any) -> None:
        actor = ref._actor
        try:
            if actor is not None:
                actor.on_failure(exc, message)
        except Exception:
            logger.exception("on_failure of %s raised", ref.name)
        parent = ref._parent
        if ref._window is None:
            ref._window = RestartWindow()
        directive = self._strategy_of(parent).decide(exc, ref._window, self.clock)
        if directive is Directive.ESCALATE and parent is None:
            directive = Directive.STOP  # nobody above to escalate to
        self._record_failure(ref, exc, message, directive)
        if directive is Directive.RESTART:
            self._restart(ref, message)
        elif directive is Directive.ESCALATE:
            assert parent is not None
            self._supervise(parent, exc, message)
        elif directive is Directive.STOP:
            self._terminate(ref)

    def _strategy_of(self, parent: ActorRef | None) -> SupervisorStrategy:
        if parent is None or parent._actor is None:
            return self._root_strategy
        return parent._actor.supervisor_strategy

    def _restart(self, ref: ActorRef, message: Any) -> None:
        # A restart starts from a clean slate: the children of the failed
        # incarnation go with it; the mailbox (the run queue) is untouched.
        self._stop_children(ref)
        try:
            self._start(ref)
        except Exception as start_exc:
            self._record_failure(ref, start_exc, message, Directive.STOP)
            self._terminate(ref)

    def _record_failure(
        self, ref: ActorRef, exc: BaseException, message: Any, directive: Directive
    ) -> None:
        self.failure_count += 1
        self.failures.append(Failure(ref.name, exc, message, directive))
        logger.error(
            "%s failed on %s (%s): %r",
            ref.name,
            type(message).__name__,
            directive.value,
            exc,
            exc_info=exc,
        )
