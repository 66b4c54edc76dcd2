"""Every state and every legal transition of the table, reached through the public API."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from runtime import ManualClock, NonRetryableError, TaskState
from runtime.errors import IllegalTransitionError, TaskFinishedError
from tests.conftest import RuntimeFactory

from .helpers import Gate, eventually, statuses, until_status

S = TaskState


async def echo(event: Any, ctx: Any) -> Any:
    return {"echo": event, "attempt": ctx.attempt}


async def test_success_path(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    task_id = await rt.invoke("echo", {"x": 1})
    record = await rt.wait(task_id, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    assert record.result == {"echo": {"x": 1}, "attempt": 1}
    assert (record.attempts, record.retries, record.error) == (1, 0, None)
    assert record.instance_id == "echo-1"
    assert record.created_at <= record.started_at <= record.ended_at  # type: ignore[operator]
    assert record.payload == {"x": 1}


async def test_retries_then_failed(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def broken(event: Any, ctx: Any) -> None:
        raise ValueError(f"attempt {ctx.attempt} broke")

    rt.register("broken", broken, max_retries=2, retry_backoff=0)
    record = await rt.wait(await rt.invoke("broken"), timeout=5)
    assert statuses(record) == [
        "Enqueued", "Dequeued", "Running", "Retrying", "Running", "Retrying", "Running", "Failed",
    ]  # fmt: skip
    assert (record.attempts, record.retries) == (3, 2)
    assert record.error is not None
    assert record.error.type == "ValueError" and record.error.message == "attempt 3 broke"
    assert "Traceback" in record.error.traceback
    assert "no retries left" in record.events[-1].detail


async def test_default_is_three_retries(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def broken(event: Any, ctx: Any) -> None:
        raise RuntimeError("no")

    rt.register("broken", broken, retry_backoff=0)
    record = await rt.wait(await rt.invoke("broken"), timeout=5)
    assert (record.status, record.attempts, record.retries) == (S.FAILED, 4, 3)


async def test_retry_then_success(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def flaky(event: Any, ctx: Any) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return ctx.attempt

    rt.register("flaky", flaky, retry_backoff=0)
    record = await rt.wait(await rt.invoke("flaky"), timeout=5)
    assert record.status is S.SUCCEEDED and record.result == 2 and record.retries == 1


async def test_non_retryable_error_fails_at_once(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    class BadInput(NonRetryableError):
        pass

    async def strict(event: Any, ctx: Any) -> None:
        raise BadInput("the image is not a PNG")

    rt.register("strict", strict, max_retries=5, retry_backoff=0)
    record = await rt.wait(await rt.invoke("strict"), timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Failed"]
    assert record.error is not None and record.error.type == "BadInput"


async def test_backoff_waits_on_the_clock(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(clock=clock, seed=1)
    calls: list[int] = []

    async def flaky(event: Any, ctx: Any) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("later")

    rt.register("flaky", flaky, retry_backoff=10)
    task_id = await rt.invoke("flaky")
    await until_status(rt, task_id, S.RETRYING)
    clock.advance(4.9)  # equal jitter: the first retry waits between 5 and 10 s
    await asyncio.sleep(0.02)
    assert calls == [1] and (await rt.get(task_id)).status is S.RETRYING
    clock.advance(5.2)
    record = await rt.wait(task_id, timeout=5)
    assert record.status is S.SUCCEEDED and calls == [1, 2]


async def test_attempt_timeout(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(clock=clock)
    gate = Gate()

    rt.register("slow", gate.handler, timeout=30, max_retries=0)
    task_id = await rt.invoke("slow")
    await until_status(rt, task_id, S.RUNNING)
    clock.advance(31)
    record = await rt.wait(task_id, timeout=5)
    assert statuses(record)[-2:] == ["Running", "Failed"]
    assert record.error is not None and record.error.type == "AttemptTimeoutError"
    await eventually(lambda: gate.cancelled == 1)  # the task is Failed first, at the timeout


async def test_expired_at_dequeue(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(clock=clock)
    init_gate = Gate()

    async def initializer(instance: Any) -> None:
        await init_gate.wait()

    rt.register(
        "stale", echo, max_event_age=10, max_instances=1, initializer=initializer,
        initializer_timeout=1000,
    )  # fmt: skip
    first = await rt.invoke("stale", 1)
    await until_status(rt, first, S.DEQUEUED)  # holds the only slot, waiting for a cold start
    second = await rt.invoke("stale", 2)
    clock.advance(11)
    init_gate.open()
    assert (await rt.wait(first, timeout=5)).status is S.SUCCEEDED  # dequeued in time
    record = await rt.wait(second, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Expired"]
    assert "max_event_age=10" in record.events[-1].detail


async def test_invalid_when_initializer_raises(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    def initializer(instance: Any) -> None:
        raise OSError("model file missing")

    rt.register("broken", echo, initializer=initializer)
    record = await rt.wait(await rt.invoke("broken"), timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert record.error is not None and record.error.type == "InstanceStartError"
    assert "OSError: model file missing" in record.events[-1].detail
    assert record.attempts == 0


async def test_invalid_when_initializer_times_out(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()

    async def initializer(instance: Any) -> None:
        await asyncio.Event().wait()

    rt.register("sleepy", echo, initializer=initializer, initializer_timeout=0.05)
    record = await rt.wait(await rt.invoke("sleepy"), timeout=5)
    assert record.status is S.INVALID
    assert "did not finish within 0.05 s" in record.events[-1].detail


async def test_invalid_when_unregistered_while_queued(
    make_runtime: RuntimeFactory, store_url: str
) -> None:
    if store_url.startswith("redis"):
        pytest.skip("a cluster keeps them for other nodes: the test below")
    rt = await make_runtime()
    gate = Gate()

    async def blocking(event: Any, ctx: Any) -> str:
        await gate.wait()
        return "done"

    rt.register("blocking", blocking, max_instances=1)
    running = await rt.invoke("blocking")
    await until_status(rt, running, S.RUNNING)
    queued = await rt.invoke("blocking")
    rt.unregister("blocking")
    record = await rt.wait(queued, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert "unregistered" in record.events[-1].detail
    gate.open()
    assert (await rt.wait(running, timeout=5)).status is S.SUCCEEDED  # running ones finish


async def test_unregister_on_a_cluster_leaves_tasks_for_other_nodes(
    make_runtime: RuntimeFactory, store_url: str
) -> None:
    # On a shared store a function belongs to the cluster: unregister only stops this
    # node serving it (its queued tasks wait for another node); delete_function removes
    # it everywhere and makes them Invalid.
    if not store_url.startswith("redis"):
        pytest.skip("a store of one process: unregister makes queued tasks Invalid (above)")
    rt = await make_runtime()
    gate = Gate()
    rt.register("blocking", gate.handler, max_instances=1)
    running = await rt.invoke("blocking")
    await until_status(rt, running, S.RUNNING)
    queued = await rt.invoke("blocking")
    rt.unregister("blocking")
    gate.open()
    assert (await rt.wait(running, timeout=5)).status is S.SUCCEEDED
    assert (await rt.get(queued)).status is S.ENQUEUED  # waiting for a node that serves it
    await rt.delete_function("blocking")
    record = await rt.wait(queued, timeout=5)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert "deleted" in record.events[-1].detail


# --- stop, from every state that allows it ---------------------------------------------


async def test_stop_while_enqueued(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()

    rt.register("blocking", gate.handler, max_instances=1)
    first = await rt.invoke("blocking")
    await until_status(rt, first, S.RUNNING)
    queued = await rt.invoke("blocking")
    record = await rt.stop(queued)
    assert statuses(record) == ["Enqueued", "Stopping", "Stopped"]
    gate.open()
    assert (await rt.wait(first, timeout=5)).status is S.SUCCEEDED
    third = await rt.invoke("blocking")
    assert (await rt.wait(third, timeout=5)).status is S.SUCCEEDED  # the queue is intact


async def test_stop_while_dequeued(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    init_gate = Gate()

    async def initializer(instance: Any) -> None:
        await init_gate.wait()

    rt.register("cold", echo, initializer=initializer, max_instances=1)
    task_id = await rt.invoke("cold")
    await until_status(rt, task_id, S.DEQUEUED)
    record = await rt.stop(task_id)
    assert statuses(record) == ["Enqueued", "Dequeued", "Stopping", "Stopped"]
    init_gate.open()
    after = await rt.invoke("cold", "next")
    assert (await rt.wait(after, timeout=5)).result == {"echo": "next", "attempt": 1}


async def test_stop_while_running_restarts_the_instance(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()
    log: list[str] = []

    def initializer(instance: Any) -> None:
        log.append(f"init {instance.instance_id}")

    def pre_stop(instance: Any) -> None:
        log.append(f"pre_stop {instance.instance_id}")

    async def blocking(event: Any, ctx: Any) -> None:
        log.append(f"run {ctx.instance.instance_id}")
        await gate.wait()

    rt.register("blocking", blocking, initializer=initializer, pre_stop=pre_stop)
    task_id = await rt.invoke("blocking")
    await eventually(lambda: gate.entered == 1)  # the handler really runs
    record = await rt.stop(task_id)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Stopping", "Stopped"]
    assert gate.cancelled == 1
    await eventually(lambda: "init blocking-2" in log)
    assert log == ["init blocking-1", "run blocking-1", "pre_stop blocking-1", "init blocking-2"]
    assert [i.instance_id for i in await rt.instances("blocking")] == ["blocking-2"]
    again = await rt.stop(task_id)  # idempotent on Stopped
    assert again.status is S.STOPPED and len(again.events) == len(record.events)


async def test_a_replaced_instance_leaves_no_worker_behind(make_runtime: RuntimeFactory) -> None:
    # Without a PreStop, the instance is destroyed in the same turn as the attempt is
    # interrupted: both cancellations reach the slot worker as one CancelledError.
    rt = await make_runtime()
    gate = Gate()

    rt.register("blocking", gate.handler)
    task_id = await rt.invoke("blocking")
    await until_status(rt, task_id, S.RUNNING)
    await rt.stop(task_id)
    await eventually(lambda: not [t for t in asyncio.all_tasks() if "blocking-1" in t.get_name()])


async def test_concurrent_stops_while_stopping(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    gate = Gate()
    pre_stop_gate = Gate()

    async def pre_stop(instance: Any) -> None:
        await pre_stop_gate.wait()

    rt.register("blocking", gate.handler, pre_stop=pre_stop)
    task_id = await rt.invoke("blocking")
    await until_status(rt, task_id, S.RUNNING)
    first = asyncio.ensure_future(rt.stop(task_id))
    await until_status(rt, task_id, S.STOPPING)
    second = asyncio.ensure_future(rt.stop(task_id))  # while Stopping: waits for the same end
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    pre_stop_gate.open()
    assert (await first).status is S.STOPPED and (await second).status is S.STOPPED


async def test_stop_while_retrying(make_runtime: RuntimeFactory, clock: ManualClock) -> None:
    rt = await make_runtime(clock=clock)
    calls: list[int] = []

    async def broken(event: Any, ctx: Any) -> None:
        calls.append(ctx.attempt)
        raise ValueError("no")

    rt.register("broken", broken, retry_backoff=100, retry_backoff_max=100)
    task_id = await rt.invoke("broken")
    await until_status(rt, task_id, S.RETRYING)
    record = await rt.stop(task_id)
    assert statuses(record)[-3:] == ["Retrying", "Stopping", "Stopped"]
    clock.advance(1000)
    await asyncio.sleep(0.02)
    assert calls == [1]  # the cancelled backoff never fires


async def test_stop_of_a_finished_task_is_refused(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    task_id = await rt.invoke("echo")
    before = await rt.wait(task_id, timeout=5)
    with pytest.raises(TaskFinishedError, match="already ended as Succeeded"):
        await rt.stop(task_id)
    after = await rt.get(task_id)
    assert after.to_dict() == before.to_dict()


async def test_other_tasks_on_a_restarted_instance_are_retried(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()
    gate = Gate()

    async def blocking(event: Any, ctx: Any) -> int:
        if ctx.attempt == 1:
            await gate.wait()
        return ctx.attempt

    rt.register("shared", blocking, concurrency=2, max_instances=1, retry_backoff=0)
    victim = await rt.invoke("shared")
    neighbour = await rt.invoke("shared")
    await until_status(rt, neighbour, S.RUNNING)
    await rt.stop(victim)
    record = await rt.wait(neighbour, timeout=5)
    assert record.status is S.SUCCEEDED and record.result == 2
    assert record.events[3].status is S.RETRYING and "restarted" in record.events[3].detail


async def test_the_task_actor_refuses_an_illegal_move(make_runtime: RuntimeFactory) -> None:
    # A live task actor, not one made with TaskActor.__new__: on the compiled build
    # __new__ runs __init__, which needs the real arguments.
    rt = await make_runtime()
    gate = Gate()
    rt.register("slow", gate.handler)
    task_id = await rt.invoke("slow")
    await until_status(rt, task_id, S.RUNNING)
    actor = rt._live[task_id]._actor
    assert actor is not None
    with pytest.raises(IllegalTransitionError, match="Running -> Enqueued"):
        actor._move(S.ENQUEUED)  # type: ignore[attr-defined]
    assert (await rt.get(task_id)).status is S.RUNNING
    gate.open()
    assert (await rt.wait(task_id, timeout=5)).status is S.SUCCEEDED


async def test_every_legal_transition_is_reached(
    make_runtime: RuntimeFactory, clock: ManualClock
) -> None:
    """Drive every path in one runtime; the histories together must cover the whole table."""
    from runtime import TRANSITIONS

    rt = await make_runtime(clock=clock)
    gate, init_gate = Gate(), Gate()

    async def flaky(event: Any, ctx: Any) -> None:
        if event == "fail" or ctx.attempt == 1:
            raise ValueError("no")

    async def slow_init(instance: Any) -> None:
        await init_gate.wait()

    def broken_init(instance: Any) -> None:
        raise OSError("no")

    rt.register("block", gate.handler, max_instances=1, max_event_age=10, timeout=1000)
    rt.register("flaky", flaky, max_retries=1, retry_backoff=0)
    rt.register("slowretry", flaky, retry_backoff=100, retry_backoff_max=100)
    rt.register("cold", echo, initializer=slow_init, initializer_timeout=1000)
    rt.register("broken", echo, initializer=broken_init)
    ids = [await rt.invoke("flaky", "ok"), await rt.invoke("flaky", "fail")]  # Retrying, Failed
    ids.append(await rt.invoke("broken"))  # Dequeued -> Invalid
    running = await rt.invoke("block")
    await until_status(rt, running, S.RUNNING)
    ids += [await rt.invoke("block"), await rt.invoke("block")]
    await rt.stop(ids[-1])  # Enqueued -> Stopping
    clock.advance(11)  # ids[-2] will be Expired at its dequeue
    cold = await rt.invoke("cold")
    await until_status(rt, cold, S.DEQUEUED)
    await rt.stop(cold)  # Dequeued -> Stopping
    retrying = await rt.invoke("slowretry")
    await until_status(rt, retrying, S.RETRYING)
    await rt.stop(retrying)  # Retrying -> Stopping
    await rt.stop(running)  # Running -> Stopping (and the expired one gets its turn)
    init_gate.open()
    await rt.join(timeout=5)
    edges: set[tuple[str, str]] = set()
    for task_id in [*ids, running, cold, retrying]:
        history = statuses(await rt.get(task_id))
        edges |= set(itertools.pairwise(history))
    table = {(str(a), str(b)) for a, bs in TRANSITIONS.items() for b in bs}
    assert edges == table
