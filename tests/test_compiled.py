"""The compiled build (STINT_COMPILE=1) behaves as the pure one; these run on both.

CI runs the whole suite twice: on the pure sources (STINT_EXPECT_COMPILED=0) and on
an installed ``STINT_COMPILE=1`` build (STINT_EXPECT_COMPILED=1), and the first test
here fails if the build under test is not the one expected, so a run cannot quietly
test the pure build twice. Each other test holds one trap of mypyc's (docs/performance.md).
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

import runtime
from actors import Actor, ActorSystem
from runtime import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    Runtime,
    StintError,
    TaskNotFoundError,
    TaskState,
)
from runtime.record import ErrorInfo, TaskRecord
from tests.conftest import RuntimeFactory

ROOT = pathlib.Path(__file__).resolve().parents[1]


def hot_modules() -> list[str]:
    """The dotted names of the modules setup.py compiles (its HOT_MODULES list)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_MODULES":
            paths: list[str] = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no HOT_MODULES list")


def origin(module: str) -> pathlib.Path:
    """Where ``module`` is imported from (without importing it)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return pathlib.Path(spec.origin)


def is_extension(module: str) -> bool:
    return origin(module).name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def source(module: str) -> pathlib.Path:
    """The module's Python source: in the checkout, or installed beside the compiled one."""
    return origin(module).with_name(module.rsplit(".", 1)[-1] + ".py")


def test_the_build_under_test_is_the_one_expected() -> None:
    compiled = {module: is_extension(module) for module in hot_modules()}
    # all or nothing: a half-compiled tree means stale build artifacts next to the sources
    assert len(set(compiled.values())) == 1, compiled
    assert runtime.compiled is all(compiled.values())
    expected = os.environ.get("STINT_EXPECT_COMPILED")
    if expected is not None:
        assert runtime.compiled is (expected == "1"), (
            f"STINT_EXPECT_COMPILED={expected} but runtime.compiled is {runtime.compiled} "
            f"(runtime imported from {runtime.__file__})"
        )


# -- wrongly typed arguments get stint's own errors, not a bare TypeError -----------------


async def noop(event: Any, ctx: Any) -> None:
    return None


WRONG_CALLS: list[tuple[str, Callable[[Runtime], Any], type[StintError], str]] = [
    ("invoke(task_id=12)", lambda rt: rt.invoke("fn", 1, task_id=12), InvalidTaskIdError, "12"),
    ("invoke(12)", lambda rt: rt.invoke(12), FunctionNotFoundError, "register it first"),
    ("get(12)", lambda rt: rt.get(12), TaskNotFoundError, "no task with id 12"),
    ("wait(12)", lambda rt: rt.wait(12), TaskNotFoundError, "no task with id 12"),
    ("stop(12)", lambda rt: rt.stop(12), TaskNotFoundError, "no task with id 12"),
    ("list(status=12)", lambda rt: rt.list(status=12), ConfigError, "unknown status"),
    ("list(limit='x')", lambda rt: rt.list(limit="x"), ConfigError, "limit="),
    ("instances(12)", lambda rt: rt.instances(12), FunctionNotFoundError, "no function"),
    ("join(12)", lambda rt: rt.join(12), FunctionNotFoundError, "no function"),
    ("register(12, fn)", lambda rt: rt.register(12, noop), ConfigError, "function name"),
    ("unregister(12)", lambda rt: rt.unregister(12), ConfigError, "function name"),
    ("function(12)(fn)", lambda rt: rt.function(12)(noop), ConfigError, "function name"),
    ("serve_metrics(port='x')", lambda rt: rt.serve_metrics(port="x"), ConfigError, "cannot serve"),
]


@pytest.mark.parametrize(
    ("call", "expected", "match"),
    [pytest.param(call, error, match, id=name) for name, call, error, match in WRONG_CALLS],
)
async def test_a_wrongly_typed_argument_gets_stints_own_error(
    make_runtime: RuntimeFactory,
    call: Callable[[Runtime], Any],
    expected: type[StintError],
    match: str,
) -> None:
    rt = await make_runtime()
    rt.register("fn", noop)
    with pytest.raises(expected, match=match):
        result = call(rt)
        if hasattr(result, "__await__"):
            await result
    assert await rt.list() == []  # nothing was accepted on the way


