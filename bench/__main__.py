"""``python -m bench``: stint against the physical limit and against its peers, in one run.

Throughput variants are interleaved (A B C A B C ...) and each figure is the
median of the repetitions, so a noisy neighbour hurts every variant alike and
the ratios to ``bare`` stay comparable. Each repetition gets a fresh event loop
of the variant's kind. Then latency, stop latency, cold start, memory per
retained record and a concurrency sweep. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import runtime
from runtime.loop import run

from . import cluster, http, probes
from .variants import VARIANTS, Variant

KINDS = ("async", "thread", "process")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("-n", "--tasks", type=int, default=200_000, help="tasks per run (200000)")
    parser.add_argument("-r", "--repeat", type=int, default=5, help="interleaved repetitions (5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: small counts, 1 repetition"
    )
    parser.add_argument("--only", action="append", help="run only these variants (repeatable)")
    parser.add_argument("--no-probes", action="store_true", help="throughput only")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    n, repeat = (2_000, 1) if args.quick else (args.tasks, args.repeat)
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    console = Console()
    console.print(f"stint build: {build()}")
    variants = runnable(variants, console)
    timings = measure(variants, n, repeat, console)
    results = summarise(variants, timings, n)
    console.print(throughput_table(results, n, repeat))
    for variant in variants:
        line = cluster.cost_line(variant.name)
        if line is not None:
            console.print(line)
    rates = {r["variant"]: r["tasks_per_s"] for r in results}
    if "stint-sqlite" in rates and "stint-windowed" in rates:
        durable = rates["stint-sqlite"] / rates["stint-windowed"]
        console.print(f"durable (sqlite, FULL) / memory store, same shape: {durable:.2f}x")
    report: dict[str, Any] = {
        "machine": machine(),
        "tasks": n,
        "repeat": repeat,
        "throughput": results,
        "redis_costs": {v.name: cluster.COSTS[v.name] for v in variants if v.name in cluster.COSTS},
    }
    if not args.no_probes:
        report["probes"] = run_probes(args.quick, console)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        console.print(
            f"wrote {args.json}; draw the figure with: python -m bench.figure {args.json}"
        )
    return 0


def runnable(variants: list[Variant], console: Console) -> list[Variant]:
    """The variants whose programs are installed; says why each other one is skipped."""
    kept = []
    for variant in variants:
        if variant.needs is not None and shutil.which(variant.needs) is None:
            why = f"{variant.needs} not found (apt-get install -y {variant.needs})"
            console.print(f"skipped {variant.name}: {why}")
        else:
            kept.append(variant)
    return kept


def measure(
    variants: list[Variant], n: int, repeat: int, console: Console
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {v.name: [] for v in variants}
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("throughput", total=repeat * len(variants))
        for _ in range(repeat):
            for variant in variants:
                gc.collect()
                count = max(1, int(n * variant.share))
                timings[variant.name].append(run(variant.run(count), loop=variant.loop))
                progress.advance(bar)
    return timings


def summarise(
    variants: list[Variant], timings: dict[str, list[float]], n: int
) -> list[dict[str, Any]]:
    rates = {
        v.name: max(1, int(n * v.share)) / statistics.median(timings[v.name]) for v in variants
    }
    bare = rates.get("bare")
    return [
        {
            "variant": v.name,
            "what": v.what,
            "loop": v.loop,
            "tasks": max(1, int(n * v.share)),
            "tasks_per_s": rates[v.name],
            "ratio_to_bare": rates[v.name] / bare if bare else None,
            "seconds": timings[v.name],
        }
        for v in variants
    ]


def throughput_table(results: list[dict[str, Any]], n: int, repeat: int) -> Table:
    out = Table(title=f"throughput: no-op tasks (N={n:,}), median of {repeat}")
    for column in ("variant", "what", "tasks", "tasks/s", "x bare"):
        out.add_column(column, justify="left" if column in ("variant", "what") else "right")
    for r in results:
        ratio = "" if r["ratio_to_bare"] is None else f"{r['ratio_to_bare']:.3f}"
        out.add_row(r["variant"], r["what"], f"{r['tasks']:,}", f"{r['tasks_per_s']:,.0f}", ratio)
    return out


def run_probes(quick: bool, console: Console) -> dict[str, Any]:
    sizes = (
        {
            "latency": 300,
            "stop": 5,
            "cold": 3,
            "memory": 2_000,
            "sweep": 1_000,
            "http": 200,
            "redis": 200,
        }
        if quick
        else {
            "latency": 20_000,
            "stop": 100,
            "cold": 30,
            "memory": 100_000,
            "sweep": 50_000,
            "http": 5_000,
            "redis": 5_000,
        }
    )
    levels = [1, 10] if quick else [1, 10, 100, 1000]
    with console.status("latency, stop, cold start, memory, concurrency sweep"):
        found: dict[str, Any] = {
            "round_trip_seconds": run(probes.round_trip_latency(sizes["latency"])),
            **{
                f"stop_seconds_{kind}": run(probes.stop_latency(sizes["stop"], kind))
                for kind in KINDS
            },
            **{
                f"cold_start_seconds_{kind}": run(probes.cold_start(sizes["cold"], kind))
                for kind in KINDS
            },
            "memory": run(probes.memory_per_record(sizes["memory"])),
            "concurrency_sweep": run(probes.concurrency_sweep(sizes["sweep"], levels)),
            "http_round_trip_seconds": run(http.invoke_latency(sizes["http"])),
            "http_server_cpu": run(http.server_cpu_per_invoke(sizes["http"] * 4)),
        }
        if cluster.UNAVAILABLE is None:
            found["redis_round_trip_seconds"] = run(cluster.round_trip_latency(sizes["redis"]))
    table = Table(title="latency and footprint")
    for column in ("probe", "p50", "p99", "p99.9", "samples"):
        table.add_column(column, justify="left" if column == "probe" else "right")
    rows = [("round_trip_seconds", "invoke -> Succeeded, no load (async)")]
    rows += [(f"stop_seconds_{k}", f"stop of a Running task ({k})") for k in KINDS]
    rows += [(f"cold_start_seconds_{k}", f"instance cold start ({k})") for k in KINDS]
    rows += [("http_round_trip_seconds", "HTTP invoke -> Succeeded (SSE), 50 clients")]
    if "redis_round_trip_seconds" in found:
        rows += [("redis_round_trip_seconds", "invoke -> Succeeded, no load (redis)")]
    else:
        console.print(f"skipped the Redis latency probe: {cluster.UNAVAILABLE}")
    for key, label in rows:
        p = found[key]
        table.add_row(
            label, *(f"{p[q] * 1e6:,.1f} µs" for q in ("p50", "p99", "p99.9")), str(p["n"])
        )
    console.print(table)
    cpu = found["http_server_cpu"]
    console.print(
        f"stint serve: {cpu['cpu_seconds_per_invoke'] * 1e6:,.0f} µs of the node's CPU per "
        f"HTTP invoke (one core: {1 / cpu['cpu_seconds_per_invoke']:,.0f} invokes/s); "
        f"{cpu['invokes_per_s']:,.0f} invokes/s measured alongside"
    )
    memory = found["memory"]
    console.print(
        f"memory per retained terminal record: {memory['bytes_per_record']:,.0f} bytes "
        f"(tracemalloc over {memory['records']:,} tasks)"
    )
    sweep = Table(title="throughput vs handler concurrency (one instance)")
    for column in ("handler", "concurrency", "tasks/s"):
        sweep.add_column(column, justify="right")
    for row in found["concurrency_sweep"]:
        sweep.add_row(row["handler"], str(row["concurrency"]), f"{row['tasks_per_s']:,.0f}")
    console.print(sweep)
    return found


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "stint_build": build(),
    }


def build() -> str:
    """Which stint is measured: the pure-Python one or the mypyc-compiled one (STINT_COMPILE=1)."""
    return "compiled (mypyc)" if runtime.compiled else "pure Python"


if __name__ == "__main__":
    sys.exit(main())
