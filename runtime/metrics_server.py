"""Serving a metrics registry over HTTP with prometheus_client's own threaded server."""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from .errors import ConfigError


class MetricsServer:
    """prometheus_client's WSGI server in its own thread; scrapes read on the event loop."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.address = (str(host), int(port))

    @classmethod
    async def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}); pick a free port "
                "(metrics_port) or pass port=0 for any"
            ) from None
        return cls(server, thread)

    async def close(self) -> None:
        # shutdown() blocks until serve_forever notices (up to its 0.5 s poll): off the loop
        await asyncio.get_running_loop().run_in_executor(None, self._server.shutdown)
        self._server.server_close()
        self._thread.join(timeout=5)
