"""The docs' promises: the runnable examples in docs/lifecycle.md run as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "lifecycle.md").read_text(), re.S)


def run(example: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )


def test_task_context_example_runs_as_written() -> None:
    done = run(EXAMPLES[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Succeeded {") and "'steps': 3" in done.stdout


@pytest.mark.parametrize("index", range(1, len(EXAMPLES)))
def test_every_other_example_runs_as_written(index: int) -> None:
    done = run(EXAMPLES[index])  # each checks itself with assert
    assert done.returncode == 0, done.stderr
