"""The main job: ``stint demo`` runs every lifecycle path and exits 0."""

from __future__ import annotations

import subprocess
import sys

from runtime.demo import plan


def test_stint_demo_runs_and_reports_every_path() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "demo", "--tasks", "400", "--loop", "asyncio"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in ("Final states per function", "Retrying", "Stopped", "Expired", "Invalid"):
        assert needle in out
    assert "│ thread " in out and "│ process " in out  # every instance kind takes part
    flat = " ".join(out.split())  # rich wraps long lines at the console width
    assert "isolated tasks ran in" in flat and "worker process(es)" in flat
    total = sum(plan(400).values())
    assert f"{total} tasks reached a terminal state" in out


def test_bad_arguments_are_explained() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "demo", "--tasks", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "positive integer" in done.stderr
