"""Instance kinds: how a function's handler is hosted. One module per kind."""

from __future__ import annotations

from .async_kind import AsyncInstance
from .base import Attempt, Instance, InstanceEvent, InstanceInfo, Slot

KINDS: dict[str, type[Instance]] = {"async": AsyncInstance}

__all__ = ["KINDS", "AsyncInstance", "Attempt", "Instance", "InstanceEvent", "InstanceInfo", "Slot"]
