"""Destinations: when a task ends, another function is invoked with what happened.

``on_success`` is invoked for a Succeeded task, ``on_failure`` for a Failed, Expired
or Invalid one (a Stopped task was stopped on purpose: neither). The destination's
task id is derived from the source's (``<task_id>.on_success``), so a second try
finds it taken: a destination runs at most once per task.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from .ids import derived_id
from .record import TaskRecord
from .states import TaskState

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_NIL = b"\xc0"


def destination_of(
    record: TaskRecord, on_success: str | None, on_failure: str | None
) -> tuple[str, str | None]:
    """``(key, target)`` for a terminal record: which config key applies, and its function."""
    if record.status is TaskState.SUCCEEDED:
        return "on_success", on_success
    if record.status is TaskState.STOPPED:
        return "on_failure", None
    return "on_failure", on_failure


#: ``(function, task id, payload, source task id) -> what happened``, as the runtime's
#: ``_invoke_destination`` answers (it never raises).
Invoke = Callable[[str, str, bytes, str], str]


def invoke_destination(
    record: TaskRecord, on_success: str | None, on_failure: str | None, invoke: Invoke
) -> str | None:
    """Invoke the destination of a terminal ``record``, if it has one; the detail of the
    event the source task records about it (``"on_failure: invoking ..."``), else None."""
    key, target = destination_of(record, on_success, on_failure)
    if target is None:
        return None
    task_id = destination_task_id(record, key)
    said = invoke(target, task_id, destination_payload(record), record.task_id)
    return f"{key}: {said}"


def destination_task_id(record: TaskRecord, key: str) -> str:
    return derived_id(record.task_id, key)


def destination_payload(record: TaskRecord) -> bytes:
    """``{"task_id", "function", "status", "result" or "error", "attempts"}`` as msgpack.

    The result goes in as the handler's encoded bytes, never decoded and encoded again.
    """
    pack = _packer.pack
    parts = [
        _packer.pack_map_header(5),
        pack("task_id"),
        pack(record.task_id),
        pack("function"),
        pack(record.function),
        pack("status"),
        pack(str(record.status)),
    ]
    if record.status is TaskState.SUCCEEDED:
        parts += [pack("result"), record.result_bytes or _NIL]
    else:
        error = record.error
        if error is not None:
            described = {"type": error.type, "message": error.message, "traceback": error.traceback}
        else:  # Expired, or Invalid because its function went: the last event says why
            why = record.raw_events()[-1][2]
            described = {"type": str(record.status), "message": why, "traceback": ""}
        parts += [pack("error"), pack(described)]
    parts += [pack("attempts"), pack(record.attempts)]
    return b"".join(parts)
