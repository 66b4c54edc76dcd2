"""The worker process of a ``kind="process"`` instance.

The runtime starts it with :func:`command` and :func:`environment`: the
interpreter runs :data:`BOOTSTRAP`, which ignores SIGINT (the runtime closes its
workers; Ctrl-C is the runtime's business), sets ``sys.path`` to the runtime's
own, resolved (never the working directory, which ``-P`` keeps off it), and only
then imports stint and calls :func:`main`.

It speaks frames (``runtime.frames``) on the socket FD it inherits — never on
stdout or stderr, which user code may print to and the parent forwards to its
log — and checks every frame it reads against the protocol's schema. It imports
the handler and hooks by path, runs hooks when told, and runs attempts: async
handlers as tasks (``concurrency`` of them at once), blocking ones on threads of
its own (:class:`HandlerThreads`), so cancellations are still read while they run.
What it answers in one loop turn goes back as one batch of frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import inspect
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import codec, frames
from .config import qualified_names
from .context import InstanceContext, TaskContext

PATH_ENV = "STINT_WORKER_SYS_PATH"
PROTOCOL_EXIT = 2  # the exit code of a worker that read something that is not a frame

#: What the worker's interpreter runs first (``python -P -c BOOTSTRAP FD``).
BOOTSTRAP = (
    "import signal; signal.signal(signal.SIGINT, lambda signum, frame: None)\n"
    "import json, os, sys\n"
    f"sys.path[:] = json.loads(os.environ.pop({PATH_ENV!r}))\n"
    "from runtime.worker import main\n"
    "main()\n"
)


def command(fd: int) -> list[str]:
    """The argv of a worker that speaks frames on the socket ``fd``."""
    # -P: neither the working directory nor a script's directory goes first on sys.path
    return [sys.executable, "-P", "-c", BOOTSTRAP, str(fd)]


def environment() -> dict[str, str]:
    """A worker's environment: this process's, its resolved sys.path, unbuffered output."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", PATH_ENV: json.dumps(import_path())}


def import_path() -> list[str]:
    """This process's ``sys.path`` with every relative directory made absolute (``''`` is
    the current directory, as it is for imports here): a worker imports what this process
    would. Entries that are not directories (an editable install's path-hook marker, a
    zip file) are kept as they are: they mean the same in the worker."""
    return [_absolute(entry) for entry in sys.path if isinstance(entry, str)]


def _absolute(entry: str) -> str:
    if entry == "" or os.path.isdir(entry):
        return os.path.abspath(entry)
    return entry


