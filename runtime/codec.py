"""msgpack encoding of payloads and results, with explicit limits on everything decoded."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import PayloadError, PayloadTooLargeError

_NIL = b"\xc0"
# Payloads are values, not objects: no ext types, no tuples disguised as lists.
_packer = msgpack.Packer(use_bin_type=True, strict_types=False, autoreset=True)


def encode(value: Any) -> bytes:
    """Encode a msgpack value; raises ``TypeError``/``ValueError`` for anything else."""
    if value is None:
        return _NIL
    data: bytes = _packer.pack(value)
    return data


def encode_payload(value: Any, max_bytes: int) -> bytes:
    """Encode a task payload for ``invoke``, or raise :class:`PayloadError` saying why."""
    try:
        data = encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(
            f"the payload cannot be encoded as msgpack ({exc}); pass only None, bool, int, "
            "float, str, bytes, list and dict values"
        ) from None
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"the payload is {len(data)} bytes encoded, over max_payload_bytes={max_bytes}; "
            "send a reference (a URL, a key) instead, or raise max_payload_bytes on the Runtime"
        )
    return data


def decode(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Decode one msgpack value; limits default to the size of ``data`` itself.

    Limits bound what a hostile or corrupt buffer can make us allocate: no string,
    array or map can claim more entries than there are bytes.
    """
    if data == _NIL:
        return None
    size = len(data) if max_bytes is None else max_bytes
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size,
        max_ext_len=0,
    )
