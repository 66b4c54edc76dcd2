"""Task records: everything stint knows about one task, as users read it."""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

from . import codec
from .states import NAME, TaskState

_ENQUEUED = NAME[TaskState.ENQUEUED]


class TaskEvent(NamedTuple):
    """One entry of a task's history: the state entered, when (epoch seconds), and why."""

    status: TaskState
    timestamp: float
    detail: str


class ErrorInfo(NamedTuple):
    """The error of a task's last failed attempt (or why it is Invalid)."""

    type: str
    message: str
    traceback: str


class TaskRecord:
    """One task: identity, payload, status, result or error, attempts and full history.

    Payload and result are kept msgpack-encoded (encoded once, by ``invoke`` and by
    the instance that ran the handler) and decoded when read; events are plain
    tuples until read. A store that retains many finished records packs them
    whole (``runtime.wire``), so they cost neither memory nor garbage collection.
    """

    __slots__ = (
        "_events",
        "_payload",
        "_result",
        "attempts",
        "created_at",
        "due_at",
        "ended_at",
        "error",
        "function",
        "instance_id",
        "retries",
        "started_at",
        "status",
        "task_id",
    )

    def __init__(
        self,
        task_id: str,
        function: str,
        payload: bytes,
        created_at: float,
        events: list[tuple[str, float, str]] | None = None,
        *,
        note: str = "accepted",
    ) -> None:
        self.task_id = task_id
        self.function = function
        self.status = TaskState.ENQUEUED
        self._payload = payload
        self._result: bytes | None = None
        self.error: ErrorInfo | None = None
        self.attempts = 0
        self.retries = 0
        self.created_at = created_at
        self.due_at: float | None = None  # a delayed task: not dequeued before (epoch s)
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.instance_id: str | None = None
        # (state name as a plain str, timestamp, detail): atomic values only, so the
        # garbage collector stops tracking each tuple after its first pass
        self._events: list[tuple[str, float, str]] = (
            [(_ENQUEUED, created_at, note)] if events is None else events
        )

    def __repr__(self) -> str:
        return f"<TaskRecord {self.task_id} {self.function} {self.status}>"

    @property
    def events(self) -> list[TaskEvent]:
        """The history, oldest first: one event per state entered."""
        state = TaskState
        return [TaskEvent(state(name), ts, detail) for name, ts, detail in self._events]

    def raw_events(self) -> list[tuple[str, float, str]]:
        """The events as stored: (state name, timestamp, detail)."""
        return self._events

    def load_raw_events(self, events: Any) -> None:
        self._events = [(NAME[TaskState(name)], ts, detail) for name, ts, detail in events]

    @property
    def payload(self) -> Any:
        return codec.decode(self._payload)

    @property
    def payload_bytes(self) -> bytes:
        return self._payload

    @property
    def result(self) -> Any:
        return None if self._result is None else codec.decode(self._result)

    @property
    def result_bytes(self) -> bytes | None:
        return self._result

    @result_bytes.setter
    def result_bytes(self, data: bytes | None) -> None:
        self._result = data

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def copy(self) -> TaskRecord:
        """A snapshot that later transitions do not change."""
        # Through __init__, not TaskRecord.__new__(TaskRecord): a compiled class runs its
        # __init__ from __new__ (docs/performance.md, "Compiled build").
        clone = TaskRecord(
            self.task_id, self.function, self._payload, self.created_at, list(self._events)
        )
        clone.status = self.status
        clone._result = self._result
        clone.error = self.error
        clone.attempts = self.attempts
        clone.retries = self.retries
        clone.created_at = self.created_at
        clone.due_at = self.due_at
        clone.started_at = self.started_at
        clone.ended_at = self.ended_at
        clone.instance_id = self.instance_id
        return clone

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (bytes inside payload or result become base64)."""
        return {
            "task_id": self.task_id,
            "function": self.function,
            "status": str(self.status),
            "payload": _jsonable(self.payload),
            "result": _jsonable(self.result),
            "error": None if self.error is None else self.error._asdict(),
            "attempts": self.attempts,
            "retries": self.retries,
            "created_at": self.created_at,
            "due_at": self.due_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "instance_id": self.instance_id,
            "events": [
                {"status": str(e.status), "timestamp": e.timestamp, "detail": e.detail}
                for e in self.events
            ],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
