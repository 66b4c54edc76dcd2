"""The task lifecycle against a reference model: hypothesis drives a real Runtime.

A small model of docs/lifecycle.md (the state table, retries, timeouts, expiry,
stop from every state, the restart a stop causes) predicts, after every step,
each task's full path of states, its attempts, retries and last error, and what
the metrics count. Hypothesis picks the steps: invoke, let a running attempt
succeed or fail (retryable or not), stop any task (finished ones included),
advance the ManualClock past the retry backoff or past an attempt timeout.

Every step runs the runtime until it is quiescent (no message in flight), so the
model only has to predict outcomes, never interleavings. Where the runtime's
order is deliberately random (the jitter of retry backoffs), the steps that would
depend on it are not taken (see the preconditions).

One function, kind "async", one instance with ``SLOTS`` slots, so tasks queue and
a stop restarts the instance under the other running tasks. Each example gets its
own event loop (``asyncio.Runner``) and a fresh store; the test runs on both loops
and on every store (memory, sqlite; redis once it exists). Few examples by default,
many with ``pytest --chaos-long``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import pathlib
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runtime import (
    InstanceState,
    ManualClock,
    NonRetryableError,
    Runtime,
    TaskFinishedError,
    TaskState,
)
from runtime.loop import loop_factory

pytestmark = pytest.mark.chaos

S = TaskState
SLOTS = 3  # one instance with this concurrency
MAX_TASKS = 7  # unfinished at once: enough to queue behind the slots
MAX_RETRIES = 2
TIMEOUT = 10.0  # attempt timeout (manual seconds)
BACKOFF = 1.0  # retry_backoff = retry_backoff_max: each retry waits 0.5-1.0 s (jitter)
MAX_AGE = 25.0  # max_event_age: a task waiting longer than this when dequeued is Expired
TICK = 0.1
EPSILON = 0.01  # no deadline is allowed this close to the clock: its side is never in doubt
UNFINISHED = (S.ENQUEUED, S.DEQUEUED, S.RUNNING, S.RETRYING, S.STOPPING)


# --- the model -------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """What the model knows of one task."""

    path: list[TaskState]
    enqueued_at: float
    attempts: int = 0
    retries: int = 0
    started_at: float = 0.0  # of the attempt under way
    error: str | None = None  # type of the last attempt's error

    @property
    def status(self) -> TaskState:
        return self.path[-1]


class Model:
    """The lifecycle table as the docs state it, for one function on one instance.

    ``queue`` holds tasks waiting for a slot, in order: new ones (Enqueued) and
    retries whose backoff is over (still Retrying). ``backing_off`` holds retries
    whose backoff has not elapsed.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.tasks: dict[str, Task] = {}
        self.queue: list[str] = []
        self.running: list[str] = []
        self.backing_off: list[str] = []

    def invoke(self, task_id: str) -> None:
        self.tasks[task_id] = Task([S.ENQUEUED], self.now)
        self.queue.append(task_id)
        self.dispatch()

    def dispatch(self) -> None:
        """Give free slots to the queue, oldest first; expiry is checked at that moment."""
        while self.queue and len(self.running) < SLOTS:
            task = self.tasks[self.queue.pop(0)]
            if task.status is S.ENQUEUED:
                task.path.append(S.DEQUEUED)
                if self.now - task.enqueued_at > MAX_AGE:
                    task.path.append(S.EXPIRED)
                    continue
            self._run(task)

    def _run(self, task: Task) -> None:
        task.path.append(S.RUNNING)
        task.attempts += 1
        task.started_at = self.now
        self.running.append(self._id(task))

    def _id(self, task: Task) -> str:
        return next(k for k, v in self.tasks.items() if v is task)

    def succeed(self, task_id: str) -> None:
        self.running.remove(task_id)
        self.tasks[task_id].path.append(S.SUCCEEDED)
        self.dispatch()

    def fail(self, task_id: str, error: str, retryable: bool = True) -> None:
        """The attempt under way failed: retry after a backoff while retries are left."""
        self.running.remove(task_id)
        task = self.tasks[task_id]
        task.error = error
        if retryable and task.retries < MAX_RETRIES:
            task.retries += 1
            task.path.append(S.RETRYING)
            self.backing_off.append(task_id)
        else:
            task.path.append(S.FAILED)

    def stop(self, task_id: str) -> bool:
        """Apply a stop; False if it is refused (the task finished otherwise)."""
        task = self.tasks[task_id]
        status = task.status
        if status is S.STOPPED:
            return True
        if status.is_terminal:
            return False
        task.path += [S.STOPPING, S.STOPPED]
        if status is S.RUNNING:  # the instance is restarted under every other attempt
            self.running.remove(task_id)
            for other in list(self.running):
                self.fail(other, "InstanceRestartedError")
        elif task_id in self.queue:
            self.queue.remove(task_id)
        elif task_id in self.backing_off:
            self.backing_off.remove(task_id)
        self.dispatch()
        return True

    def advance(self, seconds: float) -> None:
        """Time passes: the sweep at the new time cuts attempts that ran past the timeout,
        and every backoff is over (callers never advance less than BACKOFF with retries
        backing off)."""
        self.now += seconds
        due, self.backing_off = self.backing_off, []  # a retry timed out now waits anew
        for task_id in list(self.running):
            if self.now - self.tasks[task_id].started_at >= TIMEOUT:
                self.fail(task_id, "AttemptTimeoutError")
        self.queue += due
        self.dispatch()

    def count(self, status: TaskState) -> int:
        return sum(1 for task in self.tasks.values() if task.status is status)

    def deadlines(self) -> list[float]:
        """Every instant at which something changes by itself: timeouts, expiries."""
        timeouts = [self.tasks[t].started_at + TIMEOUT for t in self.running]
        expiries = [
            self.tasks[t].enqueued_at + MAX_AGE
            for t in self.queue
            if self.tasks[t].status is S.ENQUEUED
        ]
        return timeouts + expiries


