"""Task ids: the rule for caller-given ones, and a fast generator for the rest."""

from __future__ import annotations

import itertools
import os
import re

from .errors import InvalidTaskIdError

_TASK_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,127}")


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it follows the rule, else raise :class:`InvalidTaskIdError`."""
    if not isinstance(task_id, str) or _TASK_ID_RE.fullmatch(task_id) is None:
        raise InvalidTaskIdError(
            f"task id {task_id!r} is not valid: it must start with a letter or '_', contain only "
            "letters, digits, '_' and '-', and be at most 128 characters (or omit it to get one)"
        )
    return task_id


class TaskIdGenerator:
    """``t<12 random hex>-<counter>``: unique within a runtime, and across runtimes
    (the random prefix), without the cost of a UUID per task."""

    def __init__(self) -> None:
        self._prefix = "t" + os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"
