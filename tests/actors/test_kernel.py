"""The actor kernel on its own: ordering, ask, supervision, stop, dead letters, timers, leaks."""

from __future__ import annotations

import ast
import asyncio
import gc
import pathlib
import weakref
from typing import Any

import pytest

from actors import (
    Actor,
    ActorDeadError,
    ActorSystem,
    AskTimeoutError,
    Directive,
    ManualClock,
    Reply,
    SupervisorStrategy,
    SystemClosedError,
)


class Recorder(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.log.append(message)
        return ("echo", message)


async def settle(system: ActorSystem) -> None:
    """Let freshly created tasks run, then let the run queue drain completely."""
    async with asyncio.timeout(5):
        await asyncio.sleep(0)
        while system.pending_messages or system._scheduled:
            await asyncio.sleep(0)


async def test_messages_arrive_in_order_across_batches() -> None:
    system = ActorSystem(batch=7)  # a small budget forces many loop turns
    log: list[Any] = []
    ref = system.spawn(lambda: Recorder(log))
    for i in range(1000):
        ref.tell(i)
    await settle(system)
    assert log == list(range(1000))
    system.close()


async def test_ask_returns_what_receive_returns() -> None:
    system = ActorSystem()
    ref = system.spawn(lambda: Recorder([]))
    assert await ref.ask("hi") == ("echo", "hi")
    system.close()


async def test_ask_gets_the_error_receive_raised() -> None:
    system = ActorSystem(root_strategy=SupervisorStrategy(lambda e: Directive.RESUME))
    ref = system.spawn(lambda: Recorder([]))
    with pytest.raises(ValueError, match="boom"):
        await ref.ask("boom")
    assert ref.is_alive
    assert [f.directive for f in system.failures] == [Directive.RESUME]
    system.close()


class Deferring(Actor):
    def __init__(self) -> None:
        self.pending: list[Reply] = []

    def receive(self, message: Any) -> Any:
        if message == "later":
            self.pending.append(self.defer_reply())
        elif message == "answer":
            for reply in self.pending:
                reply.send(42)
        return None


async def test_deferred_reply_and_ask_timeout() -> None:
    system = ActorSystem()
    ref = system.spawn(Deferring)
    with pytest.raises(AskTimeoutError):
        await ref.ask("later", timeout=0.01)
    waiting = asyncio.ensure_future(ref.ask("later"))
    await settle(system)
    ref.tell("answer")
    assert await waiting == 42
    system.close()


async def test_stop_fails_pending_asks_and_counts_dead_letters() -> None:
    system = ActorSystem()
    ref = system.spawn(Deferring)
    deferred = asyncio.ensure_future(ref.ask("later"))
    await settle(system)
    queued = asyncio.ensure_future(ref.ask("later"))  # still in the mailbox when stopped
    ref.tell("x")
    ref.stop()
    with pytest.raises(ActorDeadError):
        await deferred
    with pytest.raises(ActorDeadError):
        await queued
    ref.tell("after")
    assert system.dead_letters == 3  # the queued ask, "x", and the tell after the stop
    with pytest.raises(ActorDeadError):
        await ref.ask("too late")
    system.close()


class Counter(Actor):
    starts = 0

    def __init__(self, log: list[Any]) -> None:
        self.count = 0
        self.log = log

    def on_start(self) -> None:
        Counter.starts += 1

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        self.count += 1
        self.log.append((message, self.count))


async def test_restart_keeps_the_mailbox_and_resets_state() -> None:
    Counter.starts = 0
    system = ActorSystem()
    log: list[Any] = []
    ref = system.spawn(lambda: Counter(log))
    for message in ("a", "b", "boom", "c", "d"):
        ref.tell(message)
    await settle(system)
    # "c" and "d" were queued behind the failure: the fresh actor gets both, counting from 1
    assert log == [("a", 1), ("b", 2), ("c", 1), ("d", 2)]
    assert Counter.starts == 2
    assert [f.directive for f in system.failures] == [Directive.RESTART]
    system.close()


async def test_restart_window_stops_a_crash_loop() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock, root_strategy=SupervisorStrategy(max_restarts=2, within=10))
    ref = system.spawn(lambda: Counter([]))
    for _ in range(3):
        ref.tell("boom")
    await settle(system)
    assert not ref.is_alive
    assert [f.directive for f in system.failures] == [
        Directive.RESTART,
        Directive.RESTART,
        Directive.STOP,
    ]
    system.close()


