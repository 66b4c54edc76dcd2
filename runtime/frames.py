"""The worker protocol: length-prefixed msgpack frames over a dedicated socket.

A frame is a 4-byte big-endian length, then that many bytes: one msgpack array
``[PROTOCOL, kind, *fields]``, or a batch ``[PROTOCOL, "batch", [kind, *fields], ...]``
of at most :data:`MAX_BATCH` frames: each side sends what it wrote in one loop turn as
one batch (:class:`Outbox`), so a busy worker costs one write and one read per turn,
not per attempt. :data:`SCHEMA` declares every kind's fields, in
both directions: how many, and each one's type and bound. Both ends read with
:func:`read`, which decodes with explicit limits and checks the frame against
the schema, so the code that acts on a frame only ever sees fields of the
declared shape. Anything else — a bad length, bad msgpack, an unknown tag or
kind, a frame the reader does not accept from that side, a field of the wrong
type or out of bounds — is a :class:`ProtocolError`, which ends that worker,
never the runtime.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from . import codec
from .errors import StintError

PROTOCOL = "stint-worker/3"
MAX_FRAME = 64 * 1024 * 1024  # bytes in one frame, header excluded
MAX_VALUE = MAX_FRAME - 1024  # an encoded payload or result, with room for the frame around it
MAX_NAME = 4096  # ids, function names, import paths (all far shorter in practice)
MAX_TEXT = 1024 * 1024  # each string of an error (type, message, traceback); the worker clips
MAX_ID = 2**63 - 1  # attempt ids (a per-worker counter from 1)
MAX_BATCH = 1024  # frames in one batch (each side sends at most `concurrency` per turn)
MAX_TYPES = 64  # qualified class names in an ERROR frame (an error's MRO; the worker clips)
_HEADER = struct.Struct(">I")

# parent -> worker
LOAD, HOOK, RUN, CANCEL, EXIT = "load", "hook", "run", "cancel", "exit"
# worker -> parent
LOADED, LOAD_FAILED, HOOK_DONE, RESULT, ERROR = (
    "loaded",
    "load_failed",
    "hook_done",
    "result",
    "error",
)
BATCH = "batch"  # either way: several of the frames below in one
TO_WORKER = frozenset({LOAD, HOOK, RUN, CANCEL, EXIT})
FROM_WORKER = frozenset({LOADED, LOAD_FAILED, HOOK_DONE, RESULT, ERROR})
HOOKS = ("initializer", "pre_freeze", "pre_stop")

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


class ProtocolError(StintError):
    """Bytes on the worker socket that are not a valid frame: the worker is killed and replaced."""


# --- the schema ------------------------------------------------------------------------------


class Field(NamedTuple):
    """One field of a frame: its name, a test of its value, and the rule in words."""

    name: str
    check: Callable[[Any], bool]
    rule: str


def _int(name: str, low: int, high: int) -> Field:
    return Field(name, lambda v: type(v) is int and low <= v <= high, f"an int in [{low}, {high}]")


def _str(name: str, limit: int) -> Field:
    return Field(name, lambda v: type(v) is str and len(v) <= limit, f"a str of <= {limit} chars")


def _bytes(name: str, limit: int) -> Field:
    return Field(
        name, lambda v: type(v) is bytes and len(v) <= limit, f"bytes of length <= {limit}"
    )


def _optional(field: Field) -> Field:
    check = field.check
    return Field(field.name, lambda v: v is None or check(v), f"None or {field.rule}")


def _one_of(name: str, choices: tuple[str, ...]) -> Field:
    return Field(name, lambda v: type(v) is str and v in choices, f"one of {choices}")


def _str_tuple(name: str, count: int, limit: int) -> Field:
    return Field(
        name,
        lambda v: (
            type(v) is tuple
            and len(v) <= count
            and all(type(s) is str and len(s) <= limit for s in v)
        ),
        f"a list of <= {count} str of <= {limit} chars",
    )


def _is_error_info(value: Any) -> bool:
    return (
        type(value) is tuple
        and len(value) == 3
        and all(type(s) is str and len(s) <= MAX_TEXT for s in value)
    )


def is_value(data: Any) -> bool:
    """Bytes that decode as one msgpack value by the codec's rules (no ext types, hashable
    map keys): what a record's ``result`` will decode later, checked once here."""
    if type(data) is not bytes or len(data) > MAX_VALUE:
        return False
    try:
        codec.decode(data)  # the very decoder the record's result goes through later
    except Exception:  # any failure of the decoder means: not a valid value
        return False
    return True


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} is not a msgpack value stint accepts")


