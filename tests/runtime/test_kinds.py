"""One lifecycle matrix for every instance kind, then what only threads or processes do."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import runtime
from runtime import ConfigError, InstanceState, ManualClock, Runtime, TaskState
from tests.conftest import RuntimeFactory

from . import kind_handlers as kh
from .helpers import eventually, statuses, until_status

S = TaskState
KINDS = ["async", "thread", "process"]


@pytest.fixture
def store_url() -> str:
    """The kinds are independent of the store (which has its own matrix): memory only."""
    return "memory://"


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))  # workers inherit it
    return tmp_path


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def handler(kind: str, name: str) -> Callable[..., Any]:
    """The async version for kind "async", the plain one otherwise."""
    fn: Callable[..., Any] = getattr(kh, f"{name}_async" if kind == "async" else name)
    return fn


def hooks() -> dict[str, Any]:
    return {"initializer": kh.initializer, "pre_freeze": kh.pre_freeze, "pre_stop": kh.pre_stop}


async def make(make_runtime: RuntimeFactory, **kwargs: Any) -> Runtime:
    return await make_runtime(**kwargs)


async def instance_state(rt: Runtime, name: str, instance_id: str, state: InstanceState) -> None:
    async with asyncio.timeout(10):
        while {i.instance_id: i.state for i in await rt.instances(name)}.get(
            instance_id
        ) is not state:
            await asyncio.sleep(0.002)


# --- the matrix ------------------------------------------------------------------------------


async def test_success_with_instance_state(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "echo"), kind=kind, initializer=kh.initializer)
    record = await rt.wait(await rt.invoke("fn", [1, "x"]), timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    assert record.result == {"echo": [1, "x"], "attempt": 1, "state": "conn-fn-1"}


async def test_retries_then_failed(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "fail"), kind=kind, max_retries=2, retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert (record.status, record.attempts, record.retries) == (S.FAILED, 3, 2)
    assert record.error is not None and record.error.message == "attempt 3 broke"


async def test_retry_then_success(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "fail_first"), kind=kind, retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert (record.status, record.result) == (S.SUCCEEDED, 2)


async def test_non_retryable(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "refuse"), kind=kind, max_retries=5)
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Failed"]
    assert record.error is not None and record.error.type == "NonRetryableError"


POLICIES = {  # a retry policy -> how many attempts each error gets (max_retries=2)
    "no_retry_on=ValueError": (
        {"no_retry_on": (ValueError,)},
        {"value": 1, "key": 3, "missing": 3, "refuse": 1},
    ),
    "retry_on=KeyError": (  # PageMissing is a KeyError: matched along its MRO
        {"retry_on": (KeyError,)},
        {"value": 1, "key": 3, "missing": 3, "refuse": 1},
    ),
    "retry_on=PageMissing": (  # a class of the handler's module
        {"retry_on": (kh.PageMissing,)},
        {"value": 1, "key": 1, "missing": 3, "refuse": 1},
    ),
    "no_retry_on=LookupError": (
        {"no_retry_on": (LookupError,)},
        {"value": 3, "key": 1, "missing": 1, "refuse": 1},
    ),
}


@pytest.mark.parametrize("policy", POLICIES)
async def test_retry_policy(make_runtime: RuntimeFactory, kind: str, policy: str) -> None:
    options, attempts = POLICIES[policy]
    rt = await make(make_runtime)
    rt.register(
        "fn", handler(kind, "raise_named"), kind=kind, max_retries=2, retry_backoff=0,
        max_instances=4, **options,
    )  # fmt: skip
    task_ids = {event: await rt.invoke("fn", event) for event in attempts}
    records = {event: await rt.wait(task_id, timeout=20) for event, task_id in task_ids.items()}
    assert {event: r.attempts for event, r in records.items()} == attempts
    assert all(r.status is S.FAILED for r in records.values())
    assert records["missing"].error is not None
    assert records["missing"].error.type == "PageMissing"


async def test_timeout(make_runtime: RuntimeFactory, kind: str, clock: ManualClock) -> None:
    rt = await make(make_runtime, clock=clock)
    rt.register("fn", handler(kind, "block"), kind=kind, timeout=30, max_retries=0)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING, timeout=20)
    await eventually(lambda: len(kh.read_log()) == 1, timeout=20)  # really running
    clock.advance(31)
    record = await rt.wait(task_id, timeout=20)
    assert record.status is S.FAILED
    assert record.error is not None and record.error.type == "AttemptTimeoutError"
    if kind != "async":  # a thread or a process cannot be cut short in place: replaced
        async with asyncio.timeout(10):
            while "fn-1" in {i.instance_id for i in await rt.instances("fn") if not i.abandoned}:
                await asyncio.sleep(0.002)


async def test_expired(make_runtime: RuntimeFactory, kind: str, clock: ManualClock) -> None:
    rt = await make(make_runtime, clock=clock)
    rt.register(
        "fn", handler(kind, "block"), kind=kind, max_instances=1, max_event_age=10, timeout=1000
    )
    first = await rt.invoke("fn")
    await until_status(rt, first, S.RUNNING, timeout=20)
    second = await rt.invoke("fn")
    clock.advance(11)
    kh.release()
    assert (await rt.wait(first, timeout=20)).status is S.SUCCEEDED
    record = await rt.wait(second, timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Expired"]


async def test_invalid_on_initializer_failure(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "echo"), kind=kind, initializer=kh.broken_initializer)
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert "OSError: model file missing" in record.events[-1].detail


async def test_stop_while_enqueued(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    rt.register("fn", handler(kind, "block"), kind=kind, max_instances=1)
    first = await rt.invoke("fn")
    await until_status(rt, first, S.RUNNING, timeout=20)
    queued = await rt.invoke("fn")
    assert statuses(await rt.stop(queued)) == ["Enqueued", "Stopping", "Stopped"]
    kh.release()
    assert (await rt.wait(first, timeout=20)).status is S.SUCCEEDED


async def test_stop_while_running_restarts(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = await make(make_runtime)
    # freeze_after: the fresh instance must not freeze (PreFreeze) before the log is read
    rt.register("fn", handler(kind, "block"), kind=kind, freeze_after=3600, **hooks())
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING, timeout=20)
    await eventually(lambda: any(line.startswith("run") for line in kh.read_log()), timeout=20)
    record = await rt.stop(task_id)
    assert statuses(record)[-3:] == ["Running", "Stopping", "Stopped"]
    await eventually(lambda: "initializer fn-2" in kh.read_log(), timeout=20)
    assert kh.read_log() == [
        "initializer fn-1", f"run {task_id} on fn-1", "pre_stop fn-1", "initializer fn-2",
    ]  # fmt: skip


async def test_stop_while_retrying(
    make_runtime: RuntimeFactory, kind: str, clock: ManualClock
) -> None:
    rt = await make(make_runtime, clock=clock)
    rt.register("fn", handler(kind, "fail"), kind=kind, retry_backoff=100, retry_backoff_max=100)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RETRYING, timeout=20)
    assert statuses(await rt.stop(task_id))[-3:] == ["Retrying", "Stopping", "Stopped"]


async def test_hooks_freeze_thaw_and_idle(
    make_runtime: RuntimeFactory, kind: str, clock: ManualClock
) -> None:
    rt = await make(make_runtime, clock=clock)
    rt.register("fn", handler(kind, "echo"), kind=kind, freeze_after=5, idle_timeout=100, **hooks())
    first = await rt.invoke("fn", 1)
    await rt.wait(first, timeout=20)
    clock.advance(5)
    await instance_state(rt, "fn", "fn-1", InstanceState.FROZEN)
    second = await rt.invoke("fn", 2)
    await rt.wait(second, timeout=20)
    clock.advance(101)
    await eventually(lambda: kh.read_log()[-1:] == ["pre_stop fn-1"], timeout=20)
    assert kh.read_log() == [
        "initializer fn-1", f"run {first} on fn-1", "pre_freeze fn-1", f"run {second} on fn-1",
        "pre_stop fn-1",
    ]  # fmt: skip
    async with asyncio.timeout(10):
        while await rt.instances("fn"):
            await asyncio.sleep(0.002)


# --- processes only ---------------------------------------------------------------------------


def process_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat: R, S, T (stopped), Z ..."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_freeze_is_a_real_sigstop(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make(make_runtime, clock=clock)
    rt.register("fn", kh.whoami, kind="process", freeze_after=5)
    pid = (await rt.wait(await rt.invoke("fn"), timeout=20)).result
    assert process_state(pid) != "T"
    clock.advance(5)
    await instance_state(rt, "fn", "fn-1", InstanceState.FROZEN)
    await eventually(lambda: process_state(pid) == "T")  # stopped once it takes the SIGSTOP
    assert (await rt.wait(await rt.invoke("fn"), timeout=20)).result == pid  # SIGCONT, same worker
    assert process_state(pid) != "T"


async def test_a_killed_worker_is_replaced(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", kh.whoami, kind="process")
    pid = (await rt.wait(await rt.invoke("fn"), timeout=20)).result
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while any(i.instance_id == "fn-1" for i in await rt.instances("fn")):
            await asyncio.sleep(0.002)
    other = (await rt.wait(await rt.invoke("fn"), timeout=20)).result
    assert other != pid
    assert (
        'stint_instance_stops_total{function="fn",kind="process",reason="crash"} 1.0'
        in await rt.metrics_text()
    )


async def test_a_poison_task_fails_after_its_attempts(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", kh.exit_hard, kind="process", max_retries=2, retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn"), timeout=30)
    assert (record.status, record.attempts) == (S.FAILED, 3)
    assert record.error is not None and record.error.type == "InstanceCrashedError"
    assert "exit code 3" in record.error.message
    text = await rt.metrics_text()
    assert 'stint_instance_starts_total{function="fn",kind="process"} 3.0' in text  # no hot loop


@pytest.mark.parametrize("misbehaviour", ["garbage", "oversized_frame"])
async def test_bad_frames_kill_only_that_worker(
    make_runtime: RuntimeFactory, misbehaviour: str
) -> None:
    rt = await make(make_runtime)
    rt.register("fn", getattr(kh, misbehaviour), kind="process", retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn"), timeout=30)
    assert (record.status, record.attempts) == (S.SUCCEEDED, 2)
    assert record.events[3].status is S.RETRYING and "protocol" in record.events[3].detail
    assert 'stint_worker_protocol_errors_total{function="fn"} 1.0' in await rt.metrics_text()


async def test_printing_does_not_disturb_the_protocol(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="stint.worker")
    rt = await make(make_runtime)
    rt.register("fn", kh.chatty, kind="process")
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert record.result == "still fine"
    await eventually(lambda: "[fn-1 stderr] to stderr" in caplog.text, timeout=10)
    assert "[fn-1 stdout] line 199 of chatter from the handler" in caplog.text


async def test_async_handlers_run_side_by_side_in_one_worker(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", kh.block_async, kind="process", concurrency=3, max_instances=1)
    ids = [await rt.invoke("fn") for _ in range(3)]
    for task_id in ids:
        await until_status(rt, task_id, S.RUNNING, timeout=20)
    await eventually(lambda: len(kh.read_log()) == 3, timeout=20)  # all three inside at once
    kh.release()
    assert {(await rt.wait(t, timeout=20)).result for t in ids} == {"released"}


async def test_unimportable_handler_makes_tasks_invalid(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", "tests.runtime.no_such_module:handler", kind="process")
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert "ModuleNotFoundError" in record.events[-1].detail


async def test_no_worker_is_left_after_close() -> None:
    rt = Runtime(tick_interval=0.01)
    rt.register("fn", kh.whoami, kind="process", max_instances=3, freeze_after=0)
    async with rt:
        pids = {(await rt.wait(await rt.invoke("fn"), timeout=20)).result for _ in range(3)}
    assert pids and not set(children(os.getpid())) & pids
    assert not [p for p in children(os.getpid()) if process_state(p) == "Z"]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for whoever adopted it counts as gone)."""
    try:
        return process_state(pid) != "Z"
    except FileNotFoundError:
        return False


