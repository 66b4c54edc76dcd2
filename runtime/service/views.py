"""The JSON documents of the API, built from the public Runtime types."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from runtime import FunctionSpec, InstanceInfo, InstanceState, TaskEvent

#: The instance states the dashboard shows; "Ready" is what the dashboard calls Idle.
LIVE_STATES = (
    InstanceState.STARTING,
    InstanceState.READY,
    InstanceState.BUSY,
    InstanceState.FROZEN,
    InstanceState.STOPPING,
)


def function_view(
    spec: FunctionSpec, instances: list[InstanceInfo], stats: Mapping[str, int | None]
) -> dict[str, Any]:
    """One function: name, kind, configuration, instances by state, queued and running."""
    counts = Counter(str(i.state) for i in instances)
    return {
        "name": spec.name,
        "kind": spec.config.kind,
        "config": config_view(spec),
        "instances": {str(state): counts.get(str(state), 0) for state in LIVE_STATES},
        "queued": stats.get("queued"),
        "running": stats.get("running"),
    }


def config_view(spec: FunctionSpec) -> dict[str, Any]:
    """The configuration as plain values; a hook is shown by its name (or import path)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec.config):
        value = getattr(spec.config, field.name)
        if callable(value):
            value = spec.paths.get(field.name) or _name_of(value)
        out[field.name] = value
    return out


def _name_of(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def instance_view(info: InstanceInfo) -> dict[str, Any]:
    return {
        "instance_id": info.instance_id,
        "function": info.function,
        "kind": info.kind,
        "state": str(info.state),
        "in_flight": info.in_flight,
        "created_at": info.created_at,
        "last_used_at": info.last_used_at,
        "tasks_served": info.tasks_served,
        "abandoned": info.abandoned,
        "events": [
            {"event": e.event, "timestamp": e.timestamp, "detail": e.detail} for e in info.events
        ],
    }


def event_view(event: TaskEvent) -> dict[str, Any]:
    return {"status": str(event.status), "timestamp": event.timestamp, "detail": event.detail}


def plain(value: Any) -> Any:
    """A NamedTuple or dataclass (a NodeInfo) as a JSON-ready dict, recursively."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # a StrEnum as its plain value
    return value
