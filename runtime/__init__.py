"""stint: an embeddable asyncio actor-model runtime for stateful asynchronous function invocations.

from runtime import Runtime, TaskState

async with Runtime() as rt:
    rt.register("resize", resize, max_retries=3)
    task_id = await rt.invoke("resize", {"url": "..."})
    record = await rt.wait(task_id)
"""

from actors import ManualClock, SystemClock

from . import errors
from .config import FunctionConfig, FunctionSpec
from .context import InstanceContext, TaskContext
from .errors import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    NonRetryableError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    StintError,
    TaskExistsError,
    TaskFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from .instances import InstanceEvent, InstanceInfo
from .record import ErrorInfo, TaskEvent, TaskRecord
from .runtime import Runtime
from .states import TRANSITIONS, InstanceState, TaskState

__version__ = "0.1.0"

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
    "NonRetryableError",
    "PayloadError",
    "QueueFullError",
    "Runtime",
    "RuntimeClosedError",
    "StintError",
    "SystemClock",
    "TaskContext",
    "TaskEvent",
    "TaskExistsError",
    "TaskFinishedError",
    "TaskNotFoundError",
    "TaskRecord",
    "TaskState",
    "WaitTimeoutError",
    "errors",
]
