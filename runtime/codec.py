"""msgpack encoding of payloads and results, with explicit limits on everything decoded."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import PayloadError, PayloadTooLargeError

_NIL = b"\xc0"
# Payloads are values, not objects: no ext types, no tuples disguised as lists.
_packer = msgpack.Packer(use_bin_type=True, strict_types=False, autoreset=True)
# Values of these exact types always decode back: they skip the check below.
_PLAIN = frozenset({int, str, bytes, float, bool})
_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def encode(value: Any) -> bytes:
    """Encode a msgpack value that :func:`decode` reads back.

    Raises ``TypeError``/``ValueError`` for anything else — including what msgpack
    encodes but stint could never decode: ``ExtType`` and ``Timestamp`` values,
    tuples as dict keys, nesting past the decoder's depth. Only containers (and
    subclasses) pay for that check, one C-speed decode; plain scalars do not.
    """
    if value is None:
        return _NIL
    data: bytes = _packer.pack(value)
    if type(value) not in _PLAIN:
        try:
            _unpack(data, len(data))
        except _DECODE_ERRORS as exc:
            raise ValueError(
                f"it would not decode back: {_why(exc)}; ExtType and Timestamp values, "
                "tuples as dict keys and nesting over 1,000 levels are not supported"
            ) from None
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
    """Decode one msgpack value; raises :class:`PayloadError` for bytes that are not one.

    Limits bound what a hostile or corrupt buffer can make us allocate: no string,
    array or map can claim more entries than there are bytes (or ``max_bytes``).
    """
    if data == _NIL:
        return None
    try:
        return _unpack(data, len(data) if max_bytes is None else max_bytes)
    except _DECODE_ERRORS as exc:
        raise PayloadError(
            f"not a valid stint payload ({_why(exc)}); the bytes are damaged or were not "
            "encoded by stint"
        ) from None


def _unpack(data: bytes, size: int) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size,
        max_ext_len=0,  # and an empty one, which that allows, is refused by the hook
        ext_hook=_no_ext,
    )


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not a payload value")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
