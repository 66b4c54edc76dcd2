"""The main job: ``stint demo`` runs every lifecycle path, fits 80 columns, and is repeatable."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

from runtime.demo import ON_PURPOSE, plan

TASKS = 300


@functools.cache
def demo_output(seed: int, run: int = 0) -> str:
    """The output of ``stint demo`` piped, on an 80-column console (``run`` tells runs apart)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["COLUMNS"] = "80"
    command = ["demo", "--tasks", str(TASKS), "--seed", str(seed), "--loop", "asyncio"]
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def outcome_table(out: str) -> list[str]:
    """The lines of the final-states table: what must not depend on timing."""
    lines = out.splitlines()
    start = lines.index("Final states per function")
    end = lines.index(ON_PURPOSE, start)
    return lines[start:end]


def test_stint_demo_runs_and_reports_every_path() -> None:
    out = demo_output(7)
    for needle in ("Final states per function", "Retrying", "Stopped", "Expired", "Invalid"):
        assert needle in out
    table = "\n".join(outcome_table(out))
    assert " thread " in table and " process " in table  # every instance kind takes part
    assert "isolated tasks ran in" in out and "worker process(es)" in out
    total = sum(plan(TASKS).values())
    assert f"{total} tasks reached a terminal state" in out


def test_stint_demo_fits_80_columns() -> None:
    lines = demo_output(7).splitlines()
    assert "…" not in "\n".join(lines)  # nothing cut short by rich
    assert [line for line in lines if len(line) > 80] == []
    assert [line for line in lines if line != line.rstrip()] == []


def test_deliberate_failures_are_labelled() -> None:
    out = demo_output(7)
    table = outcome_table(out)
    for function in ("flaky", "slow", "stale", "broken"):
        assert any(line.startswith(f"{function}* ") for line in table), function
    for function in ("greet", "checksum", "isolated"):
        assert any(line.startswith(f"{function} ") for line in table), function
    assert out.count(ON_PURPOSE) == 2  # under the plan and under the table
    assert "(on purpose)" in out  # the errors say so in the histories too


def test_the_same_seed_gives_the_same_outcomes() -> None:
    first, again = outcome_table(demo_output(7)), outcome_table(demo_output(7, run=1))
    assert first == again
    assert outcome_table(demo_output(8)) != first  # the seed is what decides


def test_bad_arguments_are_explained() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "demo", "--tasks", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "positive integer" in done.stderr
