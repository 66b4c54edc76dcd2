"""Task ids: the rule for caller-given ones, a fast generator for the rest, derived ids."""

from __future__ import annotations

import hashlib
import itertools
import os
import re

from .errors import InvalidTaskIdError

MAX_TASK_ID = 128
_TASK_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
# The shape of generated ids: reserved, so a caller's id can never collide with one.
_GENERATED_RE = re.compile(r"t[0-9a-f]{12}-[0-9a-f]+")


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it follows the rule, else raise :class:`InvalidTaskIdError`."""
    if not isinstance(task_id, str) or _TASK_ID_RE.fullmatch(task_id) is None:
        raise InvalidTaskIdError(
            f"task id {task_id!r} is not valid: it must start with a letter or '_', contain only "
            "letters, digits, '_', '-' and '.', and be at most 128 characters (or omit it to "
            "get one)"
        )
    if _GENERATED_RE.fullmatch(task_id):
        raise InvalidTaskIdError(
            f"task id {task_id!r} has the shape of the ids stint generates (t<12 hex "
            "digits>-<hex>), which is reserved for them: choose another id"
        )
    return task_id


def derived_id(task_id: str, suffix: str) -> str:
    """``<task_id>.<suffix>`` (a destination's task), kept within the id rule: an id too
    long for the suffix is shortened with a hash of the whole, so it stays unique."""
    derived = f"{task_id}.{suffix}"
    if len(derived) <= MAX_TASK_ID:
        return derived
    digest = hashlib.sha1(task_id.encode(), usedforsecurity=False).hexdigest()[:12]
    keep = MAX_TASK_ID - len(suffix) - len(digest) - 2
    return f"{task_id[:keep]}-{digest}.{suffix}"


class TaskIdGenerator:
    """``t<12 random hex>-<counter>``: unique within a runtime, and across runtimes
    (the random prefix), without the cost of a UUID per task. Callers cannot take
    ids of this shape (:func:`check_task_id`)."""

    def __init__(self) -> None:
        self._prefix = "t" + os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"