_ERROR = Field("error", _is_error_info, f"a (type, message, traceback) tuple of str <= {MAX_TEXT}")
_ATTEMPT_ID = _int("attempt_id", 1, MAX_ID)
_PATH = _str("import path", MAX_NAME)

#: Every frame kind's fields, in order. Both ends check what they read against it.
SCHEMA: dict[str, tuple[Field, ...]] = {
    LOAD: (
        _str("instance_id", MAX_NAME),
        _str("function", MAX_NAME),
        _PATH._replace(name="handler"),
        _optional(_PATH._replace(name="initializer")),
        _optional(_PATH._replace(name="pre_freeze")),
        _optional(_PATH._replace(name="pre_stop")),
    ),
    HOOK: (_one_of("hook", HOOKS),),
    RUN: (
        _ATTEMPT_ID,
        _bytes("payload", MAX_VALUE),  # decoded by the worker: a bad one fails the attempt
        _str("task_id", MAX_NAME),
        _str("function", MAX_NAME),
        _int("attempt", 1, 2**31 - 1),
        Field("deadline", lambda v: type(v) is float and not math.isnan(v), "a float"),
    ),
    CANCEL: (_ATTEMPT_ID,),
    EXIT: (),
    LOADED: (_int("pid", 1, 2**31 - 1),),
    LOAD_FAILED: (_ERROR,),
    HOOK_DONE: (
        _one_of("hook", HOOKS),
        _optional(_ERROR),
        Field("seconds", lambda v: type(v) is float and 0.0 <= v < 1e9, "a float in [0, 1e9)"),
    ),
    RESULT: (_ATTEMPT_ID, Field("result", is_value, f"one msgpack value of <= {MAX_VALUE} bytes")),
    # types: the qualified names of the error's classes, most derived first; the parent
    # applies the function's retry policy to them (config.FunctionConfig.is_retryable_name)
    ERROR: (_ATTEMPT_ID, _ERROR, _str_tuple("types", MAX_TYPES, MAX_NAME)),
}


def validate(kind: str, fields: tuple[Any, ...]) -> None:
    """Check ``fields`` against the schema of ``kind``, or raise :class:`ProtocolError`."""
    schema = SCHEMA[kind]
    if len(fields) != len(schema):
        raise ProtocolError(f"a {kind!r} frame has {len(fields)} fields, not {len(schema)}")
    for field, value in zip(schema, fields):  # noqa: B905 - the hot path; lengths checked
        if not field.check(value):
            raise _complaint(kind, schema, fields)


def _complaint(kind: str, schema: tuple[Field, ...], fields: tuple[Any, ...]) -> ProtocolError:
    """The error for the first field of ``fields`` that breaks ``schema``."""
    for index, (field, value) in enumerate(zip(schema, fields, strict=True)):
        if not field.check(value):
            return ProtocolError(
                f"field {index} ({field.name}) of a {kind!r} frame must be {field.rule}, "
                f"got {_describe(value)}"
            )
    raise AssertionError("called for fields that break the schema")


def _describe(value: Any) -> str:
    """A short description of a value for an error message (never the whole of a big one)."""
    if isinstance(value, str | bytes):
        text = repr(value[:40])
        return f"{type(value).__name__} of length {len(value)}: {text}"
    if isinstance(value, tuple | dict):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


# --- encoding and decoding -----------------------------------------------------------------


def encode(kind: str, *fields: Any) -> bytes:
    """One frame, header included."""
    body: bytes = _packer.pack((PROTOCOL, kind, *fields))
    return _HEADER.pack(len(body)) + body


_BATCH_HEAD = _packer.pack(PROTOCOL) + _packer.pack(BATCH)
_BATCH_ROOM = MAX_FRAME - len(_BATCH_HEAD) - 5  # what a batch's frames may take (5: array head)


