"""kind="process": each instance is a worker process (``runtime.worker``).

The runtime and the worker speak msgpack frames (``runtime.frames``) over a socket
pair made for it; the worker's stdout and stderr are forwarded to the ``stint.worker``
logger, line by line, labelled with the instance id. Each worker leads a session
(and process group) of its own: the terminal's Ctrl-C does not reach it, and
ending it kills the group, so processes a handler started go with it. Freeze is a
real SIGSTOP (after PreFreeze) and thaw a SIGCONT; stop, timeout and idle
destruction run PreStop and then end the process (SIGKILL if it does not exit). A
worker that dies on its own, or breaks the protocol, fails the attempts it was
running (``InstanceCrashedError``, retried by the normal rules) and the pool
replaces it on demand.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from typing import Any

from .. import frames, worker
from ..errors import InstanceStartError, StintError
from ..hooks import error_info
from ..messages import InstanceCrashed, InstanceStarted
from ..record import ErrorInfo
from ..states import InstanceState
from .base import Attempt, HookCallback, Instance, Slot

worker_log = logging.getLogger("stint.worker")
logger = logging.getLogger("stint")
_EXIT_GRACE = 1.0  # seconds a worker gets to exit after PreStop before SIGKILL
_OUTPUT_GRACE = 1.0  # seconds its output gets to drain once it is gone
LINE_MAX = 64 * 1024  # characters of output per log record: longer lines go in pieces


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
        self._outbox = frames.Outbox(self._write)
        self._ids = itertools.count(1)
        self._attempts: dict[int, tuple[Slot, Attempt]] = {}
        self._hooks: dict[str, HookCallback] = {}
        self._loaded: asyncio.Future[ErrorInfo | None] | None = None
        self._ending = False  # we are ending it: its exit is no crash
        self._frozen = False
        self._outputs: list[OutputForwarder] = []
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
            self.report_to_pool(InstanceStarted(self, error, None))
            return
        self.cold_start_seconds = time.perf_counter() - started
        self.note("worker", f"pid {self.pid}, up in {self.cold_start_seconds * 1000:.1f} ms")
        super().start()  # the Initializer, in the worker

    async def _spawn(self) -> ErrorInfo | None:
        ours, theirs = socket.socketpair()
        write_ends: list[int] = []
        try:
            write_ends.append(await self._output_pipe("stdout"))
            write_ends.append(await self._output_pipe("stderr"))
            self._process = await asyncio.create_subprocess_exec(
                *worker.command(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_ends[0],
                stderr=write_ends[1],
                env=worker.environment(),
                start_new_session=True,  # a group to kill whole; no Ctrl-C from the terminal
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            for fd in write_ends:  # the worker holds them now (and EOF comes when it is gone)
                os.close(fd)
        self.pid = self._process.pid
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._loaded = asyncio.get_running_loop().create_future()
        self.background.start(self._read(reader), f"stint-frames-{self.instance_id}")
        self._send(frames.LOAD, *self._load_fields())
        return await self._loaded

    async def _output_pipe(self, name: str) -> int:
        """A pipe whose read end is forwarded to the log; returns the write end."""
        read_end, write_end = os.pipe()
        pipe = os.fdopen(read_end, "rb", buffering=0)
        forwarder = OutputForwarder(f"[{self.instance_id} {name}]")
        try:
            await asyncio.get_running_loop().connect_read_pipe(lambda: forwarder, pipe)
        except BaseException:
            pipe.close()
            os.close(write_end)
            raise
        self._outputs.append(forwarder)
        return write_end

    def _load_fields(self) -> tuple[str | None, ...]:
        paths = self.spec.paths
        hooks = (paths.get(name) for name in frames.HOOKS)
        return (self.instance_id, self.spec.name, paths["handler"], *hooks)

    # frames ---------------------------------------------------------------------

    def _send(self, kind: str, *fields: Any) -> None:
        """Queue a frame: what is sent in one loop turn goes to the worker as one batch."""
        if self._writer is not None and not self._writer.is_closing():
            self._outbox.add(kind, *fields)

    def _write(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Act on the worker's frames until it goes; however that happens, end in ``_lost``."""
        reason = "the worker process exited"
        protocol = False
        try:
            while True:
                for kind, fields in await frames.read(reader, frames.FROM_WORKER):
                    self._on_frame(kind, fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except frames.ProtocolError as exc:
            reason, protocol = _broke_protocol(exc), True
        except asyncio.CancelledError:  # the runtime is closing: what ran is lost, not failed
            self._end_now()
            raise
        except Exception as exc:  # a bug in stint: still, never leave a worker half-read
            logger.exception("reading the frames of instance %s failed", self.instance_id)
            reason = f"the runtime could not read the worker's frames ({exc!r})"
        if not protocol and not self._ending and self._process is not None:
            with contextlib.suppress(TimeoutError):  # its exit code makes a better reason
                await asyncio.wait_for(self._process.wait(), 1.0)
        self._lost(reason, protocol)

    def _on_frame(self, kind: str, fields: tuple[Any, ...]) -> None:
        """One frame from the worker, already checked against ``frames.SCHEMA``."""
        if kind == frames.RESULT:
            self._finished(fields[0], fields[1], None, True)
        elif kind == frames.ERROR:
            attempt_id, error, types = fields
            retryable = self.spec.config.is_retryable_name(types)
            self._finished(attempt_id, None, ErrorInfo(*error), retryable)
        elif kind == frames.HOOK_DONE:
            name, error, seconds = fields
            done = self._hooks.pop(name, None)
            if done is not None:
                done(None if error is None else ErrorInfo(*error), seconds)
        elif kind == frames.LOADED:
            if fields[0] != self.pid:
                raise frames.ProtocolError(f"a 'loaded' frame says pid {fields[0]}, not {self.pid}")
            self._resolve_load(None)
        else:  # LOAD_FAILED: read() lets nothing else through
            self._resolve_load(ErrorInfo(*fields[0]))

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
        # A PreStop under way ends with the crash as its outcome: the pool destroys the
        # instance on that, so it needs no second word of the same end.
        stopping = "pre_stop" in self._hooks
        for done in list(self._hooks.values()):
            done(crash, 0.0)
        self._hooks.clear()
        if self.state is not InstanceState.STARTING and not stopping:
            self.report_to_pool(InstanceCrashed(self, detail, protocol))
        self.background.start(self._reap(), name=f"stint-reap-{self.instance_id}")

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
        """Ask the worker to exit; SIGKILL its group if it has not within the grace; reap it."""
        process = self._process
        if process is None:
            return
        self.thaw()
        self._send(frames.EXIT)
        try:
            await asyncio.wait_for(process.wait(), _EXIT_GRACE)
        except TimeoutError:
            pass
        finally:  # also when close() cancels us: never leave the process (or its children)
            self._end_now()
        await self._reap()

    async def _reap(self) -> None:
        """Wait for the killed worker, let its output drain, close the pipes."""
        if self._process is not None:
            await self._process.wait()
        open_outputs = [f.closed for f in self._outputs if not f.closed.done()]
        if open_outputs:  # EOF comes once the whole group is gone: bounded all the same
            await asyncio.wait(open_outputs, timeout=_OUTPUT_GRACE)
        for forwarder in self._outputs:
            forwarder.close()

    def _end_now(self) -> None:
        self._kill_group()
        self._close_writer()

    def _kill_group(self) -> None:
        """SIGKILL the worker and whatever its handlers started: its process group.

        Also after the worker itself exited: what it started may still run. (The group's
        id cannot be reused while any process is in it.)
        """
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's group (SIGSTOP / SIGCONT freeze all it runs)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)


def _broke_protocol(exc: frames.ProtocolError) -> str:
    return (
        f"the worker broke the protocol ({exc}), so it was killed; the attempts it ran fail "
        "and are retried on a fresh worker. Handler code must not write to the worker's "
        "frame socket (STINT_WORKER_FD); if yours does not, this is a bug in stint: report it"
    )


class OutputForwarder(asyncio.Protocol):
    """Forwards one output stream of a worker to the ``stint.worker`` log, line by line.

    The loop reads the pipe whenever data arrives, so a worker never blocks on a
    full pipe; a line longer than ``line_max`` characters is forwarded in pieces as
    it comes, never held whole. ``closed`` is done once the stream is.
    """

    def __init__(self, label: str, line_max: int = LINE_MAX) -> None:
        self.label = label
        self.line_max = line_max
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.BaseTransport | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # the start of a line whose end has not come yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + self._decoder.decode(data)).split("\n")
        partial = lines.pop()
        for line in lines:
            self._forward(line.rstrip())
        while len(partial) >= self.line_max:
            self._emit(partial[: self.line_max])
            partial = partial[self.line_max :]
        self._partial = partial

    def connection_lost(self, exc: Exception | None) -> None:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._forward(rest.rstrip())
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _forward(self, line: str) -> None:
        for start in range(0, max(len(line), 1), self.line_max):
            self._emit(line[start : start + self.line_max])

    def _emit(self, text: str) -> None:
        worker_log.info("%s %s", self.label, text)