def resolve(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (ImportError / AttributeError if not)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ImportError(f"{path!r} is not an import path of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{exc}, importing {path!r}; the worker searched the runtime's sys.path "
            f"{sys.path}: put the module in one of these directories, or add its directory to "
            "sys.path in the process that runs the runtime",
            name=exc.name,
        ) from exc
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


def _error(exc: BaseException) -> tuple[str, str, str]:
    """``(type, message, traceback)`` of ``exc``, each clipped to what a frame may carry."""
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of the {type(exc).__name__} failed>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = ""
    return (_clip(type(exc).__name__), _clip(message), _clip(text))


def error_types(exc: BaseException) -> list[str]:
    """The qualified names of ``exc``'s classes (its MRO, most derived first) as an ERROR
    frame carries them: names over the frame's limit are left out (no class the runtime
    could name is that long), and an MRO over ``frames.MAX_TYPES`` keeps its two ends —
    the error's own classes and the builtin bases a default policy names."""
    names = [name for name in qualified_names(exc) if len(name) <= frames.MAX_NAME]
    if len(names) <= frames.MAX_TYPES:
        return names
    half = frames.MAX_TYPES // 2
    return names[:half] + names[-half:]


def _clip(text: str) -> str:
    if len(text) <= frames.MAX_TEXT:
        return text
    note = " [... clipped]"
    return text[: frames.MAX_TEXT - len(note)] + note


class Worker:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.outbox = frames.Outbox(writer.write)
        self.handler: Callable[..., Any] | None = None
        self.threads: HandlerThreads | None = None  # for a blocking handler
        self.hooks: dict[str, Callable[..., Any] | None] = {}
        self.instance: InstanceContext | None = None
        self.running: dict[int, TaskContext] = {}  # attempt id -> context, until answered
        self.tasks: dict[int, asyncio.Task[None]] = {}  # an async handler's attempts
        self.hooks_running: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs

    def send(self, kind: str, *fields: Any) -> None:
        """Queue a frame: what is answered in one loop turn goes out as one batch."""
        self.outbox.add(kind, *fields)

    def handle(self, kind: str, fields: tuple[Any, ...]) -> bool:
        """Act on one frame (checked against the schema already); False when told to exit."""
        if kind == frames.EXIT:
            return False
        if kind == frames.LOAD:
            self.load(*fields)
            return True
        instance = self.instance
        if instance is None:
            raise frames.ProtocolError(f"a {kind!r} frame came before the 'load' frame")
        if kind == frames.RUN:
            attempt_id, payload, task_id, function, number, deadline = fields
            self.run(
                attempt_id, payload, TaskContext(task_id, function, number, deadline, instance)
            )
        elif kind == frames.CANCEL:
            self.cancel(fields[0])
        elif kind == frames.HOOK:
            hook = asyncio.get_running_loop().create_task(self.hook(fields[0], instance))
            self.hooks_running.add(hook)
            hook.add_done_callback(self.hooks_running.discard)
        return True

    def load(self, instance_id: str, function: str, handler: str, *hooks: str | None) -> None:
        if self.instance is not None:
            raise frames.ProtocolError("a second 'load' frame")
        self.instance = InstanceContext(instance_id, function, "process")
        try:
            self.handler = resolve(handler)
            self.hooks = {
                name: resolve(path) if path else None
                for name, path in zip(frames.HOOKS, hooks, strict=True)
            }
        except BaseException as exc:
            self.send(frames.LOAD_FAILED, _error(exc))
            return
        if not inspect.iscoroutinefunction(self.handler):
            self.threads = HandlerThreads(self.handler, self.finished)
        self.send(frames.LOADED, os.getpid())

    async def hook(self, name: str, instance: InstanceContext) -> None:
        hook = self.hooks.get(name)
        started = time.perf_counter()
        error = None
        try:
            if hook is not None and inspect.iscoroutinefunction(hook):
                await hook(instance)
            elif hook is not None:
                await asyncio.to_thread(hook, instance)
        except BaseException as exc:
            error = _error(exc)
        self.send(frames.HOOK_DONE, name, error, time.perf_counter() - started)

    def run(self, attempt_id: int, payload: bytes, context: TaskContext) -> None:
        """Start an attempt: a blocking handler's on a handler thread, an async one's as a
        task of its own."""
        self.running[attempt_id] = context
        try:
            event = codec.decode(payload)
        except BaseException as exc:
            self.finished(attempt_id, None, exc)
            return
        if self.threads is not None:
            self.threads.submit(attempt_id, event, context)
        else:
            task = asyncio.get_running_loop().create_task(
                self.run_async(attempt_id, event, context)
            )
            self.tasks[attempt_id] = task

    async def run_async(self, attempt_id: int, event: Any, context: TaskContext) -> None:
        handler = self.handler
        assert handler is not None
        try:
            value = await handler(event, context)
        except asyncio.CancelledError:
            return  # the parent already counted this attempt as interrupted
        except BaseException as exc:
            self.finished(attempt_id, None, exc)
        else:
            self.finished(attempt_id, value, None)
        finally:
            self.tasks.pop(attempt_id, None)

    def finished(self, attempt_id: int, value: Any, error: BaseException | None) -> None:
        """Answer an attempt with its result or error, unless it was cancelled meanwhile."""
        if self.running.pop(attempt_id, None) is None:
            return  # cancelled: the parent already counted it as interrupted
        if error is None:
            try:
                data = _result_bytes(value)
            except BaseException as exc:
                error = exc
            else:
                self.send(frames.RESULT, attempt_id, data)
                return
        self.send(frames.ERROR, attempt_id, _error(error), error_types(error))

    def cancel(self, attempt_id: int) -> None:
        """Ask a running attempt to stop; its answer, if one comes, is not sent."""
        context = self.running.pop(attempt_id, None)
        if context is not None:
            context.request_stop()
            task = self.tasks.pop(attempt_id, None)
            if task is not None:
                task.cancel()


class HandlerThreads:
    """Threads that run a blocking handler's attempts, so the loop still reads frames (and
    cancellations) while they run.

    Cheaper than ``asyncio.to_thread`` per attempt, which the profile showed costing more
    than the rest of an attempt: the threads take attempts from one queue, one after
    another while there are any, and put their outcomes on one deque that the loop drains
    in a single callback — woken once for however many outcomes came meanwhile. Threads
    start as attempts wait for one, up to the default executor's number (so as many
    blocking attempts run at once as with ``to_thread``).
    """

    LIMIT = min(32, (os.cpu_count() or 1) + 4)  # as concurrent.futures.ThreadPoolExecutor

    def __init__(
        self,
        handler: Callable[..., Any],
        finished: Callable[[int, Any, BaseException | None], None],
    ) -> None:
        self._handler = handler
        self._finished = finished
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[tuple[int, Any, TaskContext]] = queue.SimpleQueue()
        self._outcomes: collections.deque[tuple[int, Any, BaseException | None]] = (
            collections.deque()
        )
        self._wake_pending = False  # a _drain is scheduled and has not started yet
        self._threads = 0
        self._busy = 0  # attempts submitted whose outcome the loop has not drained yet

    def submit(self, attempt_id: int, event: Any, context: TaskContext) -> None:
        self._busy += 1
        self._queue.put((attempt_id, event, context))
        # _busy over-counts (outcomes not drained yet), so an attempt never waits for a
        # thread while fewer than LIMIT exist: at worst one starts that was not needed
        if self._busy > self._threads and self._threads < self.LIMIT:
            self._threads += 1
            name = f"stint-handler-{self._threads}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        handler, outcomes = self._handler, self._outcomes
        while True:
            attempt_id, event, context = self._queue.get()
            if context.stop_requested:  # cancelled before it started
                outcome: tuple[int, Any, BaseException | None] = (attempt_id, None, None)
            else:
                try:
                    outcome = (attempt_id, handler(event, context), None)
                except BaseException as exc:
                    outcome = (attempt_id, None, exc)
            outcomes.append(outcome)
            if not self._wake_pending:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # cleared first: an outcome appended from here on either is popped below or
        # schedules a drain of its own (see _serve)
        self._wake_pending = False
        outcomes = self._outcomes
        while outcomes:
            attempt_id, value, error = outcomes.popleft()
            self._busy -= 1
            self._finished(attempt_id, value, error)


def _result_bytes(value: Any) -> bytes:
    """The handler's return value as the RESULT frame carries it (the parent checks it the
    same way: a result it would refuse fails the attempt here instead)."""
    data = codec.encode(value)
    if len(data) > frames.MAX_VALUE:
        raise ValueError(
            f"the result is {len(data)} bytes encoded, over the {frames.MAX_VALUE}-byte limit "
            "of a worker frame; return a reference (a path, a key) to the data instead"
        )
    if not frames.is_value(data):
        raise TypeError(
            "the result cannot be read back as a msgpack value (a map key that is a list, a "
            "tuple or a map?); return only None, bool, int, float, str, bytes, list and dict "
            "values, with hashable map keys"
        )
    return data


async def serve(fd: int) -> int:
    """Serve the runtime on socket ``fd`` until told to exit or the runtime goes away;
    returns the exit code."""
    os.environ["STINT_WORKER_FD"] = str(fd)  # for tests that must corrupt it on purpose
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    worker = Worker(writer)
    while True:
        try:
            for kind, fields in await frames.read(reader, frames.TO_WORKER):
                if not worker.handle(kind, fields):
                    return 0
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0  # the runtime went away: so do we
        except frames.ProtocolError as exc:
            print(f"stint worker: the runtime broke the protocol: {exc}", file=sys.stderr)
            return PROTOCOL_EXIT


def _end_group() -> None:
    """SIGTERM the processes the handler started (our process group, which we lead): the
    runtime kills the group as well, this covers a runtime that died first."""
    if os.getpgid(0) != os.getpid():
        return  # not started by stint in a session of our own: the group is not ours
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: started by stint as a kind='process' worker, not by hand")
    # Not asyncio.run: its shutdown waits for every handler thread, and one that ignores
    # its stop flag would keep the worker (and the processes it started) alive.
    code = asyncio.new_event_loop().run_until_complete(serve(int(sys.argv[1])))
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _end_group()
    os._exit(code)  # nor wait for them at interpreter exit