@pytest.mark.parametrize(
    "kwargs",
    [{"store": 12}, {"max_payload_bytes": "x"}, {"max_payload_bytes": 0}],
    ids=["store=12", "max_payload_bytes='x'", "max_payload_bytes=0"],
)
def test_runtime_settings_of_the_wrong_type_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Runtime(**kwargs)


def test_a_metrics_port_of_the_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="metrics_port='x' must be an integer"):
        Runtime(metrics_port="x")


# -- interpreted subclasses of compiled classes -------------------------------------------


class Doubler(Actor):
    """A user's actor: a plain class of the test module subclassing the (compiled) Actor."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.seen: list[int] = []

    def receive(self, message: Any) -> Any:
        self.seen.append(message)
        return message * self.factor


class Echo(Actor):
    """One without an ``__init__`` of its own."""

    def receive(self, message: Any) -> Any:
        return message


async def test_users_subclass_the_actor_class() -> None:
    system = ActorSystem()
    doubler = system.spawn(Doubler, 3)
    echo = system.spawn(Echo)
    assert await doubler.ask(7) == 21
    assert await echo.ask("hi") == "hi"
    system.close()
    assert system.live_actors == 0 and not system.failures


async def test_the_thread_kind_subclasses_the_instance_class(make_runtime: RuntimeFactory) -> None:
    from runtime.instances import Instance, ThreadInstance

    assert issubclass(ThreadInstance, Instance)
    rt = await make_runtime()
    rt.register("add", lambda event, ctx: event + 1, kind="thread")
    record = await rt.wait(await rt.invoke("add", 41), timeout=5)
    assert record.result == 42


def test_compiled_subclasses_of_open_classes_define_their_own_init() -> None:
    """mypyc's trap: a compiled class that inherits ``__init__`` from a base allowing
    interpreted subclasses runs it twice per construction and leaks every argument
    (an instance's ``services``: the whole runtime). Every such class needs its own."""
    classes: dict[str, ast.ClassDef] = {}
    for module in hot_modules():
        for node in ast.parse(source(module).read_text()).body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node

    def is_open(node: ast.ClassDef) -> bool:
        return any("allow_interpreted_subclasses" in ast.unparse(d) for d in node.decorator_list)

    def has_init(node: ast.ClassDef) -> bool:
        return any(isinstance(s, ast.FunctionDef) and s.name == "__init__" for s in node.body)

    def ancestors(node: ast.ClassDef) -> list[ast.ClassDef]:
        found = []
        for base in node.bases:
            parent = classes.get(ast.unparse(base).rsplit(".", 1)[-1])
            if parent is not None:
                found += [parent, *ancestors(parent)]
        return found

    open_classes = [node.name for node in classes.values() if is_open(node)]
    assert {"Actor", "Instance"} <= set(open_classes)
    for node in classes.values():
        above = ancestors(node)
        if any(is_open(a) for a in above) and any(has_init(a) for a in above):
            assert has_init(node), f"{node.name} must define __init__ (see this test's docstring)"


# -- records are copied through __init__ -----------------------------------------------------


def test_a_record_copy_is_a_full_and_independent_snapshot() -> None:
    record = TaskRecord("t1", "fn", b"\x01", 100.0)
    record.status = TaskState.FAILED
    record.result_bytes = b"\x02"
    record.error = ErrorInfo("ValueError", "no", "")
    record.attempts, record.retries = 2, 1
    record.started_at, record.ended_at, record.instance_id = 101.0, 102.0, "fn-1"
    clone = record.copy()
    assert type(clone) is TaskRecord
    fields = ("task_id", "function", "status", "payload_bytes", "result_bytes", "error")
    fields += ("attempts", "retries", "created_at", "started_at", "ended_at", "instance_id")
    assert all(getattr(clone, f) == getattr(record, f) for f in fields)
    assert clone.raw_events() == record.raw_events()
    record.raw_events().append(("Failed", 103.0, "later"))
    assert len(clone.raw_events()) == 1


def test_no_compiled_module_builds_an_object_with_new() -> None:
    # Cls.__new__(Cls) runs __init__ on a class compiled by mypyc: copies built that way
    # broke (TaskRecord.copy, FunctionMetrics.copy). Build through __init__ instead.
    import re

    hot = hot_modules()
    offenders = [
        f"{module}:{number}"
        for module in hot
        for number, line in enumerate(source(module).read_text().splitlines(), 1)
        if re.search(r"\w+\.__new__\(", line) and not line.lstrip().startswith("#")
    ]
    assert hot and not offenders, offenders
