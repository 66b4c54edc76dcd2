"""Request and response bodies: JSON by default, msgpack when asked, read with limits.

A request body is untrusted bytes: it is read up to a cap (``max_payload_bytes``
plus room for the envelope) and refused with 413 past it, before more is read;
msgpack is decoded with explicit limits (``runtime.codec.decode``); nothing else
is accepted.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from runtime import PayloadTooLargeError, codec

from .problems import InvalidRequestError, UnsupportedMediaTypeError

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
#: Room for the envelope around a payload: ``{"payload": ..., "task_id": ..., "delay": ...}``.
ENVELOPE_BYTES = 16 * 1024


def wants_msgpack(request: Request) -> bool:
    """True when the client's ``Accept`` names msgpack."""
    accept = request.headers.get("accept", "")
    return any(kind in accept for kind in _MSGPACK_TYPES)


def respond(request: Request, document: Any, status: int = 200, **headers: str) -> Response:
    """``document`` encoded as the client asked: msgpack, or JSON by default."""
    if wants_msgpack(request):
        return Response(codec.encode(document), status, headers or None, media_type=MSGPACK)
    body = json.dumps(document, separators=(",", ":"), allow_nan=False)
    return Response(body, status, headers or None, media_type=JSON)


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with :class:`PayloadTooLargeError` past ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError(f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > cap:
            raise _too_large(int(declared), cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:  # a chunked body states no length: count as it comes
            raise _too_large(len(body), cap)
    return bytes(body)


def _too_large(size: int, cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size} bytes, over this node's limit of {cap} bytes "
        f"(max_payload_bytes + {ENVELOPE_BYTES} for the envelope); send a reference "
        "(a URL, a key) instead of the data, or raise max_payload_bytes on the Runtime"
    )


def decode_object(request: Request, body: bytes) -> dict[str, Any]:
    """Decode a JSON or msgpack body that must be an object (an empty body is ``{}``)."""
    if not body:
        return {}
    kind = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if kind in _MSGPACK_TYPES:
        value = _decode_msgpack(body)
    elif kind == JSON or kind.endswith("+json") or not kind:
        value = _decode_json(body)
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {kind!r} is not supported: send {JSON} or {MSGPACK}"
        )
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"the request body must be an object, got {type(value).__name__}: "
            'send {"payload": ...}'
        )
    return value


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequestError(f"the request body is not valid JSON ({exc})") from None


def _decode_msgpack(body: bytes) -> Any:
    try:
        return codec.decode(body)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise InvalidRequestError(
            f"the request body is not one valid msgpack value ({type(exc).__name__}: {exc})"
        ) from None
