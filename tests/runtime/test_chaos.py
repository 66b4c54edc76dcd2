"""Chaos: thousands of tasks, with stops, unregisters, errors, timeouts and worker kills
thrown in at random moments. Whatever happens, every task must end.

The schedule of the chaos (which task does what, when a stop, a kill or an
unregister comes) is drawn from ``random.Random(seed)``: the same seed replays the
same workload and the same faults, in the same order. The exact interleaving with
real time (threads, worker processes) is not replayable, which is the point: each
run tries a few more. Run the long version with ``pytest --chaos-long``; pick the
seed with ``STINT_CHAOS_SEED=<n>`` (a failure message names the seed it ran); see
each run's summary with ``-s``.

At the end of each run:

- every task is terminal, and its events are a legal path through
  ``runtime.TRANSITIONS`` that agrees with its status, attempts and retries;
- every ``rt.stop`` returned the Stopped record (or refused a finished task);
- the metrics agree with the records (submissions, entries into every state,
  nothing left in a non-terminal gauge or in a queue);
- no instance is left busy or abandoned, and no actor is left but the supervisor
  and one pool per registered function (no task actor, no retired pool);
- no runtime actor failed, no message became a dead letter;
- ``close()`` leaves no task unfinished, cancels nothing, and no worker process
  outlives it.

Known runtime bugs (``KNOWN_BUGS``) are recognised by their exact signature, worked
around so that every other check still runs, and turn the test into an xfail that
names them. Delete an entry once its bug is fixed: its symptom is then a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import pathlib
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import ActorRef, ActorSystem
from runtime import (
    TRANSITIONS,
    FunctionNotFoundError,
    InstanceState,
    Runtime,
    TaskFinishedError,
    TaskRecord,
    TaskState,
)

from . import chaos_handlers as ch

pytestmark = pytest.mark.chaos

S = TaskState
BUSY, STOPPING = InstanceState.BUSY, InstanceState.STOPPING
MODES = ("ok", "fail", "flaky", "refuse", "hang")
RUN_TIMEOUT = 30.0  # seconds per 1,000 tasks (a short run takes 1-3 s in all)
STALL_TIMEOUT = 10.0  # no task of a function ended for this long: something is stuck
STOP_TIMEOUT = 15.0  # far above any stop here (PreStop is instant): past it, a stop is stuck

#: Runtime bugs the chaos still hits, each with the test that reproduces it exactly.
KNOWN_BUGS: dict[str, str] = {}  # none known: each is a failure now
# What "retired-pool-dead-letters" leaves: a message from the supervisor or an
# instance for a pool that stopped itself (only retired pools stop before close,
# and only pools get these messages).
LATE_FOR_A_POOL = ("Sweep", "InstanceStarted", "InstanceCrashed", "HookDone", "CodeReturned")
# What "unregister-strands-retry" leaves: a retry of an unregistered function that
# should have run long ago (backoffs here are at most 10 ms).
STRANDED_AFTER = 3.0
# What "retired-pool-lingers" leaves: the pool of an unregistered function, alive
# (with its instances) long after its last task ended.
LINGERING_AFTER = 3.0


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))  # process workers inherit it
    return tmp_path


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-long"))


def seeds(long_run: bool, default: int) -> list[int]:
    """The seeds to run: $STINT_CHAOS_SEED if set; one fixed seed; five under --chaos-long."""
    chosen = os.environ.get("STINT_CHAOS_SEED")
    if chosen:
        return [int(chosen)]
    return [default + i for i in range(5 if long_run else 1)]


# --- what the kernel does ----------------------------------------------------------------


@dataclasses.dataclass
class KernelTrace:
    """What the test sees of the actor kernel beyond its public counters."""

    letters: Counter[str] = dataclasses.field(default_factory=Counter)  # dead letters, by kind
    pools: list[ActorRef] = dataclasses.field(default_factory=list)  # every pool spawned

    def clear(self) -> None:
        self.letters.clear()
        self.pools.clear()

    def retired_pools(self) -> list[ActorRef]:
        """Pools of unregistered functions still alive (the newest pool of a name is current)."""
        current = {ref.name: ref for ref in self.pools}
        return [ref for ref in self.pools if ref.is_alive and current[ref.name] is not ref]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> KernelTrace:
    """Trace the kernel: every dead letter, named by receiver and message, and every pool.

    ``ActorSystem.dead_letters`` is only a number; the trace says which messages
    (``"task <- send attempt_finished"``), so a failure can name the interleaving
    that produced them. A message found dead when the run queue reaches it (its
    receiver stopped after it was sent) is ``"? <- queued <message>"``.
    """
    trace = KernelTrace()
    letters = trace.letters
    tell, send, undeliverable = ActorRef.tell, ActorRef.send, ActorSystem._undeliverable
    spawn = ActorSystem.spawn

    def traced_tell(ref: ActorRef, message: Any) -> None:
        if not ref.is_alive:
            letters[f"{role(ref)} <- tell {type(message).__name__}"] += 1
        tell(ref, message)

    def traced_send(ref: ActorRef, fn: Callable[..., Any], *args: Any) -> None:
        if not ref.is_alive:
            letters[f"{role(ref)} <- send {fn.__qualname__}"] += 1
        send(ref, fn, *args)

    def traced_undeliverable(system: ActorSystem, message: Any) -> None:
        fn = getattr(message, "fn", None)
        what = fn.__qualname__ if fn is not None else type(message).__name__
        letters[f"? <- queued {what}"] += 1
        undeliverable(system, message)

    def traced_spawn(system: ActorSystem, factory: Any, *args: Any, **kwargs: Any) -> ActorRef:
        ref = spawn(system, factory, *args, **kwargs)
        if ref.name.startswith("pool:"):
            trace.pools.append(ref)
        return ref

    monkeypatch.setattr(ActorRef, "tell", traced_tell)
    monkeypatch.setattr(ActorRef, "send", traced_send)
    monkeypatch.setattr(ActorSystem, "_undeliverable", traced_undeliverable)
    monkeypatch.setattr(ActorSystem, "spawn", traced_spawn)
    return trace


def role(ref: ActorRef) -> str:
    name = ref.name
    return name if name.startswith("pool:") or name == "supervisor" else "task"


# --- the functions under chaos ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """One function under chaos: how it is registered, and how often each mode is drawn."""

    name: str
    kind: str
    handler: Any
    config: dict[str, Any]
    weights: tuple[int, ...]  # per MODES

    def register(self, rt: Runtime) -> None:
        rt.register(self.name, self.handler, kind=self.kind, **self.config)

    @property
    def slots(self) -> int:
        return int(self.config.get("concurrency", 1) * self.config["max_instances"])


# Timeouts are short (a "hang" is cut by them), backoffs tiny, PreStop instant and
# bounded at 2 s so that even a failing run closes quickly.
COMMON = {
    "retry_backoff": 0.002, "retry_backoff_max": 0.01, "max_queued": 1_000_000,
    "pre_stop_timeout": 2.0,
}  # fmt: skip


def async_target() -> Target:
    return Target(
        "a", "async", ch.chaos_async,
        {
            **COMMON, "concurrency": 4, "max_instances": 3, "timeout": 0.05, "max_retries": 2,
            "initializer": ch.init_async, "pre_stop": ch.pre_stop_async, "freeze_after": 0.02,
        },
        (85, 4, 4, 4, 3),
    )  # fmt: skip


def thread_target() -> Target:
    return Target(
        "t", "thread", ch.chaos_blocking,
        {
            **COMMON, "max_instances": 3, "timeout": 0.1, "max_retries": 2,
            "initializer": ch.init_blocking, "pre_stop": ch.pre_stop_blocking,
        },
        (86, 4, 4, 4, 2),
    )  # fmt: skip


def process_target() -> Target:
    return Target(
        "p", "process", ch.chaos_blocking,
        {
            **COMMON, "concurrency": 2, "max_instances": 2, "timeout": 0.25, "max_retries": 1,
            "initializer": ch.init_process, "pre_stop": ch.pre_stop_blocking,
        },
        (90, 3, 3, 3, 1),
    )  # fmt: skip


# --- the chaos itself ------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What the drivers did, for the checks and the failure messages."""

    accepted: dict[str, str] = dataclasses.field(default_factory=dict)  # task id -> function
    refused: int = 0  # invokes that found their function unregistered (between swaps)
    stops: int = 0
    stops_refused: int = 0  # the task had finished first
    stuck_stops: list[str] = dataclasses.field(default_factory=list)  # rt.stop never returned
    kills: int = 0
    swapped: dict[str, float] = dataclasses.field(default_factory=dict)  # function -> when
    known: set[str] = dataclasses.field(default_factory=set)  # KNOWN_BUGS hit


