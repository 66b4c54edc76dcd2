"""The actor base class: a synchronous ``receive`` and lifecycle hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mypy_extensions import mypyc_attr

from ._supervision import SupervisorStrategy

if TYPE_CHECKING:
    from ._clock import Clock
    from ._ref import ActorRef, Reply
    from ._scheduler import TimerHandle
    from ._system import ActorSystem


# Users (and stint's own interpreted modules) subclass it: the compiled build must allow that.
@mypyc_attr(allow_interpreted_subclasses=True)
class Actor:
    """Subclass and implement :meth:`receive`; the kernel calls it one message at a time.

    ``receive`` must not block or await: work that waits runs as an asyncio task
    whose outcome comes back to the actor as a message. For an ``ask`` the value
    ``receive`` returns is the reply, unless it called :meth:`defer_reply`.
    """

    __slots__ = ("ref",)

    #: How this actor supervises its children.
    supervisor_strategy: ClassVar[SupervisorStrategy] = SupervisorStrategy()

    ref: ActorRef

    def on_start(self) -> None:
        """Called once before the first message (and again on a fresh actor after a restart)."""

    def receive(self, message: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement receive(message)")

    def on_stop(self) -> None:
        """Called once when the actor stops; its children are already stopped."""

    def on_failure(self, exc: BaseException, message: Any) -> None:
        """Called when ``receive`` raised, before the parent's directive is applied."""

    # helpers for the actor's own use -----------------------------------------

    @property
    def system(self) -> ActorSystem:
        return self.ref._system

    @property
    def clock(self) -> Clock:
        return self.ref._system.clock

    @property
    def parent(self) -> ActorRef | None:
        return self.ref._parent

    def spawn(self, factory: ActorFactory, *args: Any, name: str | None = None) -> ActorRef:
        """Start a child actor, ``factory(*args)``, supervised by this one."""
        return self.ref._system.spawn(factory, *args, name=name, parent=self.ref)

    def stop_self(self) -> None:
        """Stop once the current message is handled (no extra message needed)."""
        self.ref._stop_requested = True

    def defer_reply(self) -> Reply:
        """Take the current ask's reply to answer later; pending ones fail if the actor stops."""
        return self.ref._system._take_reply(self.ref)

    def schedule(self, delay: float, message: Any) -> TimerHandle:
        """Tell this actor ``message`` after ``delay`` seconds on the system clock."""
        return self.ref._system.scheduler.call_later(delay, self.ref.tell, message)


ActorFactory = Callable[..., Actor]
