"""Pydantic models of the API's documents: they describe the API in ``/openapi.json``.

The routes build their responses from the runtime's own ``to_dict()`` views and
return them directly (no validation pass on the hot path); these models are the
documentation of those shapes, checked against real responses by the tests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class InvocationRequest(BaseModel):
    """The body of ``POST /v1/functions/{name}/invocations`` (JSON or msgpack)."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(
        None,
        description="Any msgpack value: null, bool, number, string, "
        "bytes (msgpack only), list, object",
    )
    task_id: str | None = Field(
        None,
        description="Your own id (letters, digits, _, - and ., "
        "up to 128, starting with a letter or _); one is made if omitted",
    )
    delay: float | None = Field(
        None, ge=0, description="Seconds to wait before the task may be dequeued"
    )


class Accepted(BaseModel):
    task_id: str
    status: str = "Enqueued"


class Event(BaseModel):
    status: str
    timestamp: float = Field(description="Seconds since the epoch")
    detail: str


class ErrorInfo(BaseModel):
    type: str
    message: str
    traceback: str


class TaskRecord(BaseModel):
    task_id: str
    function: str
    status: str
    payload: Any = Field(description='bytes appear as {"base64": ...} in JSON')
    result: Any
    error: ErrorInfo | None
    attempts: int
    retries: int
    created_at: float
    due_at: float | None = Field(None, description="when a delayed task may start")
    started_at: float | None
    ended_at: float | None
    instance_id: str | None
    events: list[Event]


class TaskPage(BaseModel):
    tasks: list[TaskRecord]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last one"
    )


class Function(BaseModel):
    name: str
    kind: str
    config: dict[str, Any]
    instances: dict[str, int] = Field(
        description="Live instances by state: Starting, Ready (idle), Busy, Frozen, Stopping"
    )
    queued: int = Field(description="accepted, not yet dequeued")
    running: int = Field(description="attempts under way")
    unfinished: int = Field(description="tasks not in a terminal state")


class Functions(BaseModel):
    functions: list[Function]


class InstanceEvent(BaseModel):
    event: str
    timestamp: float
    detail: str


class Instance(BaseModel):
    instance_id: str
    function: str
    kind: str
    state: str
    in_flight: int
    created_at: float
    last_used_at: float
    tasks_served: int
    abandoned: bool
    events: list[InstanceEvent]


class Instances(BaseModel):
    instances: list[Instance]


class Nodes(BaseModel):
    nodes: list[dict[str, Any]]


class Status(BaseModel):
    status: str


class Problem(BaseModel):
    """An error (``application/problem+json``): ``type`` is the stint error's name."""

    type: str = Field(examples=["TaskNotFoundError"])
    title: str
    status: int
    detail: str
