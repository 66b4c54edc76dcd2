"""Stores, chosen by URL: ``memory://`` (default), ``sqlite:///path.db``, ``redis://host``.

One module (or package) per store. The Redis store is imported only when a URL names
it, so a runtime that never uses Redis never loads redis-py.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from actors import Clock

from ..errors import ConfigError
from .base import Store
from .memory import DEFAULT_MAX_AGE, DEFAULT_MAX_RECORDS, MemoryStore
from .sqlite import DEFAULT_MAX_AGE as DEFAULT_SQLITE_MAX_AGE
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "open_store"]


def open_store(url: str, clock: Clock, node_id: str = "") -> Store:
    """Build the store a URL names; raises :class:`ConfigError` for an unknown or bad URL.

    ``node_id`` names this runtime in a cluster (a shared store).
    """
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
    if parts.scheme == "sqlite":
        return _sqlite(url, parts.netloc, parts.path, options, clock)
    if parts.scheme in ("redis", "rediss", "unix"):
        from .redis.store import RedisStore
        from .redis.url import parse_redis_url

        return RedisStore(parse_redis_url(url), clock, node_id)
    raise ConfigError(
        f"unknown store URL {url!r}: use 'memory://' (optionally ?max_records=N&max_age=S), "
        "'sqlite:///relative/path.db' / 'sqlite:////absolute/path.db', or "
        "'redis://host:port/db' (also rediss:// and unix:///path/redis.sock)"
    )


def _sqlite(url: str, netloc: str, path: str, options: dict[str, str], clock: Clock) -> Store:
    # As SQLAlchemy spells it: sqlite:///relative.db and sqlite:////absolute/path.db
    if netloc or not path.startswith("/") or len(path) < 2:
        raise ConfigError(
            f"store URL {url!r} names no file: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    file = path[1:]
    synchronous = options.pop("synchronous", "full").upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise ConfigError(
            f"synchronous={synchronous.lower()!r} in {url!r} is not supported: use 'full' "
            "(survives power loss, the default) or 'normal' (survives a process crash)"
        )
    max_age = _number(options.pop("max_age", DEFAULT_SQLITE_MAX_AGE), "max_age", float)
    _no_leftovers(url, options, "synchronous, max_age")
    return SQLiteStore(file, clock, synchronous=synchronous, max_age=max_age, url=url)


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