def encode_batch(items: list[bytes]) -> bytes:
    """A batch of frames packed by :func:`pack` (1 to MAX_BATCH of them), header included."""
    body = b"".join((_packer.pack_array_header(2 + len(items)), _BATCH_HEAD, *items))
    return _HEADER.pack(len(body)) + body


def pack(kind: str, *fields: Any) -> bytes:
    """One frame as a batch carries it: the msgpack array ``[kind, *fields]``."""
    return _packer.pack((kind, *fields))  # type: ignore[no-any-return]


class Outbox:
    """The frames one side writes in a loop turn, sent as one batch at the end of the turn.

    ``add`` packs the frame at once (the caller's values may change after); the first
    ``add`` of a turn schedules :meth:`flush` with ``call_soon``, so every frame added
    before the loop next polls goes out in one write, in order. A batch that would pass
    :data:`MAX_BATCH` frames or :data:`MAX_FRAME` bytes is flushed first.
    """

    __slots__ = ("_items", "_scheduled", "_size", "_write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._items: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def add(self, kind: str, *fields: Any) -> None:
        item = pack(kind, *fields)
        if self._items and (len(self._items) >= MAX_BATCH or self._size + len(item) > _BATCH_ROOM):
            self.flush()
        self._items.append(item)
        self._size += len(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what was added (nothing if nothing was)."""
        self._scheduled = False
        if self._items:
            items, self._items, self._size = self._items, [], 0
            self._write(encode_batch(items))


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=len(body),
            max_bin_len=len(body),
            max_array_len=len(body),
            max_map_len=len(body),
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except Exception as exc:  # whatever the decoder raises, the bytes are not a frame
        raise ProtocolError(f"a frame is not valid msgpack ({exc})") from None


def decode(body: bytes, accept: frozenset[str]) -> tuple[str, tuple[Any, ...]]:
    """One plain frame's body -> (kind, fields) checked against :data:`SCHEMA`, or
    :class:`ProtocolError`. ``accept`` is the kinds this side may receive."""
    message = _unpack(body)
    _check_tag(message)
    return _checked(message[1], message[2:], accept)


def decode_frames(body: bytes, accept: frozenset[str]) -> list[tuple[str, tuple[Any, ...]]]:
    """A plain frame's or a batch's body -> its frames, each checked as :func:`decode`
    checks one; a batch of no frames, of more than :data:`MAX_BATCH` or with a bad
    frame anywhere in it is a :class:`ProtocolError` (none of its frames is acted on)."""
    message = _unpack(body)
    _check_tag(message)
    if message[1] != BATCH:
        return [_checked(message[1], message[2:], accept)]
    items = message[2:]
    if not 1 <= len(items) <= MAX_BATCH:
        raise ProtocolError(f"a batch has {len(items)} frames, not 1 to {MAX_BATCH}")
    decoded = []
    for index, item in enumerate(items):
        if type(item) is not tuple or not item:
            raise ProtocolError(f"frame {index} of a batch is {_describe(item)}, not a frame")
        try:
            decoded.append(_checked(item[0], item[1:], accept))
        except ProtocolError as exc:
            raise ProtocolError(f"frame {index} of a batch: {exc}") from None
    return decoded


def _check_tag(message: Any) -> None:
    if type(message) is not tuple or len(message) < 2 or message[0] != PROTOCOL:
        raise ProtocolError(f"a frame does not start with the {PROTOCOL!r} tag")


def _checked(
    kind: Any, fields: tuple[Any, ...], accept: frozenset[str]
) -> tuple[str, tuple[Any, ...]]:
    if type(kind) is not str or kind not in accept:  # a batch in a batch is refused here too
        raise ProtocolError(f"unexpected frame kind {_describe(kind)} on this side")
    validate(kind, fields)
    return kind, fields


async def read(
    reader: asyncio.StreamReader, accept: frozenset[str], max_frame: int = MAX_FRAME
) -> list[tuple[str, tuple[Any, ...]]]:
    """Read one frame or batch -> its frames; ``asyncio.IncompleteReadError`` at a clean
    end of stream."""
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > max_frame:
        raise ProtocolError(f"a frame claims {size} bytes, over the {max_frame}-byte limit")
    return decode_frames(await reader.readexactly(size), accept)