# --- the real thing --------------------------------------------------------------------------


class Handler:
    """The function's handler: each attempt waits until the test says how it ends."""

    def __init__(self) -> None:
        self.attempts: dict[tuple[str, int], asyncio.Future[str]] = {}
        self.closing = False  # from now on, attempts succeed at once

    def close(self) -> None:
        self.closing = True
        for outcome in self.attempts.values():
            outcome.set_result("ok")

    async def __call__(self, event: Any, ctx: Any) -> str:
        if self.closing:
            return "ok"
        key = (ctx.task_id, ctx.attempt)
        outcome = self.attempts[key] = asyncio.get_running_loop().create_future()
        try:
            how = await outcome
        finally:
            del self.attempts[key]
        if how == "fail":
            raise ConnectionError("it broke")
        if how == "refuse":
            raise NonRetryableError("it will never work")
        return how


class LifecycleMachine(RuleBasedStateMachine):
    """Drives a Runtime and the Model side by side; they must agree after every step."""

    loop_name = "asyncio"
    store_dir = pathlib.Path(".")
    examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.handler = Handler()
        self.clock = ManualClock()
        self.runner = asyncio.Runner(loop_factory=loop_factory(self.loop_name))
        store = "memory://"
        if self.store_dir != pathlib.Path("."):
            store = f"sqlite:///{self.store_dir / f'{next(self.examples)}.db'}"
        self.rt = Runtime(store=store, clock=self.clock, tick_interval=TICK, close_timeout=1.0)
        self.run(self.rt.start())
        self.rt.register(
            "fn", self.handler, concurrency=SLOTS, max_instances=1, max_retries=MAX_RETRIES,
            timeout=TIMEOUT, retry_backoff=BACKOFF, retry_backoff_max=BACKOFF,
            max_event_age=MAX_AGE,
        )  # fmt: skip
        self.ids = itertools.count(1)

    def run(self, coro: Any) -> Any:
        """Run ``coro``, then let the runtime finish what it set off."""
        result = self.runner.run(coro)
        self.runner.run(self.quiesce())
        return result

    async def quiesce(self) -> None:
        """Yield until no message has been in flight for a while (nothing moves by itself:
        the clock is manual)."""
        system = self.rt.actor_system
        assert system is not None
        calm = 0
        for _ in range(5000):
            await asyncio.sleep(0)
            calm = calm + 1 if system.pending_messages == 0 else 0
            if calm >= 20:
                return

    def teardown(self) -> None:
        try:
            system = self.rt.actor_system
            self.handler.close()  # close() would wait for running attempts (close_timeout)
            self.runner.run(self.rt.close())
            assert system is not None and not system.failures, list(system.failures)
            assert self.rt.close_cancelled == 0
        finally:
            self.runner.close()

    # steps ------------------------------------------------------------------------------------

    def _unfinished(self) -> int:
        return sum(1 for t in self.model.tasks.values() if not t.status.is_terminal)

    @precondition(lambda self: self._unfinished() < MAX_TASKS)
    @rule()
    def invoke(self) -> None:
        task_id = f"task-{next(self.ids)}"
        assert self.run(self.rt.invoke("fn", None, task_id=task_id)) == task_id
        self.model.invoke(task_id)

    @precondition(lambda self: self.model.running)
    @rule(data=st.data(), how=st.sampled_from(["ok", "fail", "refuse"]))
    def end_an_attempt(self, data: st.DataObject, how: str) -> None:
        task_id = data.draw(st.sampled_from(self.model.running), label="task")
        key = (task_id, self.model.tasks[task_id].attempts)
        outcome = self.handler.attempts.get(key)
        assert outcome is not None, f"the model says {key} is running; the handler disagrees"
        outcome.set_result(how)
        self.run(asyncio.sleep(0))
        if how == "ok":
            self.model.succeed(task_id)
        else:
            error = "ConnectionError" if how == "fail" else "NonRetryableError"
            self.model.fail(task_id, error, retryable=how == "fail")
            self.model.dispatch()

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.model.tasks)), label="task")
        try:
            record = self.run(self.rt.stop(task_id))
        except TaskFinishedError:
            assert not self.model.stop(task_id), f"stop({task_id}) was refused"
        else:
            assert record.status is S.STOPPED
            assert self.model.stop(task_id), f"stop({task_id}) was accepted"

    @precondition(lambda self: self.model.backing_off and self._retries_all_fit())
    @rule()
    def advance_past_the_backoff(self) -> None:
        self._advance(BACKOFF)

    @precondition(lambda self: self.model.running and not self.model.backing_off)
    @rule()
    def advance_past_a_timeout(self) -> None:
        oldest = min(self.model.tasks[t].started_at for t in self.model.running)
        self._advance(oldest + TIMEOUT - self.model.now + 0.25)

    @precondition(lambda self: self.model.queue and not self.model.backing_off)
    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0]))
    def let_time_pass(self, seconds: float) -> None:
        self._advance(seconds)

    def _retries_all_fit(self) -> bool:
        # Backoffs are jittered, so retries become due in an order the model cannot
        # know: only take this step when every one of them gets a slot at once.
        free = SLOTS - len(self.model.running)
        return not self.model.queue and len(self.model.backing_off) <= free

    def _advance(self, seconds: float) -> None:
        """Advance by at least ``seconds``, and a little more if a deadline would be too
        close to call."""
        while any(abs(self.model.now + seconds - d) < EPSILON for d in self.model.deadlines()):
            seconds += 0.05
        self.clock.advance(seconds)
        self.run(asyncio.sleep(0))
        self.model.advance(seconds)

    # what must hold after every step ----------------------------------------------------------

    @invariant()
    def records_match_the_model(self) -> None:
        for task_id, task in self.model.tasks.items():
            record = self.runner.run(self.rt.get(task_id))
            where = f"{task_id}: runtime {[str(e.status) for e in record.events]}"
            assert [e.status for e in record.events] == task.path, f"{where}, model {task.path}"
            assert (record.attempts, record.retries) == (task.attempts, task.retries), where
            if task.error is not None:
                assert record.error is not None and record.error.type == task.error, where

    @invariant()
    def running_attempts_match(self) -> None:
        expected = {(t, self.model.tasks[t].attempts) for t in self.model.running}
        assert set(self.handler.attempts) == expected

    @invariant()
    def the_instance_and_the_metrics_agree(self) -> None:
        infos = self.runner.run(self.rt.instances("fn"))
        if self.model.running:
            assert [(i.state, i.in_flight) for i in infos] == [
                (InstanceState.BUSY, len(self.model.running))
            ]
        else:
            assert all(i.in_flight == 0 for i in infos) and len(infos) <= 1
        current = tasks_gauge(self.runner.run(self.rt.metrics_text()))
        assert current == {str(state): self.model.count(state) for state in UNFINISHED}


def tasks_gauge(metrics: str) -> dict[str, int]:
    """``stint_tasks{function="fn",state=...}`` by state (a full parse costs too much here)."""
    prefix = 'stint_tasks{function="fn",state="'
    found = {}
    for line in metrics.splitlines():
        if line.startswith(prefix):
            state, _, value = line[len(prefix) :].partition('"} ')
            found[state] = int(float(value))
    return found


@pytest.fixture
def model_settings(request: pytest.FixtureRequest) -> settings:
    long_run = bool(request.config.getoption("--chaos-long"))
    return settings(
        max_examples=200 if long_run else 12,
        stateful_step_count=60 if long_run else 25,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the checkout; failures print their steps
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("store", ["memory", "sqlite"])  # add "redis" once it exists
def test_the_lifecycle_follows_the_model(
    loop: str, store: str, tmp_path: pathlib.Path, model_settings: settings
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    machine = type(
        "Machine",
        (LifecycleMachine,),
        {"loop_name": loop, "store_dir": tmp_path if store == "sqlite" else pathlib.Path(".")},
    )
    run_state_machine_as_test(machine, settings=model_settings)