class Chaos:
    """Invokes about ``tasks`` tasks over ``targets``, with faults at random moments.

    One driver per function, each with its own seeded generator, keeps about twice
    the function's slots in flight (so stops find tasks queued, running and backing
    off, and slow kinds never pile up behind fast ones). Every random decision is
    drawn from the driver's own generator, in the same order on every run of a seed.
    """

    def __init__(
        self, rt: Runtime, targets: list[Target], seed: int, tasks: int, test_dir: pathlib.Path
    ) -> None:
        self.rt = rt
        self.targets = targets
        self.seed = seed
        self.tasks = tasks
        self.pids_dir = test_dir / "pids"
        self.tally = Tally()
        self.faults: set[asyncio.Future[Any]] = set()  # stops and kills on their way

    async def run(self) -> None:
        share = self.tasks // len(self.targets)
        await asyncio.gather(
            *[
                self._drive(target, random.Random(self.seed * 100 + i), share)
                for i, target in enumerate(self.targets)
            ]
        )
        while self.faults:
            await asyncio.gather(*list(self.faults))

    async def _drive(self, target: Target, rng: random.Random, count: int) -> None:
        window = 2 * target.slots
        in_flight: dict[asyncio.Future[Any], str] = {}  # rt.wait of each task -> its id
        mine: list[str] = []  # every task this driver invoked, in order
        swap_at = rng.randrange(count // 4, 3 * count // 4)  # once per function
        kill_at = rng.randrange(count // 4, 3 * count // 4)  # a kill that waits for a worker
        for i in range(count):
            mode = rng.choices(MODES, target.weights)[0]
            payload = {"ms": rng.choice((0, 0, 1, 2, 3)), "mode": mode}
            await self._wait_below(target, in_flight, window)
            try:
                task_id = await self.rt.invoke(target.name, payload)
            except FunctionNotFoundError:
                self.tally.refused += 1  # in the gap of an unregister / register
            else:
                self.tally.accepted[task_id] = target.name
                mine.append(task_id)
                waiter = asyncio.ensure_future(self.rt.wait(task_id))
                in_flight[waiter] = task_id
                waiter.add_done_callback(functools.partial(forget, in_flight))
            if i == swap_at:
                await self._swap(target, rng)
            if i == kill_at and target.kind == "process":
                self._later(self._kill_a_worker(0.0, rng.random(), patience=2.0))
            await self._fault(target, rng, mine)
        await self._wait_below(target, in_flight, 1)

    async def _wait_below(
        self, target: Target, in_flight: dict[asyncio.Future[Any], str], limit: int
    ) -> None:
        """Wait until fewer than ``limit`` tasks are in flight; fail if none ends for long."""
        loop = asyncio.get_running_loop()
        progress = loop.time()
        while len(in_flight) >= limit:
            done, _ = await asyncio.wait(
                list(in_flight), timeout=1.0, return_when=asyncio.FIRST_COMPLETED
            )
            if done or await self._unstrand(list(in_flight.values())):
                progress = loop.time()
            elif loop.time() - progress > STALL_TIMEOUT:
                report = await diagnose(self.rt, self.targets)
                raise AssertionError(
                    f"seed {self.seed}: no task of {target.name!r} ended in {STALL_TIMEOUT} s:\n"
                    f"{report}"
                )

    async def _unstrand(self, task_ids: list[str]) -> bool:
        """Stop the retries "unregister-strands-retry" left behind (see KNOWN_BUGS)."""
        found = False
        for task_id in task_ids:
            record = await self.rt.get(task_id)
            swapped_at = self.tally.swapped.get(record.function)
            if (
                record.status is S.RETRYING
                and swapped_at is not None
                and record.created_at < swapped_at
                and time.time() - record.events[-1].timestamp > STRANDED_AFTER
            ):
                self.tally.known.add("unregister-strands-retry")
                with contextlib.suppress(TaskFinishedError):
                    await self.rt.stop(task_id)
                found = True
        return found

    async def _fault(self, target: Target, rng: random.Random, mine: list[str]) -> None:
        roll = rng.random()
        if roll < 0.08 and mine:  # a stop, mostly of one of the latest tasks (in flight)
            pick = rng.random()
            if pick < 0.5:
                task_id = mine[-1]
            elif pick < 0.9:
                task_id = rng.choice(mine[-target.slots :])
            else:
                task_id = rng.choice(mine)
            delay = 0.0 if rng.random() < 0.4 else rng.random() * 0.002
            self._later(self._stop(task_id, delay))
        elif roll < 0.09 and target.kind == "process":
            self._later(self._kill_a_worker(rng.random() * 0.02, rng.random()))
        elif roll < 0.15:
            await asyncio.sleep(rng.random() * 0.002)  # let work run before the next invoke
        else:
            await asyncio.sleep(0)

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.faults.add(task)
        task.add_done_callback(self.faults.discard)

    async def _stop(self, task_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.tally.stops += 1
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                record = await self.rt.stop(task_id)
        except TaskFinishedError:
            self.tally.stops_refused += 1
            return
        except TimeoutError:
            self.tally.stuck_stops.append(task_id)
            return
        assert record.status is S.STOPPED, f"stop({task_id}) returned {record.status}"

    async def _swap(self, target: Target, rng: random.Random) -> None:
        """Unregister the function and register it again, now or after a short gap."""
        self.tally.swapped[target.name] = time.time()
        self.rt.unregister(target.name)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.003)
        target.register(self.rt)

    async def _kill_a_worker(self, delay: float, pick: float, patience: float = 0.0) -> None:
        """SIGKILL one of the live workers (busy, idle, frozen or starting) after ``delay``;
        with ``patience``, wait up to that long for one to be up."""
        await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            found = self.pids_dir.iterdir() if self.pids_dir.exists() else iter(())
            alive = sorted(pid for pid in (int(p.name) for p in found) if is_our_live_child(pid))
            if alive:
                os.kill(alive[int(pick * len(alive))], signal.SIGKILL)
                self.tally.kills += 1
                return
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.01)


def forget(in_flight: dict[asyncio.Future[Any], str], done: asyncio.Future[Any]) -> None:
    in_flight.pop(done, None)
    if not done.cancelled():
        done.exception()  # retrieved: a wait cut short by a failing run's close is no news


def is_our_live_child(pid: int) -> bool:
    """True for a worker of this process that has not exited (zombies excluded)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and int(fields[1]) == os.getpid()


# --- one run, and its checks -----------------------------------------------------------------


async def run_chaos(
    targets: list[Target], store: str, *, seed: int, tasks: int, test_dir: pathlib.Path,
    kernel: KernelTrace,
) -> Tally:  # fmt: skip
    kernel.clear()
    rt = Runtime(store=store, tick_interval=0.005, close_timeout=2.0, seed=seed)
    await rt.start()
    for target in targets:
        target.register(rt)
    system = rt.actor_system
    assert system is not None
    chaos = Chaos(rt, targets, seed, tasks, test_dir)
    tally = chaos.tally
    try:
        try:
            async with asyncio.timeout(RUN_TIMEOUT * max(1.0, tasks / 1000)):
                await chaos.run()
        except TimeoutError:
            report = await diagnose(rt, targets)
            raise AssertionError(f"seed {seed}: the run did not end:\n{report}") from None
        if tally.stuck_stops:
            stuck = [describe(await rt.get(t)) for t in tally.stuck_stops]
            raise AssertionError(f"seed {seed}: rt.stop never returned for:\n" + "\n".join(stuck))
        records = [await rt.wait(task_id, timeout=5) for task_id in tally.accepted]
        for record in records:
            check_record(record)
        print(summary(seed, tally, records, await rt.metrics_text()))
        await settle(rt, targets, kernel, tally)
        check_metrics(await rt.metrics_text(), records, tally)
        assert not system.failures, f"seed {seed}: runtime actors failed: {list(system.failures)}"
        check_dead_letters(system, kernel.letters, tally, f"seed {seed}: dead letters")
    finally:
        await rt.close()
    assert not system.failures, f"seed {seed}: runtime actors failed: {list(system.failures)}"
    assert rt.close_cancelled == 0, f"seed {seed}: close() cancelled background work"
    assert not any(rt.close_unfinished.values()), f"seed {seed}: {rt.close_unfinished}"
    assert system.live_actors == 0
    check_dead_letters(system, kernel.letters, tally, f"seed {seed}: dead letters after close")
    pids = chaos.pids_dir.iterdir() if chaos.pids_dir.exists() else iter(())
    assert not [p.name for p in pids if is_our_live_child(int(p.name))], "a worker outlived close"
    return tally


def check_record(record: TaskRecord) -> None:
    """Its events are a legal path from Enqueued to its (terminal) status, and agree with it."""
    path = [event.status for event in record.events]
    where = f"task {record.task_id}: {describe(record)}"
    assert path[0] is S.ENQUEUED, where
    for old, new in itertools.pairwise(path):
        assert new in TRANSITIONS[old], f"{where}: illegal {old} -> {new}"
    assert record.status is path[-1] and record.status.is_terminal, where
    assert record.attempts == path.count(S.RUNNING), where
    assert record.retries == path.count(S.RETRYING), where
    if record.status is S.SUCCEEDED:
        assert record.result in (record.task_id, "stopped"), where
    if record.status is S.FAILED:
        assert record.error is not None, where


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def check_metrics(text: str, records: list[TaskRecord], tally: Tally) -> None:
    """The counters tell the same story as the records; nothing is left in flight."""
    values = metric_values(text)
    entered: Counter[tuple[str, str]] = Counter()
    for record in records:
        for event in record.events:
            entered[(record.function, str(event.status))] += 1
    for fn in set(tally.accepted.values()):
        submitted = sum(1 for f in tally.accepted.values() if f == fn)
        assert values[("stint_tasks_submitted_total", (("function", fn),))] == submitted
        for state in S:
            key = ("stint_task_transitions_total", (("function", fn), ("state", str(state))))
            assert values[key] == entered[(fn, str(state))], f"{fn}: entries into {state}"
    in_flight = {k: v for k, v in values.items() if k[0] in ("stint_tasks", "stint_queue_depth")}
    assert not {k: v for k, v in in_flight.items() if v}, "tasks still counted in flight"


async def settle(rt: Runtime, targets: list[Target], kernel: KernelTrace, tally: Tally) -> None:
    """Wait until only the supervisor and one pool per function are left, all idle.

    Every task is terminal by now: a retired pool still alive after LINGERING_AFTER
    seconds is "retired-pool-lingers" (close() still shuts it down).
    """
    system = rt.actor_system
    assert system is not None
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def leftovers() -> dict[str, Any]:
        found: dict[str, Any] = {}
        retired = kernel.retired_pools()
        lingering = loop.time() - started > LINGERING_AFTER and retired
        if lingering:
            tally.known.add("retired-pool-lingers")
        expected = 1 + len(rt.functions) + (len(retired) if lingering else 0)
        if system.live_actors != expected:
            found["live actors"] = (system.live_actors, "retired pools", retired)
        for target in targets:
            infos = await rt.instances(target.name)
            for info in infos:
                if info.in_flight or info.abandoned or info.state in (BUSY, STOPPING):
                    found[info.instance_id] = (str(info.state), info.in_flight, info.abandoned)
            if len(infos) > target.config["max_instances"]:
                found[f"{target.name} instances"] = len(infos)
        return found

    try:
        async with asyncio.timeout(LINGERING_AFTER + 12):
            while await leftovers():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"the runtime did not settle: {await leftovers()}") from None


def check_dead_letters(
    system: ActorSystem, letters: Counter[str], tally: Tally, message: str
) -> None:
    known = sum(n for letter, n in letters.items() if is_late_for_a_retired_pool(letter))
    if known:
        tally.known.add("retired-pool-dead-letters")
    assert system.dead_letters == known, f"{message}: {dict(letters)}"


def is_late_for_a_retired_pool(letter: str) -> bool:
    receiver, _, message = letter.partition(" <- ")
    kind = message.split()[-1]
    return kind in LATE_FOR_A_POOL and (receiver == "?" or receiver.startswith("pool:"))


def xfail_if_known(tally: Tally) -> None:
    if tally.known:
        bugs = "; ".join(f"{name} ({KNOWN_BUGS[name]})" for name in sorted(tally.known))
        pytest.xfail(f"every other check passed, but known runtime bugs showed up: {bugs}")


# --- reports ---------------------------------------------------------------------------------


def summary(seed: int, tally: Tally, records: list[TaskRecord], metrics: str) -> str:
    """One line per run (shown with ``pytest -s``): what the chaos did, how tasks ended."""
    ended = Counter(str(r.status) for r in records)
    gone: Counter[str] = Counter()
    for (name, labels), value in metric_values(metrics).items():
        if name == "stint_instance_stops_total":
            gone[dict(labels)["reason"]] += int(value)
    return (
        f"chaos seed={seed}: {len(records)} tasks {dict(ended)}; stops={tally.stops} "
        f"(refused {tally.stops_refused}) kills={tally.kills} swaps={len(tally.swapped)} "
        f"refused_invokes={tally.refused}; instances gone {dict(gone)}; known bugs "
        f"{sorted(tally.known) or 'none'}"
    )


async def diagnose(rt: Runtime, targets: list[Target]) -> str:
    """What a stuck run looks like: every instance with its recent events, unfinished tasks."""
    lines = []
    for target in targets:
        for info in await rt.instances(target.name):
            events = ", ".join(f"{e.event}({e.detail})" for e in info.events[-8:])
            lines.append(
                f"  {info.instance_id} {info.state} in_flight={info.in_flight} "
                f"abandoned={info.abandoned}: ... {events}"
            )
    for state in (S.ENQUEUED, S.DEQUEUED, S.RUNNING, S.RETRYING, S.STOPPING):
        records = await rt.list(status=state, limit=5)
        lines += [f"  {r.task_id} ({r.function}): {describe(r)}" for r in records]
    return "\n".join(lines)


def describe(record: TaskRecord) -> str:
    return " -> ".join(
        f"{e.status}({e.detail})" if e.detail else str(e.status) for e in record.events
    )


# --- the tests -------------------------------------------------------------------------------


async def test_chaos_async_on_every_store(
    store_url: str, test_dir: pathlib.Path, long_run: bool, kernel: KernelTrace
) -> None:
    tasks = 20_000 if long_run else 1_500
    if store_url != "memory://":
        tasks //= 3  # each invoke waits for its commit: a durable store is slower per task
    known: set[str] = set()
    for seed in seeds(long_run, 8_000):
        store = store_url if store_url == "memory://" else f"sqlite:///{test_dir / f'{seed}.db'}"
        tally = await run_chaos(
            [async_target()], store, seed=seed, tasks=tasks, test_dir=test_dir, kernel=kernel
        )
        assert tally.stops > tally.stops_refused and len(tally.swapped) == 1
        known |= tally.known
    xfail_if_known(Tally(known=known))


async def test_chaos_every_kind(
    test_dir: pathlib.Path, long_run: bool, kernel: KernelTrace
) -> None:
    tasks = 12_000 if long_run else 1_200
    targets = [async_target(), thread_target(), process_target()]
    known: set[str] = set()
    for seed in seeds(long_run, 9_000):
        tally = await run_chaos(
            targets, "memory://", seed=seed, tasks=tasks, test_dir=test_dir, kernel=kernel
        )
        assert tally.stops > tally.stops_refused and tally.kills > 0 and len(tally.swapped) == 3
        known |= tally.known
        for pid in (test_dir / "pids").iterdir():
            pid.unlink()
    xfail_if_known(Tally(known=known))
