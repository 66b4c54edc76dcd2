"""Instance kinds: how a function's handler is hosted. One module per kind."""

from __future__ import annotations

from .async_kind import AsyncInstance
from .base import Attempt, Instance, InstanceEvent, InstanceInfo, Slot
from .process_kind import InstanceCrashedError, ProcessInstance
from .thread_kind import ThreadInstance

KINDS: dict[str, type[Instance]] = {
    "async": AsyncInstance,
    "thread": ThreadInstance,
    "process": ProcessInstance,
}

__all__ = [
    "KINDS",
    "AsyncInstance",
    "Attempt",
    "Instance",
    "InstanceCrashedError",
    "InstanceEvent",
    "InstanceInfo",
    "ProcessInstance",
    "Slot",
    "ThreadInstance",
]
