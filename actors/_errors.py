"""The kernel's errors: one base class, leaves named for the condition."""

from __future__ import annotations


class ActorError(Exception):
    """Base class of every error the actor kernel raises."""


class ActorDeadError(ActorError):
    """Raised by ``ask`` (and pending replies) when the actor is stopped or stops first."""


class AskTimeoutError(ActorError, TimeoutError):
    """Raised by ``ask`` when no reply came within its ``timeout``."""


class SystemClosedError(ActorError):
    """Raised by ``spawn`` once the actor system is closed."""
