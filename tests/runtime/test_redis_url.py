"""The redis:// store URL: every form the issue names, and a clear error for anything else."""

from __future__ import annotations

import logging

import pytest

from runtime.errors import ConfigError
from runtime.stores.redis import RedisKeys, check_node_id, default_node_id, parse_redis_url, redact
from runtime.stores.redis.url import DEFAULT_LEASE, DEFAULT_MAX_AGE


def test_plain_url_defaults() -> None:
    options = parse_redis_url("redis://localhost")
    assert (options.host, options.port, options.db) == ("localhost", 6379, 0)
    assert (options.username, options.password, options.tls) == (None, None, False)
    assert (options.prefix, options.lease, options.max_age) == (
        "stint",
        DEFAULT_LEASE,
        DEFAULT_MAX_AGE,
    )
    assert options.unix_path is None


def test_every_part_of_a_tcp_url() -> None:
    options = parse_redis_url(
        "redis://alice:s%40cret@10.0.0.5:7000/3?prefix=app.q&lease=4.5&max_age=60"
    )
    assert (options.host, options.port, options.db) == ("10.0.0.5", 7000, 3)
    assert (options.username, options.password) == ("alice", "s@cret")
    assert (options.prefix, options.lease, options.max_age) == ("app.q", 4.5, 60.0)


def test_password_without_user_and_tls() -> None:
    options = parse_redis_url("rediss://:pw@cache.example.com:6380")
    assert options.tls and options.username is None and options.password == "pw"
    assert not options.insecure


def test_unix_socket_url() -> None:
    options = parse_redis_url("unix:///run/redis/redis.sock?db=2&password=pw&prefix=x")
    assert options.unix_path == "/run/redis/redis.sock"
    assert (options.host, options.db, options.password, options.prefix) == (None, 2, "pw", "x")
    assert not options.insecure


def test_ipv6_loopback_is_loopback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "stint"):
        options = parse_redis_url("redis://[::1]:6379")
    assert options.host == "::1" and not options.insecure and not caplog.records


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.1.2.3:6379",
        "redis://redis.internal",
        "rediss://user@cache.example.com",  # a user but no password
    ],
)
def test_no_password_off_this_machine_warns_loudly(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "stint"):
        options = parse_redis_url(url)
    assert options.insecure
    [warning] = caplog.records
    assert (
        "no password" in warning.getMessage() and "redis://:PASSWORD@host" in warning.getMessage()
    )


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1", "redis://localhost:6379/1", "unix:///tmp/r.sock"]
)
def test_loopback_without_password_is_quiet(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "stint"):
        assert not parse_redis_url(url).insecure
    assert not caplog.records


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost", "not a Redis URL"),
        ("redis://", "names no host"),
        ("redis://localhost:notaport", "malformed"),
        ("redis://localhost/abc", "not a number"),
        ("redis://localhost?db=2", "as the path"),
        ("redis://localhost?prefix=", "prefix"),
        ("redis://localhost?prefix=a{b}", "prefix"),
        ("redis://localhost?lease=0", "> 0"),
        ("redis://localhost?lease=fast", "not a number"),
        ("redis://localhost?lease=0.1", "too short"),
        ("redis://localhost?max_age=-1", "> 0"),
        ("redis://localhost?max_age=inf", "finite"),
        ("redis://localhost?leas=3", "unknown option(s) leas"),
        ("unix://", "names no socket"),
        ("unix://host/path.sock", "names no socket"),
    ],
)
def test_bad_urls_say_what_to_do(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"store URL|unknown option") as caught:
        parse_redis_url(url)
    assert says in str(caught.value)


def test_not_a_string() -> None:
    with pytest.raises(ConfigError, match="URL string"):
        parse_redis_url(6379)  # type: ignore[arg-type]


def test_passwords_never_reach_messages() -> None:
    assert redact("redis://alice:secret@host:1/0") == "redis://alice:***@host:1/0"
    assert redact("redis://:secret@host") == "redis://:***@host"
    assert redact("unix:///s.sock?password=secret&db=1") == "unix:///s.sock?password=***&db=1"
    with pytest.raises(ConfigError) as caught:
        parse_redis_url("redis://:secret@host?nope=1")
    assert "secret" not in str(caught.value)
    assert "secret" not in repr(parse_redis_url("redis://:secret@localhost"))


def test_keys_all_live_under_the_prefix() -> None:
    keys = RedisKeys("app")
    names = [
        keys.idx_all, keys.fns, keys.streams, keys.due, keys.ended, keys.nodes, keys.changed,
        keys.task("t1"), keys.idx_function("f"), keys.idx_status("Running"),
        keys.idx_function_status("f", "Running"), keys.stream("f"), keys.function("f"),
        keys.node("n1"), keys.control("n1"), keys.reclaim_lock("n1"), keys.bell("f"),
        keys.joining, keys.watched("t1"), keys.clock,
    ]  # fmt: skip
    assert all(name.startswith("app:") for name in names)
    assert len(set(names)) == len(names)
    assert keys.index("f", "Running") == keys.idx_function_status("f", "Running")
    assert keys.index("f", None) == keys.idx_function("f")
    assert keys.index(None, "Running") == keys.idx_status("Running")
    assert keys.index(None, None) == keys.idx_all


def test_node_ids() -> None:
    node_id = default_node_id()
    assert check_node_id(node_id) == node_id
    assert default_node_id() != node_id
    for bad in ("", "a b", "x" * 129, "a:b", None):
        with pytest.raises(ConfigError, match="node_id"):
            check_node_id(bad)


def test_tls_options() -> None:
    options = parse_redis_url(
        "rediss://:pw@cache:6380?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        "&ssl_cert_reqs=optional"
    )
    assert (options.ssl_ca_certs, options.ssl_certfile, options.ssl_keyfile) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert options.ssl_cert_reqs == "optional"
    assert parse_redis_url("rediss://:pw@cache").ssl_cert_reqs == "required"
    with pytest.raises(ConfigError, match="only apply to TLS: use rediss://"):
        parse_redis_url("redis://localhost?ssl_ca_certs=/ca.pem")
    with pytest.raises(ConfigError, match="ssl_cert_reqs='maybe'"):
        parse_redis_url("rediss://:pw@cache?ssl_cert_reqs=maybe")
