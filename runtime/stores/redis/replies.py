"""Reading Redis replies: bytes to text, flat field lists to dicts (redis-py may parse either)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text(value: Any) -> str:
    """A reply value as str ("" for nil); bytes are UTF-8 (undecodable bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def fields(reply: Any) -> dict[str, Any]:
    """A hash or entry reply (a dict, or a flat [k1, v1, k2, v2, ...] list) as a dict."""
    if isinstance(reply, dict):
        return {text(k): v for k, v in reply.items()}
    if isinstance(reply, Sequence) and not isinstance(reply, str | bytes):
        return {text(k): v for k, v in zip(reply[::2], reply[1::2], strict=False)}
    return {}