def spawned() -> list[tuple[int, int]]:
    """(child pid, worker pid) of each ``sleep`` child ``kh.spawn_child`` started."""
    lines = [line.split() for line in kh.read_log() if line.startswith("child ")]
    return [(int(words[1]), int(words[3])) for words in lines]


async def test_a_crash_fails_exactly_the_attempts_the_worker_ran(
    make_runtime: RuntimeFactory, test_dir: pathlib.Path
) -> None:
    rt = await make(make_runtime)
    rt.register(
        "fn", kh.crash_in_batch, kind="process", max_instances=1, concurrency=4, max_retries=0
    )
    events = ["quick", "block", "block", "crash"]
    task_ids = await asyncio.gather(*(rt.invoke("fn", event) for event in events))
    assert (await rt.wait(task_ids[0], timeout=20)).status is S.SUCCEEDED
    await eventually(lambda: len(kh.read_log()) == 3, timeout=20)  # the other three run
    (test_dir / "crash").touch()
    records = [await rt.wait(task_id, timeout=20) for task_id in task_ids[1:]]
    for record in records:
        assert (record.status, record.attempts) == (S.FAILED, 1)
        assert record.error is not None and record.error.type == "InstanceCrashedError"
    assert (await rt.get(task_ids[0])).result == "quick"


