"""Actor references: what callers hold. The actor object itself stays private."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ActorDeadError, AskTimeoutError

if TYPE_CHECKING:
    from ._actor import Actor, ActorFactory
    from ._supervision import RestartWindow
    from ._system import ActorSystem


class Ask:
    """The envelope of an ``ask``: the message and where its reply goes."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: Reply) -> None:
        self.message = message
        self.reply = reply


class Reply:
    """The answer channel of one ``ask``; an actor may keep it and answer later."""

    __slots__ = ("_future", "_owner")

    def __init__(self, future: asyncio.Future[Any] | None) -> None:
        self._future = future
        self._owner: ActorRef | None = None

    @property
    def done(self) -> bool:
        return self._future is None or self._future.done()

    def send(self, value: Any) -> None:
        """Answer the asker (a no-op if it gave up waiting)."""
        fut = self._future
        if fut is not None and not fut.done():
            fut.set_result(value)
        self._release()

    def fail(self, exc: BaseException) -> None:
        """Raise ``exc`` in the asker (a no-op if it gave up waiting)."""
        fut = self._future
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        self._release()

    def _release(self) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            if owner._deferred is not None:
                owner._deferred.discard(self)


NO_REPLY = Reply(None)
"""The reply of a ``tell``: answering it does nothing."""


class Call:
    """The envelope of a :meth:`ActorRef.send` that had to wait its turn in the run queue."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return f"<Call {getattr(self.fn, '__qualname__', self.fn)}>"


class ActorRef:
    """A handle on an actor: ``tell`` and ``ask`` it, ``stop`` it, nothing more.

    The reference also carries the actor's kernel bookkeeping (parent, children,
    restart window) so that a short-lived actor costs two small objects.
    """

    __slots__ = (
        "_actor",
        "_alive",
        "_args",
        "_busy",
        "_children",
        "_deferred",
        "_factory",
        "_parent",
        "_queued",
        "_stop_requested",
        "_system",
        "_window",
        "name",
    )

    def __init__(
        self,
        system: ActorSystem,
        factory: ActorFactory,
        args: tuple[Any, ...],
        name: str,
        parent: ActorRef | None,
    ) -> None:
        self.name = name
        self._args = args
        self._system = system
        self._factory = factory
        self._actor: Actor | None = None
        self._alive = True
        self._stop_requested = False
        self._parent = parent
        self._children: dict[ActorRef, None] | None = None  # ordered, keyed by identity
        self._window: RestartWindow | None = None
        self._deferred: set[Reply] | None = None
        self._queued = 0  # messages for it waiting in the run queue
        self._busy = False  # inside one of its own receives or calls

    def __repr__(self) -> str:
        state = "alive" if self._alive else "stopped"
        return f"<ActorRef {self.name} {state}>"

    @property
    def is_alive(self) -> bool:
        return self._alive

    def tell(self, message: Any) -> None:
        """Deliver ``message`` in arrival order; never blocks, never raises.

        A message to a stopped actor is counted as a dead letter.
        """
        system = self._system
        if self._alive:
            system._queue.append((self, message))
            self._queued += 1
            if not system._scheduled:
                system._arm()
        else:
            system.dead_letters += 1

    def send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(actor, *args)`` as the actor's next message; never blocks, never raises.

        A direct call, without a hop through the run queue, when that cannot be told
        apart from a queued message: the actor is idle (not inside a receive or call
        of its own) and nothing is queued for it. Otherwise it waits its turn like a
        ``tell``, so the actor still sees everything one at a time, in arrival order,
        and a failure goes to its supervisor either way. For hand-offs on a hot path
        between actors that trust each other: ``fn`` is one of the actor's methods.
        """
        system = self._system
        if not self._alive:
            system.dead_letters += 1
        elif self._queued or self._busy or self._stop_requested or system._closed:
            system._queue.append((self, Call(fn, args)))
            self._queued += 1
            if not system._scheduled:
                system._arm()
        else:
            system._call(self, fn, args)

    async def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Send ``message`` and wait for the reply (the value ``receive`` returns).

        Raises :class:`ActorDeadError` if the actor is or gets stopped before it
        answers, :class:`AskTimeoutError` after ``timeout`` seconds, and whatever
        ``receive`` raised if it failed on this message.
        """
        if not self._alive:
            raise ActorDeadError(
                f"{self.name} is stopped: it cannot answer {type(message).__name__}"
            )
        system = self._system
        future: asyncio.Future[Any] = system.loop.create_future()
        self.tell(Ask(message, Reply(future)))
        if timeout is None:
            return await future
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise AskTimeoutError(
                f"{self.name} did not answer {type(message).__name__} within {timeout} s"
            ) from None

    def stop(self) -> None:
        """Ask the actor to stop, ahead of its pending messages (which become dead letters)."""
        if self._alive and not self._stop_requested:
            self._stop_requested = True
            self._system._stop_soon(self)

    # kernel internals -------------------------------------------------------

    def _defer(self, reply: Reply) -> Reply:
        if reply is NO_REPLY:
            return reply
        if self._deferred is None:
            self._deferred = set()
        self._deferred.add(reply)
        reply._owner = self
        return reply

    def _fail_deferred(self) -> None:
        if self._deferred:
            pending, self._deferred = self._deferred, None
            for reply in pending:
                reply._owner = None
                reply.fail(ActorDeadError(f"{self.name} stopped before it answered"))
