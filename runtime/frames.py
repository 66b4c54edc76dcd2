"""The worker protocol: length-prefixed msgpack frames over a dedicated socket.

A frame is a 4-byte big-endian length, then that many bytes: one msgpack array
``[PROTOCOL, kind, *fields]``. Both ends decode with explicit limits and treat
anything else — a bad length, bad msgpack, an unknown tag or kind — as a
:class:`ProtocolError`, which ends that worker, never the runtime.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from .errors import StintError

PROTOCOL = "stint-worker/1"
MAX_FRAME = 64 * 1024 * 1024  # a result bigger than this is refused by the worker itself
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
_KINDS = {LOAD, HOOK, RUN, CANCEL, EXIT, LOADED, LOAD_FAILED, HOOK_DONE, RESULT, ERROR}

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


class ProtocolError(StintError):
    """A worker sent bytes that are not a valid frame; the worker is killed and replaced."""


def encode(kind: str, *fields: Any) -> bytes:
    body: bytes = _packer.pack((PROTOCOL, kind, *fields))
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """One frame's body -> (kind, fields), or :class:`ProtocolError`."""
    try:
        message = msgpack.unpackb(
            body,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=len(body),
            max_bin_len=len(body),
            max_array_len=len(body),
            max_map_len=len(body),
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a frame is not valid msgpack ({exc})") from None
    if not isinstance(message, tuple) or len(message) < 2 or message[0] != PROTOCOL:
        raise ProtocolError(f"a frame does not start with the {PROTOCOL!r} tag")
    kind = message[1]
    if kind not in _KINDS:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    return kind, message[2:]


async def read(
    reader: asyncio.StreamReader, max_frame: int = MAX_FRAME
) -> tuple[str, tuple[Any, ...]]:
    """Read one frame; ``asyncio.IncompleteReadError`` at a clean end of stream."""
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > max_frame:
        raise ProtocolError(f"a frame claims {size} bytes, over the {max_frame}-byte limit")
    return decode(await reader.readexactly(size))
