"""Wire forms of what crosses a process boundary (to a store, a worker, another node).

Each form is a msgpack array whose first two items are a type tag and a version,
decoded by a function that checks both and sets explicit limits. Inside one
process nothing is encoded: messages go by reference.
"""

from __future__ import annotations

from typing import Any

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
    """The record as bytes: small, and invisible to the garbage collector."""
    error = record.error
    data: bytes = _packer.pack(
        (
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
    )
    return data


def unpack_record(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> TaskRecord:
    """Rebuild a record from :func:`pack_record` bytes; raises :class:`WireFormatError`."""
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
        )
        return _record_from(fields)
    except WireFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"not a valid task record: {exc}") from None


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
    due_at = fields[15] if version >= 2 else None
    record = TaskRecord(task_id, function, payload, created_at, events=[])
    record.status = _STATES[status]
    record.result_bytes = result
    record.error = None if error is None else ErrorInfo(*error)
    record.attempts = attempts
    record.retries = retries
    record.started_at = started_at
    record.ended_at = ended_at
    record.instance_id = instance_id
    record.due_at = due_at
    record.load_raw_events(events)
    return record
