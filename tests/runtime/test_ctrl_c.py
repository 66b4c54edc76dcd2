"""Ctrl-C on a program embedding stint: the first waits for close (and says so), the second
cuts the wait short, and close still ends properly (issue 8, item 21)."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "ctrl_c.py"
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_second_ctrl_c_cuts_the_close_short(loop: str) -> None:
    child = subprocess.Popen(
        [sys.executable, str(SCRIPT), loop],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # it waits for the running task (close_timeout=60)
            assert child.poll() is None
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and out.strip() == "INTERRUPTED"
    assert "waiting up to 60.0 s for 1 running attempt(s)" in err  # it said what it waits for
    assert "close interrupted: cutting running work short" in err
    assert "closed with 1 unfinished task(s) (Running: 1)" in err  # and accounted for it