async def test_restart_window_forgets_old_restarts() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock, root_strategy=SupervisorStrategy(max_restarts=1, within=10))
    ref = system.spawn(lambda: Counter([]))
    ref.tell("boom")
    await settle(system)
    clock.advance(11)
    ref.tell("boom")
    await settle(system)
    assert ref.is_alive
    system.close()


class Parent(Actor):
    def __init__(self, directive: Directive, stopped: list[str]) -> None:
        self.directive = directive
        self.stopped = stopped
        self.supervisor_strategy = SupervisorStrategy(lambda e: directive)  # type: ignore[misc]

    def receive(self, message: Any) -> Any:
        if message == "spawn":
            return self.spawn(lambda: Child(self.stopped), name="child")
        return None

    def on_stop(self) -> None:
        self.stopped.append("parent")


class Child(Actor):
    def __init__(self, stopped: list[str]) -> None:
        self.stopped = stopped

    def receive(self, message: Any) -> Any:
        raise KeyError(message)

    def on_stop(self) -> None:
        self.stopped.append("child")


@pytest.mark.parametrize("directive", [Directive.STOP, Directive.ESCALATE])
async def test_stop_and_escalate(directive: Directive) -> None:
    stopped: list[str] = []
    system = ActorSystem(root_strategy=SupervisorStrategy(lambda e: Directive.STOP))
    parent = system.spawn(lambda: Parent(directive, stopped))
    child = await parent.ask("spawn")
    child.tell("fail")
    await settle(system)
    assert not child.is_alive
    if directive is Directive.STOP:
        assert stopped == ["child"] and parent.is_alive
    else:  # the parent failed in turn; its own supervisor stopped it (children first)
        assert stopped == ["child", "parent"] and not parent.is_alive
    system.close()


class Once(Actor):
    """Handles one message, then stops itself; remembers itself weakly for the leak check."""

    made: list[weakref.ref[Once]] = []

    def on_start(self) -> None:
        Once.made.append(weakref.ref(self))

    def receive(self, message: Any) -> Any:
        self.stop_self()


async def test_thousands_of_short_lived_actors_leave_nothing_behind() -> None:
    Once.made = []
    system = ActorSystem()
    parent = system.spawn(lambda: Recorder([]))
    for i in range(5000):
        system.spawn(Once, parent=parent).tell(i)
    assert system.live_actors == 5001
    await settle(system)
    assert system.live_actors == 1
    assert not parent._children  # no registry grows with the actors that came and went
    gc.collect()
    assert len(Once.made) == 5000
    assert all(r() is None for r in Once.made)
    system.close()
    assert system.live_actors == 0


async def test_scheduler_fires_in_order_on_a_manual_clock() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock)
    fired: list[str] = []
    system.scheduler.call_later(5, fired.append, "b")
    system.scheduler.call_later(1, fired.append, "a")
    cancelled = system.scheduler.call_later(2, fired.append, "never")
    cancelled.cancel()
    clock.advance(1.5)
    assert fired == ["a"]
    clock.advance(10)
    assert fired == ["a", "b"]
    system.close()


async def test_scheduler_fires_on_the_real_clock() -> None:
    system = ActorSystem()
    done = asyncio.Event()
    system.scheduler.call_later(0.001, done.set)
    await asyncio.wait_for(done.wait(), 2)
    system.close()


async def test_actor_schedule_delivers_a_message() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock)
    log: list[Any] = []

    class Timed(Recorder):
        def on_start(self) -> None:
            self.schedule(3, "tick")

    system.spawn(lambda: Timed(log))
    clock.advance(3)
    await settle(system)
    assert log == ["tick"]
    system.close()


async def test_spawn_after_close_is_refused() -> None:
    system = ActorSystem()
    system.close()
    with pytest.raises(SystemClosedError):
        system.spawn(lambda: Recorder([]))


def test_actors_never_imports_runtime() -> None:
    package = pathlib.Path(__file__).resolve().parents[2] / "actors"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not any(n == "runtime" or n.startswith("runtime.") for n in names), path


def test_runtime_uses_only_the_public_face_of_actors() -> None:
    package = pathlib.Path(__file__).resolve().parents[2] / "runtime"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("actors."), f"{path} imports {node.module}"
