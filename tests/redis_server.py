"""A real ``redis-server`` for the tests: a free loopback port, a temp dir, AOF on, never a fake.

Started once per session by the ``redis_server`` fixture (tests/conftest.py);
outage tests start their own with ``make_redis_server`` so restarting or killing
it disturbs nobody else. Without the binary those tests are skipped with
:data:`SKIP_REASON`; ``.ci/run`` installs it, so CI skips none.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import time

REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")
SKIP_REASON = "redis-server not found: install it with `apt-get install -y redis-server`"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``restart`` keeps its port and dir (the AOF is reloaded)."""

    def __init__(
        self, directory: pathlib.Path, port: int | None = None, *, tls: bool = False
    ) -> None:
        assert REDIS_SERVER is not None, SKIP_REASON
        self.directory = directory
        self.port = port or free_port()
        self.unix_socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"
        self.tls = tls
        self.ca = directory / "ca.pem"

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _make_certificates(self) -> list[str]:
        """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
        assert OPENSSL is not None
        d = self.directory
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for args in (
            ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=stint test CA"],
            ["req", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext"],
        ):  # fmt: skip
            subprocess.run([OPENSSL, *args], cwd=d, check=True, capture_output=True)
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(d / "server.pem"),
            "--tls-key-file", str(d / "server.key"),
            "--tls-ca-cert-file", str(d / "ca.pem"),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        tls_args = self._make_certificates() if self.tls else []
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--unixsocket", str(self.unix_socket),
            "--unixsocketperm", "700",
            "--appendonly", "yes",
            "--appendfsync", "always",  # a restart in a test must find every write
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log),
            *tls_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text() if self.log.exists() else "(no log)"
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        """True once the server says PONG (not LOADING, not refusing)."""
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                )
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.ca))
                    sock = stack.enter_context(
                        context.wrap_socket(sock, server_hostname="127.0.0.1")
                    )
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait: the server syncs its AOF and exits."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL: as a crash (with appendfsync always, nothing acknowledged is lost)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (as across a partition)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self, *, lose_data: bool = False) -> None:
        """Stop and start on the same port; ``lose_data`` deletes the AOF in between."""
        self.stop()
        if lose_data:
            shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        self.start()

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (for fixtures: no event loop needed)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self.command("FLUSHALL")
