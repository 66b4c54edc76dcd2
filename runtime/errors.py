"""stint's errors: one hierarchy under :class:`StintError`, each saying what to do next."""

from __future__ import annotations


class StintError(Exception):
    """Base class of every error stint raises to its users."""


class ConfigError(StintError, ValueError):
    """Raised by ``register`` / ``function`` / ``Runtime(...)`` for a bad setting."""


class FunctionNotFoundError(StintError, LookupError):
    """Raised by ``invoke`` and ``instances`` for a name that is not registered."""


class PayloadError(StintError, ValueError):
    """Raised by ``invoke`` for a payload msgpack cannot encode or one over the size limit."""


class PayloadTooLargeError(PayloadError):
    """Raised by ``invoke`` for a payload over ``max_payload_bytes`` once encoded."""


class InvalidTaskIdError(StintError, ValueError):
    """Raised by ``invoke`` for a caller-given task id that breaks the id rules."""


class TaskExistsError(StintError):
    """Raised by ``invoke`` when a task with the caller-given id already exists."""


class TaskNotFoundError(StintError, LookupError):
    """Raised by ``get`` / ``wait`` / ``stop`` for an unknown (or retention-dropped) task id."""


class TaskFinishedError(StintError):
    """Raised by ``stop`` for a task that already Succeeded, Failed, Expired or is Invalid."""

    @classmethod
    def of(cls, task_id: str, status: str) -> TaskFinishedError:
        return cls(
            f"task {task_id} already ended as {status}; only tasks that have not finished "
            "can be stopped (read it with rt.get)"
        )


class TaskNotFinishedError(StintError):
    """Raised by ``rerun`` for a task that has not reached a terminal state yet."""


class WrongLoopError(StintError):
    """Raised when a runtime is called from an event loop other than the one it runs on."""


class WrongThreadError(StintError):
    """Raised by a blocking ``rt.client()`` call made on the runtime's own loop thread,
    where it would wait for itself forever."""


class QueueFullError(StintError):
    """Raised by ``invoke`` when the function already has ``max_queued`` tasks waiting."""


class RuntimeClosedError(StintError):
    """Raised by calls on a runtime that is not started, or is closing or closed."""


class StoreError(StintError):
    """Raised by ``start`` when the store cannot be used (locked, corrupt, newer schema),
    and by ``invoke`` when the record could not be written."""


class WaitTimeoutError(StintError, TimeoutError):
    """Raised by ``wait`` when the task is not terminal within ``timeout`` seconds."""


class IllegalTransitionError(StintError, AssertionError):
    """A state change the task lifecycle table forbids: always a bug in stint."""


class NonRetryableError(StintError):
    """Raise it (or a subclass) from a handler to fail the task at once, without retries."""


class AttemptTimeoutError(StintError, TimeoutError):
    """Recorded as a task's error when an attempt ran past the function's ``timeout``."""


class InstanceRestartedError(StintError):
    """Recorded for an attempt cut short because its instance was restarted or closed."""


class ResultEncodingError(StintError):
    """Recorded when a handler's return value cannot be encoded as msgpack."""


class InstanceStartError(StintError):
    """Recorded (as a task's Invalid reason) when an instance could not be created."""
