"""``stint serve``: one event loop runs the runtime and the HTTP server until a signal.

The first SIGINT/SIGTERM shuts down gracefully: the event streams end, uvicorn
stops accepting and finishes the requests in flight, then ``rt.close()`` lets
running attempts finish (up to the runtime's ``close_timeout``) and runs PreStop.
Each step is logged with what it waits for and how long it took. A second signal
cuts it short: uvicorn stops waiting and ``close()`` is cancelled, which
interrupts what still runs and still closes the store properly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import socket
import time
from typing import Any

import uvicorn

from runtime import ConfigError, Runtime, StintError
from runtime.loop import run as run_loop

from . import logs
from .app import create_app
from .target import load_runtime

logger = logging.getLogger("stint.serve")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds a cancelled ``close()`` gets after the second signal before the node exits anyway.
CUT_GRACE = 5.0


class ServeError(StintError):
    """Raised when ``stint serve`` cannot start: a bad target, a busy port, an unsafe bind."""


@dataclasses.dataclass
class ServeOptions:
    """Everything ``stint serve`` takes (see ``stint serve --help``)."""

    target: str
    store: str | None = None
    host: str = "127.0.0.1"
    port: int = 8800
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    token: str | None = None
    insecure: bool = False
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False
    loop: str = "auto"


def main(options: ServeOptions) -> int:
    """Run a node until a signal; the process exit code (0, or 1 if it could not start)."""
    logs.configure(options.log_level, options.log_format, access_log=options.access_log)
    try:
        return run_loop(serve(options), loop=options.loop)
    except (ServeError, ConfigError) as error:
        logger.error("cannot start: %s", error)
        return 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to expose an unauthenticated node beyond this machine."""
    if is_loopback(host) or token:
        return
    if not insecure:
        raise ServeError(
            f"refusing to listen on {host} without a token: anyone who reaches it could run "
            "and stop tasks. Pass --token (or set STINT_TOKEN), or --insecure if the network "
            "is trusted"
        )
    logger.warning("listening beyond loopback WITHOUT a token (--insecure)", extra={"host": host})


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts (a busy port fails first)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port "
            "or --host"
        ) from None


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the node handles signals itself."""

    def capture_signals(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class Node:
    """A runtime and its HTTP server in one loop, and the shutdown between them."""

    def __init__(self, rt: Runtime, options: ServeOptions, sock: socket.socket) -> None:
        self.rt = rt
        self.options = options
        self.sock = sock
        self.app = create_app(rt, token=options.token)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=options.access_log,
            lifespan="off",
            ws="none",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
        self.server = _Server(config)
        self.stopping = asyncio.Event()
        self.cut = asyncio.Event()
        self.abandoned = False  # the runtime did not close even after the cut
        self.signals = 0
        self.closing: asyncio.Task[None] | None = None

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            logger.info("%s: shutting down gracefully (send it again to cut the wait short)", name)
            self.stopping.set()
            return
        logger.warning("%s again: cutting the shutdown short", name)
        self.cut.set()
        self.server.force_exit = True
        if self.closing is not None and not self.closing.done():
            self.closing.cancel()

    async def run(self) -> None:
        http = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        # uvicorn says it started with a flag, not an event
        while not self.server.started and not http.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if http.done():
            http.result()
            raise ServeError("the HTTP server stopped while starting")
        host, port = self.sock.getsockname()[:2]
        logger.info(
            "listening on http://%s:%s (dashboard /, API /v1, docs /docs)",
            _host_for_url(host),
            port,
            extra={"store": self.rt.store.url, "functions": len(self.rt.functions)},
        )
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([http, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if http.done() and not self.stopping.is_set():
            logger.error("the HTTP server stopped unexpectedly; closing the runtime")
        await self._stop_http(http)
        await self._close_runtime()

    async def _stop_http(self, http: asyncio.Task[None]) -> None:
        started = time.monotonic()
        streams = self.app.state.streams
        connections = len(self.server.server_state.connections)
        logger.info(
            "stopping the HTTP server: no new connections; waiting up to %s s for %d open "
            "one(s) (%d event stream(s) are ended now)",
            self.server.config.timeout_graceful_shutdown,
            connections,
            len(streams),
        )
        streams.close_all()
        self.server.should_exit = True
        await asyncio.wait([http])
        logger.info("HTTP server stopped in %.2f s", time.monotonic() - started)

    async def _close_runtime(self) -> None:
        started = time.monotonic()
        logger.info(
            "closing the runtime: running attempts get up to close_timeout=%s s, then PreStop "
            "runs on every instance",
            self.rt.close_timeout,
        )
        self.closing = asyncio.create_task(self.rt.close())
        cut = asyncio.create_task(self.cut.wait())
        await asyncio.wait([self.closing, cut], return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if not self.closing.done():  # cut short: the cancelled close() gets a bounded while
            await asyncio.wait([self.closing], timeout=CUT_GRACE)
        elapsed = time.monotonic() - started
        if not self.closing.done():
            logger.error(
                "the runtime had not closed %s s after the cut; exiting without it "
                "(unfinished tasks are lost unless the store is durable)",
                CUT_GRACE,
            )
            self.abandoned = True
        elif self.closing.cancelled():
            logger.warning("runtime closed in %.2f s, cut short by a second signal", elapsed)
        else:
            self.closing.result()
            logger.info(
                "runtime closed in %.2f s",
                elapsed,
                extra={"unfinished": self.rt.close_unfinished or 0},
            )


async def serve(options: ServeOptions) -> int:
    """Load the target, bind, start the runtime and serve until a signal; 0 when done."""
    check_bind(options.host, options.token, options.insecure)
    rt = load_runtime(options.target, options.store)
    sock = bind(options.host, options.port)
    loop = asyncio.get_running_loop()
    node = Node(rt, options, sock)
    for signum in SIGNALS:
        loop.add_signal_handler(signum, node.on_signal, signum)
    try:
        try:
            await rt.start()
        except StintError as error:
            raise ServeError(f"the runtime did not start: {error}") from None
        if options.metrics_port is not None:
            host, port = await rt.serve_metrics(options.metrics_host, options.metrics_port)
            logger.info("metrics on http://%s:%s/metrics", _host_for_url(host), port)
        await node.run()
        if node.abandoned:
            return 1
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        sock.close()
        if rt.started and not node.stopping.is_set():  # failed after start: close it
            await rt.close()
    return 0


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
