"""The docs' promises: the runnable examples in docs/lifecycle.md run as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_task_context_example_runs_as_written() -> None:
    lifecycle = (ROOT / "docs" / "lifecycle.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", lifecycle, re.S)
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Succeeded {") and "'steps': 3" in done.stdout
