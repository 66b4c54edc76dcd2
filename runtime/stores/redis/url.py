"""The ``redis://`` store URL: what it may say, checked once, with an error that says how to fix it.

Forms (as redis-py and most Redis clients spell them)::

    redis://[[user]:password@]host[:port][/db][?prefix=stint&lease=10&max_age=604800]
    rediss://...[?ssl_ca_certs=ca.pem&ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_cert_reqs=required]
    unix:///path/to/redis.sock[?db=0&password=...&prefix=...]

Only the options stint knows are accepted; an unknown one is a :class:`ConfigError`
rather than silently ignored, so a typo never changes where tasks go.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from ...errors import ConfigError

logger = logging.getLogger("stint")

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "stint"
DEFAULT_LEASE = 10.0  # seconds a node's heartbeat lives without renewal
DEFAULT_MAX_AGE = 7 * 24 * 3600.0  # seconds a finished record is kept (as the SQLite store)
MIN_LEASE = 0.3  # below this, one slow round trip would let a healthy node lapse

#: Letters, digits and ``_ - . :``; no braces (Redis Cluster hash tags) and no spaces.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_KNOWN = (
    "prefix, lease, max_age; ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs for "
    "rediss://; db, password for unix://"
)
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_CERT_REQS = ("required", "optional", "none")


@dataclasses.dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where the cluster's Redis is and how stint uses it; built by :func:`parse_redis_url`."""

    url: str = dataclasses.field(repr=False)  #: as given (``safe_url`` masks its password)
    host: str | None  #: None for a unix socket
    port: int
    unix_path: str | None
    db: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    tls: bool
    #: rediss:// only: CA bundle to verify the server with (default: the system's), client
    #: certificate and key (mutual TLS), and how strictly to verify ("required": default)
    ssl_ca_certs: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_cert_reqs: str
    prefix: str  #: every key stint writes starts with ``prefix + ":"``
    lease: float  #: seconds a node's heartbeat lives (renewed every lease / 3)
    max_age: float  #: seconds a finished record is kept

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs and error messages."""
        return redact(self.url)

    @property
    def insecure(self) -> bool:
        """True when the URL has no password and the server is not on this machine."""
        return self.password is None and self.unix_path is None and not _is_loopback(self.host)


def parse_redis_url(url: str) -> RedisOptions:
    """Check a ``redis://`` / ``rediss://`` / ``unix://`` URL; raises :class:`ConfigError`.

    Logs a warning (logger ``stint``) when the URL has no password and the host
    is not a loopback address: anyone who reaches that port can read and change
    every task.
    """
    if not isinstance(url, str):
        raise ConfigError(f"store must be a URL string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"store URL {redact(url)!r} is malformed ({exc}); {_FORMS}") from None
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme in ("redis", "rediss"):
        parsed = _tcp(url, parts.scheme == "rediss", parts.hostname, port, parts.path, options)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        parsed = dataclasses.replace(parsed, username=username, password=password or None)
    elif parts.scheme == "unix":
        parsed = _unix(url, parts.netloc, parts.path, options)
    else:
        raise ConfigError(f"store URL {redact(url)!r} is not a Redis URL; {_FORMS}")
    if parsed.insecure:
        logger.warning(
            "stint: the Redis store %s has no password and is not on this machine: anyone "
            "who can reach it can read and change every task; set a password "
            "(redis://:PASSWORD@host) and prefer rediss:// (TLS) across a network",
            parsed.safe_url,
        )
    return parsed


_FORMS = (
    "use redis://[[user]:password@]host[:port][/db][?prefix=stint&lease=10], rediss://... "
    "for TLS, or unix:///path/to/redis.sock"
)


def _tcp(  # noqa: PLR0917 - private, called once
    url: str, tls: bool, host: str | None, port: int | None, path: str, options: dict[str, str]
) -> RedisOptions:
    if not host:
        raise ConfigError(f"store URL {redact(url)!r} names no host; {_FORMS}")
    db_text = path.lstrip("/")
    tls_options = {key: options.pop(key) for key in _TLS_OPTIONS if key in options}
    if tls_options and not tls:
        raise ConfigError(
            f"store URL {redact(url)!r}: {', '.join(tls_options)} only apply to TLS: use rediss://"
        )
    reqs = tls_options.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ConfigError(
            f"store URL {redact(url)!r}: ssl_cert_reqs={reqs!r} is not valid: use "
            "'required' (the default), 'optional' or 'none'"
        )
    if "db" in options:
        raise ConfigError(
            f"store URL {redact(url)!r}: give the database as the path (redis://host:6379/2), "
            "not as ?db="
        )
    parsed = _finish(url, host, port or DEFAULT_PORT, None, db_text or "0", tls, options)
    return dataclasses.replace(
        parsed,
        ssl_ca_certs=tls_options.get("ssl_ca_certs") or None,
        ssl_certfile=tls_options.get("ssl_certfile") or None,
        ssl_keyfile=tls_options.get("ssl_keyfile") or None,
        ssl_cert_reqs=reqs,
    )


def _unix(url: str, netloc: str, path: str, options: dict[str, str]) -> RedisOptions:
    if netloc or not path.startswith("/") or len(path) < 2:
        raise ConfigError(
            f"store URL {redact(url)!r} names no socket: use unix:///absolute/path/redis.sock"
        )
    password = options.pop("password", None) or None
    parsed = _finish(url, None, 0, path, options.pop("db", "0"), False, options)
    return dataclasses.replace(parsed, password=password)


def _finish(  # noqa: PLR0917 - private, called from the two URL forms
    url: str,
    host: str | None,
    port: int,
    unix_path: str | None,
    db_text: str,
    tls: bool,
    options: dict[str, str],
) -> RedisOptions:
    if not db_text.isdigit():
        raise ConfigError(
            f"store URL {redact(url)!r}: database {db_text!r} is not a number (0-15 on a "
            "default Redis)"
        )
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"store URL {redact(url)!r}: prefix {prefix!r} is not valid: use 1-64 letters, "
            "digits, '_', '-', '.' or ':'"
        )
    lease = _seconds(url, options.pop("lease", str(DEFAULT_LEASE)), "lease")
    if lease < MIN_LEASE:
        raise ConfigError(
            f"store URL {redact(url)!r}: lease={lease} s is too short for a heartbeat to "
            f"survive one slow round trip; use at least {MIN_LEASE} s (default {DEFAULT_LEASE})"
        )
    max_age = _seconds(url, options.pop("max_age", str(DEFAULT_MAX_AGE)), "max_age")
    if options:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(options))} in store URL {redact(url)!r}; "
            f"known: {_KNOWN}"
        )
    return RedisOptions(
        url=url,
        host=host,
        port=port,
        unix_path=unix_path,
        db=int(db_text),
        username=None,
        password=None,
        tls=tls,
        ssl_ca_certs=None,
        ssl_certfile=None,
        ssl_keyfile=None,
        ssl_cert_reqs="required",
        prefix=prefix,
        lease=lease,
        max_age=max_age,
    )


def _seconds(url: str, raw: str, key: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"store URL {redact(url)!r}: {key}={raw!r} is not a number of seconds"
        ) from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"store URL {redact(url)!r}: {key}={raw!r} must be a finite number > 0")
    return value


def _is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: may be anywhere
        return False


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the userinfo and in ``?password=``)."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"([?&])password=[^&#]*", r"\1password=***", url)
