"""The JSON documents of the API, built from the public Runtime types."""

from __future__ import annotations

import dataclasses
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


def function_view(spec: FunctionSpec, stats: Mapping[str, Any]) -> dict[str, Any]:
    """One function: name, kind, configuration, instances by state, queued, running and
    unfinished (from ``rt.function_stats()``)."""
    counts = stats.get("instances", {})
    return {
        "name": spec.name,
        "kind": spec.config.kind,
        "config": config_view(spec),
        "instances": {str(state): counts.get(str(state), 0) for state in LIVE_STATES},
        "queued": stats["queued"],
        "running": stats["running"],
        "unfinished": stats["unfinished"],
    }


def config_view(spec: FunctionSpec) -> dict[str, Any]:
    """The configuration as JSON values: a hook by its import path or name, an exception
    class by its qualified name, anything else unknown by its repr."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec.config):
        value = getattr(spec.config, field.name)
        out[field.name] = spec.paths.get(field.name) or _config_value(value)
    return out


def _config_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_config_value(v) for v in value]
    if isinstance(value, type):
        module = value.__module__
        return value.__qualname__ if module == "builtins" else f"{module}.{value.__qualname__}"
    if callable(value):
        return _name_of(value)
    return repr(value)


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
