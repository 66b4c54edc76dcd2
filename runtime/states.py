"""The task lifecycle as data: states, the one table of legal transitions, instance states."""

from __future__ import annotations

import enum

from .errors import IllegalTransitionError


class TaskState(enum.StrEnum):
    """Where a task is in its lifecycle; the values are the names users see."""

    ENQUEUED = "Enqueued"
    DEQUEUED = "Dequeued"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    RUNNING = "Running"
    RETRYING = "Retrying"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"
    STOPPING = "Stopping"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


#: Each state's name as a plain ``str`` (reading ``.value`` goes through a slow
#: descriptor; a plain str also lets the GC untrack tuples that hold it).
NAME: dict[TaskState, str] = {state: str.__str__(state) for state in TaskState}

TERMINAL = frozenset(
    {TaskState.EXPIRED, TaskState.INVALID, TaskState.FAILED, TaskState.SUCCEEDED, TaskState.STOPPED}
)

_S = TaskState
#: The one table of legal moves: state -> the states it may go to next.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.ENQUEUED: frozenset({_S.DEQUEUED, _S.STOPPING}),
    _S.DEQUEUED: frozenset({_S.EXPIRED, _S.INVALID, _S.RUNNING, _S.STOPPING}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.RETRYING, _S.FAILED, _S.STOPPING}),
    _S.RETRYING: frozenset({_S.RUNNING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.EXPIRED: frozenset(),
    _S.INVALID: frozenset(),
    _S.FAILED: frozenset(),
    _S.SUCCEEDED: frozenset(),
    _S.STOPPED: frozenset(),
}

#: Terminal states that ``stop`` refuses (Stopped is idempotent instead).
FINISHED = TERMINAL - {TaskState.STOPPED}


def check_transition(current: TaskState, new: TaskState, what: str = "task") -> None:
    """Raise :class:`IllegalTransitionError` unless the table allows ``current -> new``."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransitionError(
            f"{what}: illegal transition {current} -> {new}; allowed from {current}: "
            f"{', '.join(sorted(TRANSITIONS[current])) or 'nothing (terminal)'}"
        )


class InstanceState(enum.StrEnum):
    """Where an instance is: Starting -> Ready <-> Busy -> Frozen ... -> Stopping -> Stopped."""

    STARTING = "Starting"
    READY = "Ready"
    BUSY = "Busy"
    FROZEN = "Frozen"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
