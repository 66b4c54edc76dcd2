"""``stint demo``: an embedded example that exercises the whole lifecycle and reports it.

Everything printed is measured from the run itself: final states come from the
task records, histories are the records' own events, the rate is wall-clock.

The table of outcomes is a function of ``--seed`` alone: the flaky function's
failures are drawn per (seed, task, attempt), not from a generator shared by
concurrent attempts; the tasks that expire are made to wait behind a held
instance rather than raced against a timer; the slow tasks are stopped only once
they run. Timings, instance ids and worker pids may differ between runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._demo_work import checksum, isolated
from .context import InstanceContext, TaskContext
from .record import TaskRecord
from .runtime import Runtime
from .states import TaskState

WIDTH = 80
TERMINAL_ORDER = [
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.STOPPED,
    TaskState.EXPIRED,
    TaskState.INVALID,
]
#: How long a "stale" task may wait in the queue; the held one keeps the rest past it.
STALE_AGE = 0.2
ON_PURPOSE = "* goes wrong on purpose (fails, is stopped, expires or cannot start)"


@dataclass(frozen=True)
class DemoFunction:
    """One function of the demo: what it does, and whether it goes wrong on purpose."""

    name: str
    what: str
    on_purpose: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}*" if self.on_purpose else self.name


FUNCTIONS = [
    DemoFunction("greet", "returns a greeting"),
    DemoFunction("flaky", "each attempt fails with odds 1/2, drawn from the seed", True),
    DemoFunction("slow", "runs until the demo stops it", True),
    DemoFunction("stale", f"queues behind a held task past max_event_age={STALE_AGE} s", True),
    DemoFunction("broken", "its Initializer raises: no instance ever starts", True),
    DemoFunction("checksum", "blocking work on the instance's own thread"),
    DemoFunction("isolated", "runs in a worker process"),
]


def fails_on_purpose(seed: int, n: int, attempt: int) -> bool:
    """Whether attempt ``attempt`` of flaky task ``n`` fails: the same on every run."""
    return random.Random(f"{seed}:{n}:{attempt}").random() < 0.5


class Demo:
    """The runtime with the demo's functions, one per lifecycle path worth seeing."""

    def __init__(self, seed: int) -> None:
        self.running: dict[str, asyncio.Event] = {}
        self.release_stale = asyncio.Event()
        self.rt = build_runtime(seed, self.started_running, self.release_stale)

    def started_running(self, task_id: str) -> None:
        self.running.setdefault(task_id, asyncio.Event()).set()

    async def wait_running(self, task_id: str) -> None:
        await self.running.setdefault(task_id, asyncio.Event()).wait()


def build_runtime(
    seed: int, on_running: Callable[[str], None], release_stale: asyncio.Event
) -> Runtime:
    rt = Runtime(seed=seed)  # seeds the retry jitter too: timings only, never outcomes

    async def greet(event: Any, ctx: TaskContext) -> str:
        await asyncio.sleep(0)
        return f"hello {event['name']} from {ctx.instance.instance_id}"

    async def flaky(event: Any, ctx: TaskContext) -> int:
        if fails_on_purpose(seed, event["n"], ctx.attempt):
            raise ConnectionError("upstream refused (on purpose)")
        return ctx.attempt

    async def slow(event: Any, ctx: TaskContext) -> None:
        on_running(ctx.task_id)
        await asyncio.sleep(3600)  # stopped by the demo long before this

    async def stale(event: Any, ctx: TaskContext) -> None:
        if event.get("hold"):  # keep the only instance busy until the rest are too old
            on_running(ctx.task_id)
            await release_stale.wait()

    def open_model(instance: InstanceContext) -> None:
        raise FileNotFoundError("no model at /models/demo.bin (on purpose)")

    def close_connection(instance: InstanceContext) -> None:
        instance.state.clear()

    rt.register("greet", greet, concurrency=50, max_instances=4)
    rt.register("flaky", flaky, retry_backoff=0.005, retry_backoff_max=0.05, concurrency=10)
    rt.register("slow", slow, pre_stop=close_connection, concurrency=1, max_instances=5)
    rt.register("stale", stale, max_event_age=STALE_AGE, max_instances=1)
    rt.register("broken", greet, initializer=open_model, max_instances=2)
    rt.register("checksum", checksum, kind="thread", max_instances=4)
    rt.register("isolated", isolated, kind="process", max_instances=2, concurrency=8)
    return rt