@pytest.mark.parametrize("how", ["stop", "crash"])
async def test_a_worker_takes_the_processes_its_handler_started(
    make_runtime: RuntimeFactory, how: str
) -> None:
    rt = await make(make_runtime)
    rt.register("fn", kh.spawn_child, kind="process", max_retries=0)
    task_id = await rt.invoke("fn", "block")
    await eventually(lambda: len(spawned()) == 1, timeout=20)
    ((child, worker),) = spawned()
    assert alive(child)
    assert os.getsid(worker) == os.getpgid(worker) == os.getpgid(child) == worker  # its session
    if how == "stop":
        assert (await rt.stop(task_id)).status is S.STOPPED
    else:
        os.kill(worker, signal.SIGKILL)
        assert (await rt.wait(task_id, timeout=20)).status is S.FAILED
    await eventually(lambda: not alive(child), timeout=10)


ORPHAN_SCRIPT = """
import asyncio
from runtime import Runtime
from tests.runtime import kind_handlers as kh

async def main():
    rt = Runtime()
    rt.register("fn", kh.spawn_child, kind="process")
    async with rt:
        await rt.invoke("fn", "block")
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_worker_whose_runtime_was_killed_ends_with_its_children() -> None:
    code_under_test = str(pathlib.Path(runtime.__file__).parents[1])
    script = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT], env={**os.environ, "PYTHONPATH": code_under_test}
    )
    try:
        await eventually(lambda: len(spawned()) == 1, timeout=20)
        ((child, worker),) = spawned()
        script.kill()  # no close(), no PreStop: the worker finds its socket closed
        script.wait()
        await eventually(lambda: not alive(child) and not alive(worker), timeout=10)
    finally:
        script.kill()
        script.wait()
        for pid in [pid for pair in spawned() for pid in pair if alive(pid)]:
            os.kill(pid, signal.SIGKILL)  # what the old code left behind


async def test_close_takes_the_processes_handlers_started() -> None:
    rt = Runtime(tick_interval=0.01, close_timeout=0.05)  # the blocked task is interrupted
    rt.register("fn", kh.spawn_child, kind="process", max_instances=2, concurrency=1)
    async with rt:
        first, second = await rt.invoke("fn", "block"), await rt.invoke("fn")
        assert (await rt.wait(second, timeout=20)).result == "spawned"
        await eventually(lambda: len(spawned()) == 2, timeout=20)
        assert (await rt.get(first)).status is S.RUNNING
    assert rt.close_cancelled == 0  # close did not wait on pipes the children held
    await eventually(lambda: not any(alive(child) for child, _ in spawned()), timeout=10)


async def test_long_lines_are_forwarded_in_pieces(
    make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="stint.worker")
    rt = await make(make_runtime)
    rt.register("fn", kh.long_line, kind="process", max_instances=1)
    ids = [await rt.invoke("fn", 200_000) for _ in range(2)]
    for task_id in ids:  # the same worker goes on printing after a long line
        assert (await rt.wait(task_id, timeout=10)).result == "done"
    after = [f"after the long line of {task_id}" for task_id in ids]
    await eventually(lambda: all(line in caplog.text for line in after), timeout=10)
    pieces = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("[fn-1 stdout] x")
    ]
    assert len(pieces) >= 2 * 4 and max(len(piece) for piece in pieces) < 70_000
    assert sum(piece.count("x") for piece in pieces) == 2 * 200_000


async def test_sigint_does_not_reach_a_worker(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", kh.whoami, kind="process")
    pid = (await rt.wait(await rt.invoke("fn"), timeout=20)).result
    assert os.getsid(pid) == pid != os.getsid(0)  # not in the terminal's foreground group
    os.kill(pid, signal.SIGINT)  # and ignored when sent all the same
    assert (await rt.wait(await rt.invoke("fn"), timeout=20)).result == pid
    assert process_state(pid) != "Z"
    assert (await rt.instances("fn"))[0].instance_id == "fn-1"


SCRIPT = """
import asyncio, sys
from runtime import Runtime

