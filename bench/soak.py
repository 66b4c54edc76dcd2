"""``python -m bench.soak``: a long run with retention, to show that memory plateaus.

Runs ``--tasks`` tasks (1,000,000 by default) through one runtime on a memory store
with retention (``memory://?max_records=100000``: the newest 100,000 finished
records are kept), in batches of ``--every`` tasks. After each batch (all of its
tasks finished) it samples the process's resident memory (VmRSS in
/proc/self/status), then prints the samples and the plateau.

The workload is mostly no-op tasks, with some that fail once and are retried and
some stopped while they run, so the retry and stop paths are soaked too.

It exits 1 if memory keeps growing after the warm-up (the first ``--warmup``
share of the run, and at least until the store holds as many records as it
will at the end, i.e. retention is full): the median of the last ten samples
may exceed the median of the first ten after the warm-up by at most
``--tolerance-mib`` MiB (16: the allocator's footprint steps up and down by about
7 MiB on its own, even while the Python heap stays flat). Not a test: run it by
hand (it takes a minute or more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from runtime import Runtime, TaskFinishedError
from runtime.loop import run

FUNCTION = "soak"
FLAKY_EVERY = 100  # one task in this many fails its first attempt
STOP_EVERY = 1000  # one task in this many is stopped while it runs
SLOW_STARTED: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)  # task id -> running


@dataclass
class Sample:
    tasks: int  # tasks finished so far
    seconds: float
    rss_mib: float
    records: int  # records the store holds (retention at work)
    live_actors: int


async def handler(event: Any, ctx: Any) -> int:
    if event == "flaky" and ctx.attempt == 1:
        raise ConnectionError("fails once")
    if event == "slow":
        if ctx.attempt == 1:
            SLOW_STARTED[ctx.task_id].set()
        await asyncio.sleep(3600)  # until stopped
    return int(ctx.attempt)


def rss_mib() -> float:
    """This process's resident set size, from /proc/self/status (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status: the soak needs Linux")


async def soak(tasks: int, every: int, store: str, progress: bool) -> list[Sample]:
    rt = Runtime(store=store)
    rt.register(
        FUNCTION, handler, concurrency=1000, max_instances=1, retry_backoff=0,
        max_queued=every + 1,
    )  # fmt: skip
    samples: list[Sample] = []
    started = time.perf_counter()
    async with rt:
        system = rt.actor_system
        assert system is not None
        done = 0
        while done < tasks:
            batch = min(every, tasks - done)
            await run_batch(rt, done, batch)
            done += batch
            sample = Sample(
                done,
                time.perf_counter() - started,
                rss_mib(),
                records_kept(rt),
                system.live_actors,
            )
            samples.append(sample)
            if progress:
                print(
                    f"{sample.tasks:>10,} tasks {sample.seconds:8.1f} s "
                    f"{sample.rss_mib:8.1f} MiB {sample.records:>8,} records",
                    file=sys.stderr,
                )
        if system.dead_letters or system.failures:
            raise RuntimeError(
                f"soak: {system.dead_letters} dead letters, {len(system.failures)} actor failures"
            )
    return samples


def records_kept(rt: Runtime) -> int:
    """How many records the store holds (-1 if it cannot say cheaply)."""
    store: Any = rt.store
    return len(store) if hasattr(store, "__len__") else -1


async def run_batch(rt: Runtime, first: int, count: int) -> None:
    """Invoke ``count`` tasks, stop the slow ones once they run, wait until all are done."""
    stops = []
    for i in range(first, first + count):
        if i % STOP_EVERY == STOP_EVERY - 1:
            task_id = await rt.invoke(FUNCTION, "slow")
            stops.append(asyncio.ensure_future(stop_once_running(rt, task_id)))
        else:
            await rt.invoke(FUNCTION, "flaky" if i % FLAKY_EVERY == 0 else None)
    await asyncio.gather(*stops)
    await rt.join(FUNCTION)


