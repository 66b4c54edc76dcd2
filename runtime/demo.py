"""``stint demo``: an embedded example that exercises the whole lifecycle and reports it.

Everything printed is measured from the run itself: final states come from the
task records, histories are the records' own events, the rate is wall-clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._demo_work import checksum, isolated
from .context import InstanceContext, TaskContext
from .record import TaskRecord
from .runtime import Runtime
from .states import TaskState

TERMINAL_ORDER = [
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.STOPPED,
    TaskState.EXPIRED,
    TaskState.INVALID,
]


class Demo:
    """The runtime with the demo's functions, one per lifecycle path worth seeing."""

    def __init__(self, seed: int) -> None:
        self.rt = build_runtime(seed, self.started_running)
        self.running: dict[str, asyncio.Event] = {}

    def started_running(self, task_id: str) -> None:
        self.running.setdefault(task_id, asyncio.Event()).set()

    async def wait_running(self, task_id: str) -> None:
        await self.running.setdefault(task_id, asyncio.Event()).wait()


def build_runtime(seed: int, on_slow_start: Callable[[str], None]) -> Runtime:
    rt = Runtime(seed=seed)
    rng = random.Random(seed)

    async def greet(event: Any, ctx: TaskContext) -> str:
        await asyncio.sleep(0)
        return f"hello {event['name']} from {ctx.instance.instance_id}"

    async def flaky(event: Any, ctx: TaskContext) -> int:
        if rng.random() < 0.5:
            raise ConnectionError(f"upstream refused attempt {ctx.attempt}")
        return ctx.attempt

    async def slow(event: Any, ctx: TaskContext) -> None:
        on_slow_start(ctx.task_id)
        await asyncio.sleep(3600)  # stopped by the demo long before this

    async def stale(event: Any, ctx: TaskContext) -> None:
        await asyncio.sleep(0.02)

    def open_model(instance: InstanceContext) -> None:
        raise FileNotFoundError("model weights not found at /models/demo.bin")

    def close_connection(instance: InstanceContext) -> None:
        instance.state.clear()

    rt.register("greet", greet, concurrency=50, max_instances=4)
    rt.register("flaky", flaky, retry_backoff=0.005, retry_backoff_max=0.05, concurrency=10)
    rt.register("slow", slow, pre_stop=close_connection, concurrency=1, max_instances=5)
    rt.register("stale", stale, max_event_age=0.25, max_instances=1)
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
    return counts


async def run_demo(tasks: int = 3000, seed: int = 7, console: Console | None = None) -> int:
    if console is None:
        console = Console()
        if not console.is_terminal and console.width < 100:
            console = Console(width=100)  # a pipe or CI log: room for the whole table
    # The demo's Initializer fails on purpose; its histories below say so, once.
    logging.getLogger("stint").setLevel(logging.ERROR)
    counts = plan(tasks)
    total = sum(counts.values())
    console.print(
        f"[bold]stint demo[/bold]: {total} tasks over {len(counts)} functions "
        f"({', '.join(f'{n} {name}' for name, n in counts.items())})"
    )
    demo = Demo(seed)
    async with demo.rt as rt:
        started = time.perf_counter()
        ids: dict[str, list[str]] = {name: [] for name in counts}
        for name, n in counts.items():
            for i in range(n):
                ids[name].append(await rt.invoke(name, {"name": f"user-{i}", "n": i}))
        records = await _follow(demo, ids, total, console)
        elapsed = time.perf_counter() - started
        kinds = {name: spec.config.kind for name, spec in rt.functions.items()}
        console.print(_state_table(records, kinds))
        _print_histories(console, records)
        workers = {r.result["pid"] for r in records if r.function == "isolated" and r.result}
        console.print(
            f"{total} tasks reached a terminal state in {elapsed:.2f} s "
            f"({total / elapsed:,.0f} tasks/s overall); the isolated tasks ran in "
            f"{len(workers)} worker process(es): {', '.join(map(str, sorted(workers)))}."
        )
        bad = [r for r in records if not r.is_terminal]
    return 1 if bad else 0


async def _follow(
    demo: Demo, ids: dict[str, list[str]], total: int, console: Console
) -> list[TaskRecord]:
    """Wait for every task with a progress bar; stop the slow ones once they run."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    rt = demo.rt
    records: list[TaskRecord] = []
    with progress:
        bar = progress.add_task("tasks finished", total=total)

        async def follow(task_id: str) -> None:
            records.append(await rt.wait(task_id, timeout=60))
            progress.advance(bar)

        async def stop_when_running(task_id: str) -> None:
            await demo.wait_running(task_id)
            await rt.stop(task_id)

        everything = [task_id for group in ids.values() for task_id in group]
        await asyncio.gather(
            *(follow(t) for t in everything), *(stop_when_running(t) for t in ids["slow"])
        )
    return records


def _state_table(records: list[TaskRecord], kinds: dict[str, str]) -> Table:
    table = Table(title="Final states per function")
    table.add_column("function")
    table.add_column("kind")
    for state in TERMINAL_ORDER:
        table.add_column(state.value, justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("retries", justify="right")
    by_function: dict[str, Counter[TaskState]] = {}
    attempts: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for record in records:
        by_function.setdefault(record.function, Counter())[record.status] += 1
        attempts[record.function] += record.attempts
        retries[record.function] += record.retries
    for function, states in by_function.items():
        table.add_row(
            function,
            kinds.get(function, "?"),
            *(str(states[s]) for s in TERMINAL_ORDER),
            str(attempts[function]),
            str(retries[function]),
        )
    return table


def _print_histories(console: Console, records: list[TaskRecord]) -> None:
    """The event history of one interesting task per path."""
    wanted: list[tuple[str, Callable[[TaskRecord], bool]]] = [
        ("flaky", lambda r: r.retries > 0),
        ("slow", lambda r: r.status is TaskState.STOPPED),
        ("stale", lambda r: r.status is TaskState.EXPIRED),
        ("broken", lambda r: r.status is TaskState.INVALID),
    ]
    for function, interesting in wanted:
        record = next((r for r in records if r.function == function and interesting(r)), None)
        if record is None:
            continue
        console.print(f"\n[bold]{record.task_id}[/bold] ({function}) -> {record.status}")
        start = record.events[0].timestamp
        for event in record.events:
            detail = f"  {event.detail}" if event.detail else ""
            offset = (event.timestamp - start) * 1000
            console.print(f"  +{offset:8.2f} ms  {event.status.value:<9}{detail}", markup=False)
