"""The worker process of a ``kind="process"`` instance: ``python -m runtime.worker FD``.

It speaks frames (``runtime.frames``) on the socket FD it inherits — never on
stdout or stderr, which user code may print to and the parent forwards to its
log. It imports the handler and hooks by path, runs hooks when told, and runs
attempts: async handlers as tasks (``concurrency`` of them at once), blocking
ones on threads, so cancellations are still read while they run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import codec, frames
from .context import InstanceContext, TaskContext
from .errors import NonRetryableError


def resolve(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (ImportError / AttributeError if not)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ImportError(f"{path!r} is not an import path of the form 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


def _error(exc: BaseException) -> tuple[str, str, str]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (type(exc).__name__, str(exc), text)


class Worker:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.handler: Callable[..., Any] | None = None
        self.hooks: dict[str, Callable[..., Any] | None] = {}
        self.instance: InstanceContext | None = None
        self.running: dict[int, tuple[asyncio.Task[None], TaskContext]] = {}

    def send(self, kind: str, *fields: Any) -> None:
        self.writer.write(frames.encode(kind, *fields))

    async def handle(self, kind: str, fields: tuple[Any, ...]) -> bool:
        """Act on one frame; False when told to exit."""
        if kind == frames.LOAD:
            self.load(fields[0])
        elif kind == frames.HOOK:
            asyncio.get_running_loop().create_task(self.hook(fields[0]))
        elif kind == frames.RUN:
            attempt_id = fields[0]
            context = TaskContext(fields[2], fields[3], fields[4], fields[5], self._instance())
            task = asyncio.get_running_loop().create_task(self.run(attempt_id, fields[1], context))
            self.running[attempt_id] = (task, context)
        elif kind == frames.CANCEL:
            found = self.running.get(fields[0])
            if found is not None:
                found[1].request_stop()
                found[0].cancel()
        elif kind == frames.EXIT:
            return False
        return True

    def _instance(self) -> InstanceContext:
        assert self.instance is not None, "load comes first"
        return self.instance

    def load(self, spec: dict[str, Any]) -> None:
        try:
            self.instance = InstanceContext(spec["instance_id"], spec["function"], "process")
            self.handler = resolve(spec["handler"])
            self.hooks = {
                name: resolve(path) if path else None for name, path in spec["hooks"].items()
            }
        except BaseException as exc:
            self.send(frames.LOAD_FAILED, _error(exc))
            return
        self.send(frames.LOADED, os.getpid())

    async def hook(self, name: str) -> None:
        hook = self.hooks.get(name)
        started = time.perf_counter()
        error = None
        try:
            if hook is not None and inspect.iscoroutinefunction(hook):
                await hook(self._instance())
            elif hook is not None:
                await asyncio.to_thread(hook, self._instance())
        except BaseException as exc:
            error = _error(exc)
        self.send(frames.HOOK_DONE, name, error, time.perf_counter() - started)

    async def run(self, attempt_id: int, payload: bytes, context: TaskContext) -> None:
        handler = self.handler
        assert handler is not None
        try:
            event = codec.decode(payload)
            if inspect.iscoroutinefunction(handler):
                value = await handler(event, context)
            else:
                value = await asyncio.to_thread(handler, event, context)
            data = codec.encode(value)
            if len(data) > frames.MAX_FRAME - 1024:
                raise ValueError(f"the result is {len(data)} bytes, over the worker frame limit")
        except asyncio.CancelledError:
            return  # the parent already counted this attempt as interrupted
        except BaseException as exc:
            retryable = not isinstance(exc, NonRetryableError)
            self.send(frames.ERROR, attempt_id, _error(exc), retryable)
        else:
            self.send(frames.RESULT, attempt_id, data)
        finally:
            self.running.pop(attempt_id, None)


async def serve(fd: int) -> None:
    os.environ["STINT_WORKER_FD"] = str(fd)  # for tests that must corrupt it on purpose
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    worker = Worker(writer)
    while True:
        try:
            kind, fields = await frames.read(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the runtime went away: so do we
        if not await worker.handle(kind, fields):
            return
        await writer.drain()


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m runtime.worker FD  (started by stint, not by hand)")
    asyncio.run(serve(int(sys.argv[1])))
    os._exit(0)  # do not wait for handler threads that ignore their stop flag


if __name__ == "__main__":
    main()