def plan(tasks: int) -> dict[str, int]:
    """How many tasks each function gets out of ``tasks`` (at least a few each)."""
    small = max(5, tasks // 100)
    counts = {
        "flaky": max(10, tasks // 5),
        "slow": 5,
        "stale": max(20, small * 4),
        "broken": small,
        "checksum": max(10, tasks // 30),
        "isolated": max(10, tasks // 30),
    }
    counts["greet"] = max(10, tasks - sum(counts.values()))
    return {f.name: counts[f.name] for f in FUNCTIONS}


async def run_demo(tasks: int = 3000, seed: int = 7, console: Console | None = None) -> int:
    """Run the demo, print its report on ``console``; 1 if a task did not finish."""
    if console is None:
        console = Console()
    # The demo's Initializer fails on purpose; its histories below say so, once.
    logging.getLogger("stint").setLevel(logging.ERROR)
    counts = plan(tasks)
    _print_plan(console, counts, seed)
    demo = Demo(seed)
    async with demo.rt as rt:
        started = time.perf_counter()
        ids = await _invoke_all(demo, counts)
        records = await _follow(demo, ids, console)
        elapsed = time.perf_counter() - started
        kinds = {name: spec.config.kind for name, spec in rt.functions.items()}
    console.print()
    console.print("Final states per function", style="bold", highlight=False)
    console.print(outcome_table(records, kinds))
    _print_line(console, ON_PURPOSE)
    _print_histories(console, records)
    _print_summary(console, records, elapsed)
    return 0 if all(r.is_terminal for r in records) else 1


def _print_plan(console: Console, counts: dict[str, int], seed: int) -> None:
    total = sum(counts.values())
    _print_line(console, f"stint demo: {total} tasks over {len(counts)} functions, seed {seed}")
    width = max(len(str(n)) for n in counts.values())
    for function in FUNCTIONS:
        _print_line(
            console, f"  {function.label:<9} {counts[function.name]:>{width}}  {function.what}"
        )
    _print_line(console, ON_PURPOSE)
    console.print()


async def _invoke_all(demo: Demo, counts: dict[str, int]) -> dict[str, list[str]]:
    """Invoke every task, with ids that say what they are (``flaky_3``).

    The first stale task is invoked alone and runs before the others are queued
    behind it, so it always holds the instance and the others always expire.
    """
    rt = demo.rt
    ids: dict[str, list[str]] = {name: [] for name in counts}
    holder = await rt.invoke("stale", {"name": "user-0", "n": 0, "hold": True}, task_id="stale_0")
    ids["stale"].append(holder)
    await demo.wait_running(holder)
    for name, n in counts.items():
        for i in range(len(ids[name]), n):
            payload = {"name": f"user-{i}", "n": i}
            ids[name].append(await rt.invoke(name, payload, task_id=f"{name}_{i}"))
    return ids


async def _follow(demo: Demo, ids: dict[str, list[str]], console: Console) -> list[TaskRecord]:
    """Wait for every task with a progress bar; returns the records in invocation order.

    Meanwhile the slow tasks are stopped once they run, and the held stale task is
    released once every other stale task has waited longer than ``max_event_age``.
    """
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    rt = demo.rt
    everything = [task_id for group in ids.values() for task_id in group]
    with progress:
        bar = progress.add_task("tasks finished", total=len(everything))

        async def follow(task_id: str) -> TaskRecord:
            record = await rt.wait(task_id, timeout=60)
            progress.advance(bar)
            return record

        async def stop_when_running(task_id: str) -> None:
            await demo.wait_running(task_id)
            await rt.stop(task_id)

        async def release_stale() -> None:
            await asyncio.sleep(STALE_AGE * 1.25)  # the monotonic clock the pool reads too
            demo.release_stale.set()

        async with asyncio.TaskGroup() as group:
            followed = [group.create_task(follow(t)) for t in everything]
            group.create_task(release_stale())
            for task_id in ids["slow"]:
                group.create_task(stop_when_running(task_id))
    return [task.result() for task in followed]


def outcome_rows(records: list[TaskRecord]) -> list[tuple[str, list[int], int]]:
    """Per function (in the demo's order): its label, counts per terminal state, retries."""
    states: dict[str, Counter[TaskState]] = {f.name: Counter() for f in FUNCTIONS}
    retries: Counter[str] = Counter()
    for record in records:
        states[record.function][record.status] += 1
        retries[record.function] += record.retries
    return [
        (f.label, [states[f.name][s] for s in TERMINAL_ORDER], retries[f.name]) for f in FUNCTIONS
    ]


def outcome_table(records: list[TaskRecord], kinds: dict[str, str]) -> Table:
    """The final states per function, narrow enough for 80 columns."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("function")
    table.add_column("kind")
    for state in TERMINAL_ORDER:
        table.add_column(state.value, justify="right")
    table.add_column("retries", justify="right")
    for function, (label, counts, retries) in zip(FUNCTIONS, outcome_rows(records), strict=True):
        table.add_row(label, kinds[function.name], *map(str, counts), str(retries))
    return table


def _print_histories(console: Console, records: list[TaskRecord]) -> None:
    """The event history of the first task (in invocation order) on each path."""
    wanted: list[tuple[str, Callable[[TaskRecord], bool]]] = [
        ("flaky", lambda r: r.retries > 0 and r.status is TaskState.SUCCEEDED),
        ("slow", lambda r: r.status is TaskState.STOPPED),
        ("stale", lambda r: r.status is TaskState.EXPIRED),
        ("broken", lambda r: r.status is TaskState.INVALID),
    ]
    for function, interesting in wanted:
        record = next((r for r in records if r.function == function and interesting(r)), None)
        if record is None:
            continue
        console.print()
        _print_line(console, f"{record.task_id} ({function}*) -> {record.status.value}")
        start = record.events[0].timestamp
        for event in record.events:
            offset = (event.timestamp - start) * 1000
            head = f"  +{offset:8.2f} ms  {event.status.value:<10}"
            for line in _wrapped(head, event.detail):
                _print_line(console, line)


def _wrapped(head: str, detail: str) -> list[str]:
    """``head`` and ``detail``, the detail wrapped under itself within WIDTH columns."""
    if not detail:
        return [head.rstrip()]
    lines = textwrap.wrap(detail, WIDTH - len(head), break_long_words=True) or [""]
    indent = " " * len(head)
    return [head + lines[0], *(indent + line for line in lines[1:])]


def _print_summary(console: Console, records: list[TaskRecord], elapsed: float) -> None:
    total = len(records)
    workers = sorted({r.result["pid"] for r in records if r.function == "isolated" and r.result})
    console.print()
    _print_line(
        console,
        f"{total} tasks reached a terminal state in {elapsed:.2f} s "
        f"({total / elapsed:,.0f} tasks/s overall);",
    )
    _print_line(
        console,
        f"the isolated tasks ran in {len(workers)} worker process(es): "
        f"{', '.join(map(str, workers))}.",
    )


def _print_line(console: Console, line: str) -> None:
    """One line as it is: no markup, no highlighting, no trailing spaces."""
    console.print(line.rstrip(), markup=False, highlight=False)
