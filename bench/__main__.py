"""``python -m bench``: throughput of stint against the physical limit, in one run.

Variants are interleaved (A B C A B C ...) and each figure is the median of the
repetitions, so a noisy neighbour hurts every variant alike and ratios stay
comparable. Each repetition runs on a fresh event loop of the variant's kind.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from runtime.loop import run

from .variants import VARIANTS, Variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("-n", "--tasks", type=int, default=200_000, help="tasks per run (200000)")
    parser.add_argument("-r", "--repeat", type=int, default=5, help="interleaved repetitions (5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 2,000 tasks, 1 repetition"
    )
    parser.add_argument("--only", action="append", help="run only these variants (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    n, repeat = (2_000, 1) if args.quick else (args.tasks, args.repeat)
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    console = Console()
    timings = measure(variants, n, repeat, console)
    results = summarise(variants, timings, n)
    console.print(table(results, n, repeat))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"machine": machine(), "tasks": n, "repeat": repeat, "results": results},
                fh,
                indent=2,
            )
    return 0


def measure(
    variants: list[Variant], n: int, repeat: int, console: Console
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {v.name: [] for v in variants}
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("benchmarking", total=repeat * len(variants))
        for _ in range(repeat):
            for variant in variants:
                gc.collect()
                timings[variant.name].append(run(variant.run(n), loop=variant.loop))
                progress.advance(bar)
    return timings


def summarise(
    variants: list[Variant], timings: dict[str, list[float]], n: int
) -> list[dict[str, Any]]:
    rates = {name: n / statistics.median(ts) for name, ts in timings.items()}
    bare = rates.get("bare")
    return [
        {
            "variant": v.name,
            "what": v.what,
            "loop": v.loop,
            "tasks_per_s": rates[v.name],
            "ratio_to_bare": rates[v.name] / bare if bare else None,
            "seconds": timings[v.name],
        }
        for v in variants
    ]


def table(results: list[dict[str, Any]], n: int, repeat: int) -> Table:
    out = Table(title=f"{n:,} no-op tasks, median of {repeat}")
    for column in ("variant", "what", "tasks/s", "x bare"):
        out.add_column(column, justify="left" if column in ("variant", "what") else "right")
    for r in results:
        ratio = "" if r["ratio_to_bare"] is None else f"{r['ratio_to_bare']:.2f}"
        out.add_row(r["variant"], r["what"], f"{r['tasks_per_s']:,.0f}", ratio)
    return out


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    sys.exit(main())
