"""stint: an embeddable asyncio actor-model runtime for stateful asynchronous function invocations.

    from runtime import Runtime, TaskState

    async with Runtime() as rt:
        rt.register("resize", resize, max_retries=3)
        task_id = await rt.invoke("resize", {"url": "..."})
        record = await rt.wait(task_id)

Names are imported on first use (PEP 562), so a process that needs only a piece
of stint — a ``kind="process"`` worker — does not pay for all of it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    NonRetryableError,
    PayloadError,
    PayloadTooLargeError,
    QueueFullError,
    RuntimeClosedError,
    StintError,
    StoreError,
    TaskExistsError,
    TaskFinishedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
    WrongLoopError,
    WrongThreadError,
)

__version__ = "0.1.0"

_LAZY = {
    "Runtime": ".runtime",
    "TaskState": ".states",
    "InstanceState": ".states",
    "TRANSITIONS": ".states",
    "TaskRecord": ".record",
    "TaskEvent": ".record",
    "ErrorInfo": ".record",
    "FunctionConfig": ".config",
    "FunctionSpec": ".config",
    "InstanceContext": ".context",
    "TaskContext": ".context",
    "InstanceInfo": ".instances",
    "InstanceEvent": ".instances",
    "TaskList": ".listing",
    "NodeInfo": ".nodes",
    "RuntimeClient": ".client",
    "RuntimeThread": ".client",
    "start_in_thread": ".client",
    "ManualClock": "actors",
    "SystemClock": "actors",
    "codec": ".codec",
}

if TYPE_CHECKING:
    from actors import ManualClock, SystemClock

    from . import codec
    from .client import RuntimeClient, RuntimeThread, start_in_thread
    from .config import FunctionConfig, FunctionSpec
    from .context import InstanceContext, TaskContext
    from .instances import InstanceEvent, InstanceInfo
    from .listing import TaskList
    from .nodes import NodeInfo
    from .record import ErrorInfo, TaskEvent, TaskRecord
    from .runtime import Runtime
    from .states import TRANSITIONS, InstanceState, TaskState


def _compiled() -> bool:
    """True when this stint's hot path runs compiled by mypyc (built with STINT_COMPILE=1).

    Read off the task actor's module, without importing it: an extension module there
    means the ``STINT_COMPILE=1`` build (which compiles the hot modules together).
    """
    spec = importlib.util.find_spec(".task_actor", __name__)
    origin = spec.origin if spec is not None else None
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def __getattr__(name: str) -> Any:
    if name == "compiled":
        return _compiled()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    if name == "codec":
        value: Any = importlib.import_module(module, __name__)
    else:
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "TRANSITIONS",
    "ConfigError",
    "ErrorInfo",
    "FunctionConfig",
    "FunctionNotFoundError",
    "FunctionSpec",
    "InstanceContext",
    "InstanceEvent",
    "InstanceInfo",
    "InstanceState",
    "InvalidTaskIdError",
    "ManualClock",
    "NodeInfo",
    "NonRetryableError",
    "PayloadError",
    "PayloadTooLargeError",
    "QueueFullError",
    "Runtime",
    "RuntimeClient",
    "RuntimeClosedError",
    "RuntimeThread",
    "StintError",
    "StoreError",
    "SystemClock",
    "TaskContext",
    "TaskEvent",
    "TaskExistsError",
    "TaskFinishedError",
    "TaskList",
    "TaskNotFinishedError",
    "TaskNotFoundError",
    "TaskRecord",
    "TaskState",
    "WaitTimeoutError",
    "WrongLoopError",
    "WrongThreadError",
    "codec",
    "compiled",
    "errors",
    "start_in_thread",
]