async def main():
    rt = Runtime()
    rt.register("fn", sys.argv[1], kind="process")
    async with rt:
        record = await rt.wait(await rt.invoke("fn"), timeout=30)
    print(record.status, record.result, record.error and record.error.message)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    "handler", ["handlers_next_to_me:where", "tests.runtime.kind_handlers:where_is_inspect"]
)
def test_handler_modules_import_as_in_the_runtime_not_from_the_cwd(
    tmp_path: pathlib.Path, handler: str
) -> None:
    app, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    (app / "main.py").write_text(SCRIPT)
    (app / "handlers_next_to_me.py").write_text(
        "import inspect\n\ndef where(event, ctx):\n    return inspect.__file__\n"
    )
    marker = tmp_path / "shadowed"
    (elsewhere / "inspect.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    code_under_test = str(pathlib.Path(runtime.__file__).parents[1])
    tests_root = str(pathlib.Path(__file__).resolve().parents[2])  # where `tests` imports from
    done = subprocess.run(
        [sys.executable, str(app / "main.py"), handler],
        cwd=elsewhere, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([code_under_test, tests_root])},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Succeeded "), done.stdout + done.stderr
    assert str(elsewhere) not in done.stdout  # the standard library's inspect, not the cwd's
    assert not marker.exists()


async def test_unimportable_handler_names_the_paths_searched(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", "no_such_module_anywhere:handler", kind="process")
    record = await rt.wait(await rt.invoke("fn"), timeout=20)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    detail = record.events[-1].detail
    assert "No module named 'no_such_module_anywhere'" in detail
    assert "searched the runtime's sys.path" in detail and repr(sys.path[-1]) in detail


def test_process_kind_needs_importable_code() -> None:
    def local(event: Any, ctx: Any) -> None:
        return None

    rt = Runtime()
    with pytest.raises(ConfigError, match="module level"):
        rt.register("fn", local, kind="process")
    with pytest.raises(ConfigError, match="import path"):
        rt.register("fn", "not a path", kind="process")
    with pytest.raises(ConfigError, match="kind='process'"):
        rt.register("fn", "pkg.mod:fn")
    rt.register(
        "fn", kh.echo, kind="process", initializer="tests.runtime.kind_handlers:initializer"
    )
    assert rt.functions["fn"].paths == {
        "handler": "tests.runtime.kind_handlers:echo",
        "initializer": "tests.runtime.kind_handlers:initializer",
    }


# --- threads only ------------------------------------------------------------------------------


def stubborn(event: Any, ctx: Any) -> str:
    import time

    time.sleep(0.5)  # ignores ctx.stop_requested
    return "late"


async def test_a_thread_ignoring_its_stop_flag_is_abandoned(make_runtime: RuntimeFactory) -> None:
    rt = await make(make_runtime)
    rt.register("fn", stubborn, kind="thread", pre_stop_timeout=0.05)
    rt.register("ok", kh.echo, kind="thread")
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING, timeout=20)
    assert (await rt.stop(task_id)).status is S.STOPPED  # at once: no PreStop to wait for
    async with asyncio.timeout(10):  # abandoned once it overruns pre_stop_timeout
        while not [i.instance_id for i in await rt.instances("fn") if i.abandoned]:
            await asyncio.sleep(0.005)
    assert [i.instance_id for i in await rt.instances("fn") if i.abandoned] == ["fn-1"]
    assert 'reason="abandoned"} 1.0' in await rt.metrics_text()
    assert (await rt.wait(await rt.invoke("ok", 5), timeout=20)).status is S.SUCCEEDED
    async with asyncio.timeout(10):  # once the thread ends, it is no longer listed
        while any(i.abandoned for i in await rt.instances("fn")):
            await asyncio.sleep(0.01)


async def test_a_thread_stopped_with_a_pre_stop_is_abandoned_when_it_overruns(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make(make_runtime)
    rt.register("fn", stubborn, kind="thread", pre_stop=kh.pre_stop, pre_stop_timeout=0.05)
    task_id = await rt.invoke("fn")
    await until_status(rt, task_id, S.RUNNING, timeout=20)
    record = await rt.stop(task_id)  # PreStop waits behind the handler: bounded by its timeout
    assert record.status is S.STOPPED and "PreStop did not finish" in record.events[-1].detail
    assert [i.instance_id for i in await rt.instances("fn") if i.abandoned] == ["fn-1"]


def test_thread_kind_rules() -> None:
    rt = Runtime()
    with pytest.raises(ConfigError, match="concurrency=2 is out of range for kind='thread'"):
        rt.register("fn", kh.echo, kind="thread", concurrency=2)
    with pytest.raises(ConfigError, match="kind='async' instead"):
        rt.register("fn", kh.echo_async, kind="thread")

    async def async_hook(instance: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="plain function"):
        rt.register("fn", kh.echo, kind="thread", initializer=async_hook)


async def test_hooks_and_handler_share_the_instance_thread(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    import threading

    seen: list[tuple[str, str]] = []

    def note(what: str) -> Callable[..., None]:
        return lambda *_: seen.append((what, threading.current_thread().name))

    def work(event: Any, ctx: Any) -> None:
        seen.append(("handler", threading.current_thread().name))

    rt = await make(make_runtime, clock=clock)
    rt.register(
        "fn", work, kind="thread", freeze_after=1, idle_timeout=10,
        initializer=note("initializer"), pre_freeze=note("pre_freeze"), pre_stop=note("pre_stop"),
    )  # fmt: skip
    await rt.wait(await rt.invoke("fn"), timeout=20)
    clock.advance(1)
    await eventually(lambda: len(seen) == 3, timeout=20)
    clock.advance(10)
    await eventually(lambda: len(seen) == 4, timeout=20)
    assert [what for what, _ in seen] == ["initializer", "handler", "pre_freeze", "pre_stop"]
    threads = {name for _, name in seen}
    assert len(threads) == 1 and threading.main_thread().name not in threads


async def test_output_is_forwarded_whatever_the_chunks(caplog: pytest.LogCaptureFixture) -> None:
    from runtime.instances.process_kind import OutputForwarder

    caplog.set_level("INFO", logger="stint.worker")
    forwarder = OutputForwarder("[w out]", line_max=8)
    for chunk in (b"ab", b"c\r\n\nd\xc3", b"\xa9f", b"0123456789", b"\nlast \xff"):
        forwarder.data_received(chunk)  # a two-byte character split across two chunks
    forwarder.connection_lost(None)
    assert [r.getMessage() for r in caplog.records] == [
        "[w out] abc", "[w out] ", "[w out] déf01234", "[w out] 56789", "[w out] last \ufffd",
    ]  # fmt: skip
    assert forwarder.closed.done()
