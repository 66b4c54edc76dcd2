"""Stores, chosen by URL: ``memory://`` (default). One module per store."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from actors import Clock

from ..errors import ConfigError
from .base import Store
from .memory import DEFAULT_MAX_AGE, DEFAULT_MAX_RECORDS, MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str, clock: Clock) -> Store:
    """Build the store a URL names; raises :class:`ConfigError` for an unknown or bad URL."""
    if not isinstance(url, str):
        raise ConfigError(
            f"store must be a URL string such as 'memory://', got {type(url).__name__}"
        )
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "memory":
        max_records = _number(options.pop("max_records", DEFAULT_MAX_RECORDS), "max_records", int)
        max_age = _number(options.pop("max_age", DEFAULT_MAX_AGE), "max_age", float)
        _no_leftovers(url, options, "max_records, max_age")
        return MemoryStore(clock, max_records=int(max_records), max_age=max_age, url=url)
    raise ConfigError(
        f"unknown store URL {url!r}: use 'memory://' (optionally ?max_records=N&max_age=S)"
    )


def _number(raw: str | float, key: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"store option {key}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"store option {key}={raw!r} must be > 0")
    return value


def _no_leftovers(url: str, options: dict[str, str], known: str) -> None:
    if options:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(options))} in store URL {url!r}; known: {known}"
        )
