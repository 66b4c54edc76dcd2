"""Nodes: every runtime is one. On a shared store, many of them form a cluster."""

from __future__ import annotations

import os
import socket
from typing import NamedTuple


class NodeInfo(NamedTuple):
    """What ``rt.nodes()`` reports of one live node."""

    node_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    functions: tuple[str, ...]
    in_flight: int


def default_node_id() -> str:
    """``<host>-<pid>-<random>``: readable in logs, unique across restarts and hosts."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


def check_node_id(node_id: object) -> str:
    from .config import check_name
    from .errors import ConfigError

    try:
        check_name(node_id)
    except ConfigError:
        raise ConfigError(
            f"node_id={node_id!r} is not valid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or '_' (or leave it out to get host-pid-random)"
        ) from None
    assert isinstance(node_id, str)
    return node_id
