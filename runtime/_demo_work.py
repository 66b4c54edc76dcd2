"""Handlers for ``stint demo``'s thread and process functions.

A separate, import-light module: a ``kind="process"`` worker imports it at start-up.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any


def checksum(event: Any, ctx: Any) -> str:
    """Blocking work (kind "thread"): hash a few kilobytes derived from the payload."""
    data = f"{event['name']}:{event['n']}".encode() * 256
    return hashlib.sha256(data).hexdigest()[:16]


def isolated(event: Any, ctx: Any) -> dict[str, Any]:
    """Work in a worker process (kind "process"): it reports which process ran it."""
    return {"pid": os.getpid(), "square": event["n"] * event["n"]}
