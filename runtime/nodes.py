"""Nodes: every runtime is one. On a shared store, many of them form a cluster."""

from __future__ import annotations

import dataclasses
import os
import re
import socket

from .errors import ConfigError

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node, as ``rt.nodes()`` reports it."""

    node_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    functions: tuple[str, ...]
    in_flight: int


def default_node_id() -> str:
    """``<host>-<pid>-<random>``: readable in ``nodes()`` and logs, unique across restarts."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:80] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` if it is a valid node id, else raise :class:`ConfigError`."""
    if not isinstance(node_id, str) or _NODE_ID_RE.fullmatch(node_id) is None:
        raise ConfigError(
            f"node_id {node_id!r} is not valid: use 1-128 letters, digits, '_', '-' or '.' "
            "(or omit it to get <host>-<pid>-<random>)"
        )
    return node_id
