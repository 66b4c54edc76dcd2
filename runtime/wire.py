"""Wire forms of what crosses a process boundary (to a store, a worker, another node).

Each form is a msgpack array whose first two items are a type tag and a version,
decoded by a function that checks both and sets explicit limits. Inside one
process nothing is encoded: messages go by reference.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import msgpack

from .errors import StintError
from .record import ErrorInfo, TaskRecord
from .states import NAME, TaskState

RECORD_TAG = "task-record"
RECORD_VERSION = 2  # 2 added due_at; version 1 records are still read
_FIELDS = {1: 15, 2: 16}
MAX_RECORD_BYTES = 64 * 1024 * 1024

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_STATES = {state.value: state for state in TaskState}


class WireFormatError(StintError, ValueError):
    """Bytes that are not a valid wire form (corrupt, truncated, or from a newer stint)."""


def pack_record(record: TaskRecord) -> bytes:
    """The record as bytes: small, and invisible to the garbage collector.

    A string msgpack cannot encode (a lone surrogate, as ``os.fsdecode`` makes of a
    bad file name, in an error message) is stored with that character escaped
    (``\\udcff``) rather than making the record unstorable. Raises ``TypeError`` /
    ``ValueError`` / ``OverflowError`` only for a field of the wrong type (a bug).
    """
    error = record.error
    fields = (
        RECORD_TAG,
        RECORD_VERSION,
        record.task_id,
        record.function,
        NAME[record.status],
        record.payload_bytes,
        record.result_bytes,
        None if error is None else tuple(error),
        record.attempts,
        record.retries,
        record.created_at,
        record.started_at,
        record.ended_at,
        record.instance_id,
        record.raw_events(),
        record.due_at,
    )
    try:
        data: bytes = _packer.pack(fields)
    except UnicodeEncodeError:
        data = _packer.pack(_escaped(fields))
    return data


def _escaped(value: Any) -> Any:
    """``value`` with every str made encodable (surrogates become backslash escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, tuple | list):
        return [_escaped(item) for item in value]
    return value


def unpack_record(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> TaskRecord:
    """Rebuild a record from :func:`pack_record` bytes; raises :class:`WireFormatError`.

    Every field's type is checked, so a damaged or tampered record is refused here
    rather than failing later inside a task actor.
    """
    if not isinstance(data, bytes):
        raise WireFormatError(f"a task record must be bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireFormatError(f"a record of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        fields = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            max_str_len=len(data),
            max_bin_len=len(data),
            max_array_len=len(data),
            max_map_len=0,
            max_ext_len=0,
            ext_hook=_no_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"not a valid task record: {type(exc).__name__}: {exc}") from None
    return _record_from(fields)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"it holds msgpack extension type {code}")


def _record_from(fields: Any) -> TaskRecord:
    if not isinstance(fields, tuple) or len(fields) < 2 or fields[0] != RECORD_TAG:
        raise WireFormatError("not a task record (wrong type tag or shape)")
    version = fields[1]
    if version not in _FIELDS:
        raise WireFormatError(
            f"task record version {version!r} is not supported (this stint reads versions "
            f"1 to {RECORD_VERSION}); upgrade stint to read it"
        )
    if len(fields) != _FIELDS[version]:
        raise WireFormatError(f"not a task record (version {version} with {len(fields)} fields)")
    (_, _, task_id, function, status, payload, result, error, attempts, retries,
     created_at, started_at, ended_at, instance_id, events) = fields[:15]  # fmt: skip
    record = TaskRecord(
        _of(str, task_id, "task_id"),
        _of(str, function, "function"),
        _of(bytes, payload, "payload"),
        _number(created_at, "created_at"),
        events=_events(events),
    )
    record.status = _state(status, "status")
    record.result_bytes = None if result is None else _of(bytes, result, "result")
    record.error = _error(error)
    record.attempts = _count(attempts, "attempts")
    record.retries = _count(retries, "retries")
    record.started_at = _optional_number(started_at, "started_at")
    record.ended_at = _optional_number(ended_at, "ended_at")
    record.instance_id = None if instance_id is None else _of(str, instance_id, "instance_id")
    record.due_at = _optional_number(fields[15], "due_at") if version >= 2 else None
    return record


T = TypeVar("T")


def _of(kind: type[T], value: Any, name: str) -> T:
    if type(value) is not kind:
        raise WireFormatError(
            f"task record field {name} is a {type(value).__name__}, not a {kind.__name__}"
        )
    return value


def _number(value: Any, name: str) -> float:
    if type(value) not in (float, int):  # exact: a bool is not a timestamp
        raise WireFormatError(f"task record field {name} is a {type(value).__name__}, not a number")
    return cast(float, value)


def _optional_number(value: Any, name: str) -> float | None:
    return None if value is None else _number(value, name)


def _count(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise WireFormatError(f"task record field {name} is {value!r}, not a count (an int >= 0)")
    return value


def _state(value: Any, name: str) -> TaskState:
    state = _STATES.get(value) if type(value) is str else None
    if state is None:
        raise WireFormatError(f"task record field {name} is {value!r}, not a task state")
    return state


def _error(value: Any) -> ErrorInfo | None:
    if value is None:
        return None
    if type(value) is not tuple or len(value) != 3 or any(type(v) is not str for v in value):
        raise WireFormatError("task record field error is not None or three strings")
    return ErrorInfo(*value)


def _events(value: Any) -> list[tuple[str, float, str]]:
    if type(value) is not tuple:
        raise WireFormatError("task record field events is not a list")
    events: list[tuple[str, float, str]] = []
    for event in value:
        if type(event) is not tuple or len(event) != 3:
            raise WireFormatError("a task record event is not (status, timestamp, detail)")
        status, timestamp, detail = event
        events.append(
            (NAME[_state(status, "event status")], _number(timestamp, "event timestamp"),
             _of(str, detail, "event detail"))
        )  # fmt: skip
    return events
