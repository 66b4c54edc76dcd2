"""kind="process": each instance is a worker process (``python -m runtime.worker``).

The runtime and the worker speak msgpack frames (``runtime.frames``) over a socket
pair made for it; the worker's stdout and stderr are forwarded to the ``stint.worker``
logger, line by line, labelled with the instance id. Freeze is a real SIGSTOP
(after PreFreeze) and thaw a SIGCONT; stop, timeout and idle destruction run
PreStop and then end the process (SIGKILL if it does not exit). A worker that
dies on its own fails the attempts it was running (``InstanceCrashedError``,
retried by the normal rules) and the pool replaces it on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from .. import frames
from ..errors import InstanceStartError, StintError
from ..hooks import error_info
from ..messages import InstanceCrashed, InstanceStarted
from ..record import ErrorInfo
from ..states import InstanceState
from .base import Attempt, HookCallback, Instance, Slot

worker_log = logging.getLogger("stint.worker")
_EXIT_GRACE = 1.0  # seconds a worker gets to exit after PreStop before SIGKILL


class InstanceCrashedError(StintError):
    """Recorded for attempts whose worker process died (or broke the protocol) under them."""


class ProcessInstance(Instance):
    kind = "process"
    restart_on_timeout = True

    def start(self) -> None:
        self.pid: int | None = None
        self.cold_start_seconds: float | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._attempts: dict[int, tuple[Slot, Attempt]] = {}
        self._hooks: dict[str, HookCallback] = {}
        self._loaded: asyncio.Future[ErrorInfo | None] | None = None
        self._ending = False  # we are ending it: its exit is no crash
        self._frozen = False
        self.background.start(self._boot(), name=f"stint-boot-{self.instance_id}")

    # start-up ------------------------------------------------------------------

    async def _boot(self) -> None:
        started = time.perf_counter()
        try:
            error = await asyncio.wait_for(self._spawn(), self.spec.config.initializer_timeout)
        except (OSError, TimeoutError) as exc:
            error = error_info(InstanceStartError(f"the worker process did not start: {exc!r}"))
        if error is not None:
            self._end_now()
            self.pool.tell(InstanceStarted(self, error, None))
            return
        self.cold_start_seconds = time.perf_counter() - started
        self.note("worker", f"pid {self.pid}, up in {self.cold_start_seconds * 1000:.1f} ms")
        super().start()  # the Initializer, in the worker

    async def _spawn(self) -> ErrorInfo | None:
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            theirs.close()
        self.pid = self._process.pid
        reader, self._writer = await asyncio.open_connection(sock=ours)
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            assert stream is not None
            self.background.start(self._forward(stream, name), f"stint-{name}-{self.instance_id}")
        self._loaded = asyncio.get_running_loop().create_future()
        self.background.start(self._read(reader), f"stint-frames-{self.instance_id}")
        self._send(frames.LOAD, self._load_spec())
        return await self._loaded

    def _load_spec(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "function": self.spec.name,
            "handler": self.spec.paths["handler"],
            "hooks": {
                "initializer": self.spec.paths.get("initializer"),
                "pre_freeze": self.spec.paths.get("pre_freeze"),
                "pre_stop": self.spec.paths.get("pre_stop"),
            },
        }

    async def _forward(self, stream: asyncio.StreamReader, name: str) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            worker_log.info("[%s %s] %s", self.instance_id, name, text)

    # frames ---------------------------------------------------------------------

    def _send(self, kind: str, *fields: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frames.encode(kind, *fields))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the worker process exited"
        protocol = False
        try:
            while True:
                kind, fields = await frames.read(reader)
                self._on_frame(kind, fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (frames.ProtocolError, ValueError, TypeError, IndexError) as exc:
            reason, protocol = f"the worker broke the protocol: {exc}", True
        if not protocol and not self._ending and self._process is not None:
            with contextlib.suppress(TimeoutError):  # its exit code makes a better reason
                await asyncio.wait_for(self._process.wait(), 1.0)
        self._lost(reason, protocol)

    def _on_frame(self, kind: str, fields: tuple[Any, ...]) -> None:
        if kind == frames.LOADED:
            self._resolve_load(None)
        elif kind == frames.LOAD_FAILED:
            self._resolve_load(ErrorInfo(*fields[0]))
        elif kind == frames.HOOK_DONE:
            name, error, seconds = fields
            done = self._hooks.pop(name, None)
            if done is not None:
                done(None if error is None else ErrorInfo(*error), float(seconds))
        elif kind == frames.RESULT:
            self._finished(fields[0], bytes(fields[1]), None, True)
        elif kind == frames.ERROR:
            attempt_id, error, retryable = fields
            self._finished(attempt_id, None, ErrorInfo(*error), bool(retryable))
        else:
            raise frames.ProtocolError(f"a worker does not send {kind!r} frames")

    def _resolve_load(self, error: ErrorInfo | None) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(error)

    def _finished(
        self, attempt_id: int, result: bytes | None, error: ErrorInfo | None, retryable: bool
    ) -> None:
        found = self._attempts.pop(attempt_id, None)
        if found is None:
            return  # interrupted and reported already
        slot, attempt = found
        if not attempt.done:
            attempt.result = result
            attempt.error = error
            attempt.retryable = retryable
            self.report(attempt)
        self.free(slot)

    def _lost(self, reason: str, protocol: bool) -> None:
        """The worker is gone (or unusable): fail what it ran, and tell the pool."""
        if self._ending:
            return
        self._ending = True
        code = self._process.returncode if self._process is not None else None
        detail = reason if code is None else f"{reason} (exit code {code})"
        self._end_now()
        self._resolve_load(error_info(InstanceStartError(detail)))
        crash = ErrorInfo(InstanceCrashedError.__name__, detail, "")
        for attempt_id in list(self._attempts):
            self._finished(attempt_id, None, crash, True)
        for done in list(self._hooks.values()):
            done(crash, 0.0)
        self._hooks.clear()
        if self.state is not InstanceState.STARTING:
            self.pool.tell(InstanceCrashed(self, detail, protocol))

    # what the pool asks -----------------------------------------------------------

    def _execute_hook(self, name: str, hook: Any, timeout: float, done: HookCallback) -> None:
        self._hooks[name] = self._answer_once(name, timeout, done)
        self._send(frames.HOOK, name)

    def activate(self) -> None:
        pass

    def run(self, slot: Slot, attempt: Attempt) -> None:
        attempt_id = next(self._ids)
        self._attempts[attempt_id] = (slot, attempt)
        context = attempt.context
        self._send(
            frames.RUN,
            attempt_id,
            attempt.payload,
            context.task_id,
            context.function,
            attempt.number,
            context.deadline,
        )

    def cut(self, slot: Slot, attempt: Attempt, reason: str) -> None:
        for attempt_id, (found, _) in list(self._attempts.items()):
            if found is slot:
                del self._attempts[attempt_id]
                self._send(frames.CANCEL, attempt_id)
                self.free(slot)

    def frozen(self) -> None:
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            self._signal(signal.SIGCONT)
            self._frozen = False

    def stop(self, reason: str, detail: str = "") -> None:
        self.thaw()  # a stopped process cannot run its PreStop
        super().stop(reason, detail)

    def destroy(self) -> None:
        if self._ending:
            return
        self._ending = True
        self.background.start(self._end(), name=f"stint-reap-{self.instance_id}")

    async def _end(self) -> None:
        """Ask the worker to exit; SIGKILL it if it has not within the grace; reap it."""
        process = self._process
        if process is None:
            return
        self.thaw()
        self._send(frames.EXIT)
        try:
            await asyncio.wait_for(process.wait(), _EXIT_GRACE)
        except TimeoutError:
            pass
        finally:  # also when close() cancels us: never leave the process running
            self._end_now()
        await process.wait()

    def _end_now(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _signal(self, signum: int) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
