"""Structured logs for ``stint serve``: one line per event, ``key=value`` (logfmt) or JSON.

Defaults are for an operator reading a terminal or a log collector: the service's
own lifecycle (listening, signals, what shutdown waits for) at INFO, the runtime's
warnings, and no line per request (``--access-log`` turns those on).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=stint.serve msg="listening" url=...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(  # extra={"key": value} becomes a field
        (key, value)
        for key, value in record.__dict__.items()
        if key not in _RESERVED and not key.startswith("_") and key != "color_message"
    )
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t'):
        return text
    return json.dumps(text)


def configure(level: str = "info", fmt: str = "text", *, access_log: bool = False) -> None:
    """Send every log line to stderr in ``fmt`` ("text": logfmt, or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    # uvicorn's own start-up chatter is noise beside ours; its errors still show
    logging.getLogger("uvicorn.error").setLevel(max(numeric, logging.WARNING))
    access = logging.getLogger("uvicorn.access")
    access.setLevel(numeric if access_log else logging.CRITICAL + 1)
