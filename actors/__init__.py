"""actors: a small asyncio actor kernel.

Actors are objects with a synchronous ``receive``; the kernel feeds them messages
from one run queue drained by the event loop. Supervision is data (a directive,
a decider, a restart window), time comes from an injectable clock, and timers
share one heap. This package knows nothing of tasks or functions.
"""

from ._actor import Actor, ActorFactory
from ._clock import Clock, ManualClock, SystemClock
from ._errors import ActorDeadError, ActorError, AskTimeoutError, SystemClosedError
from ._ref import ActorRef, Reply
from ._scheduler import Scheduler, TimerHandle
from ._supervision import Decider, Directive, RestartWindow, SupervisorStrategy
from ._system import ActorSystem, Failure

__all__ = [
    "Actor",
    "ActorDeadError",
    "ActorError",
    "ActorFactory",
    "ActorRef",
    "ActorSystem",
    "AskTimeoutError",
    "Clock",
    "Decider",
    "Directive",
    "Failure",
    "ManualClock",
    "Reply",
    "RestartWindow",
    "Scheduler",
    "SupervisorStrategy",
    "SystemClock",
    "SystemClosedError",
    "TimerHandle",
]