async def stop_once_running(rt: Runtime, task_id: str) -> None:
    await SLOW_STARTED[task_id].wait()
    del SLOW_STARTED[task_id]
    # Each stop restarts the instance under every attempt on it; a slow task cut short
    # that way more often than it may retry has Failed before its own stop comes.
    with contextlib.suppress(TaskFinishedError):
        await rt.stop(task_id)


@dataclass
class Verdict:
    warmup_tasks: int
    plateau_mib: float  # median of the first ten samples after the warm-up
    end_mib: float  # median of the last ten
    growth_mib: float
    slope_kib_per_100k: float  # least-squares slope after the warm-up
    peak_mib: float
    tasks_per_s: float
    ok: bool


def warmup_tasks(samples: list[Sample], share: float) -> int:
    """The warm-up: ``share`` of the run, and at least until retention is full (the store
    holds 99% of the records it ends with)."""
    final = samples[-1].records
    full = next((s.tasks for s in samples if s.records >= 0.99 * final), 0)
    return max(int(samples[-1].tasks * share), full)


def judge(
    samples: list[Sample], warmup_tasks: int, tolerance_mib: float
) -> Verdict:  # fmt: skip
    after = [s for s in samples if s.tasks > warmup_tasks]
    if len(after) < 20:
        raise SystemExit(
            f"soak: only {len(after)} samples after the warm-up; run more tasks or sample "
            "more often (--every) to judge the plateau (20 needed)"
        )
    plateau = statistics.median(s.rss_mib for s in after[:10])
    end = statistics.median(s.rss_mib for s in after[-10:])
    slope = statistics.linear_regression([s.tasks for s in after], [s.rss_mib for s in after]).slope
    last = samples[-1]
    return Verdict(
        warmup_tasks,
        plateau,
        end,
        end - plateau,
        slope * 1024 * 100_000,
        max(s.rss_mib for s in samples),
        last.tasks / last.seconds,
        end - plateau <= tolerance_mib,
    )


def report(samples: list[Sample], verdict: Verdict, rows: int) -> str:
    step = max(1, len(samples) // rows)
    shown = samples[::step]
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    lines = [
        "| tasks | seconds | RSS MiB | records kept |",
        "|---:|---:|---:|---:|",
        *[f"| {s.tasks:,} | {s.seconds:.1f} | {s.rss_mib:.1f} | {s.records:,} |" for s in shown],
        "",
        f"warm-up: {verdict.warmup_tasks:,} tasks; plateau {verdict.plateau_mib:.1f} MiB, "
        f"end {verdict.end_mib:.1f} MiB (growth {verdict.growth_mib:+.1f} MiB, slope "
        f"{verdict.slope_kib_per_100k:+.1f} KiB per 100,000 tasks), peak "
        f"{verdict.peak_mib:.1f} MiB, {verdict.tasks_per_s:,.0f} tasks/s",
        "plateau: OK" if verdict.ok else "plateau: FAILED (memory keeps growing)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in all (1000000)")
    parser.add_argument("--every", type=int, default=10_000, help="tasks per sample (10000)")
    parser.add_argument(
        "--store", default="memory://?max_records=100000", help="store URL (retention!)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="share of the run before judging (0.3)"
    )
    parser.add_argument(
        "--tolerance-mib", type=float, default=16.0, help="growth allowed after warm-up (16)"
    )
    parser.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    parser.add_argument("--rows", type=int, default=20, help="rows of the printed table (20)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.every < 1:
        parser.error("--tasks and --every must be at least 1")
    gc.collect()
    samples = run(soak(args.tasks, args.every, args.store, not args.quiet), loop=args.loop)
    verdict = judge(samples, warmup_tasks(samples, args.warmup), args.tolerance_mib)
    print(f"python -m bench.soak --tasks {args.tasks} --every {args.every} --store {args.store}")
    print(f"{platform.python_implementation()} {platform.python_version()}, loop {args.loop}")
    print(report(samples, verdict, args.rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"samples": [asdict(s) for s in samples], "verdict": asdict(verdict)}, fh, indent=2
            )
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
