"""The lifecycle table itself: names, terminality, and that illegal moves raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import TRANSITIONS, TaskState
from runtime.errors import IllegalTransitionError
from runtime.states import TERMINAL, check_transition

EXPECTED = {
    "Enqueued": {"Dequeued", "Stopping"},
    "Dequeued": {"Expired", "Invalid", "Running", "Stopping"},
    "Expired": set(),
    "Invalid": set(),
    "Running": {"Succeeded", "Retrying", "Failed", "Stopping"},
    "Retrying": {"Running", "Stopping"},
    "Failed": set(),
    "Succeeded": set(),
    "Stopping": {"Stopped"},
    "Stopped": set(),
}


def test_state_values_are_exactly_the_brief() -> None:
    assert [s.value for s in TaskState] == list(EXPECTED)
    assert TaskState.ENQUEUED == "Enqueued" and isinstance(TaskState.STOPPED, str)


def test_table_matches_the_brief() -> None:
    assert {str(k): {str(v) for v in vs} for k, vs in TRANSITIONS.items()} == EXPECTED


def test_terminal_states_have_no_way_out() -> None:
    for state in TaskState:
        assert state.is_terminal == (not TRANSITIONS[state])
    assert {s.value for s in TERMINAL} == {"Expired", "Invalid", "Failed", "Succeeded", "Stopped"}


@pytest.mark.parametrize(
    ("current", "new"),
    [(a, b) for a in TaskState for b in TaskState if b not in TRANSITIONS[a]],
)
def test_every_illegal_transition_raises(current: TaskState, new: TaskState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{current} -> {new}"):
        check_transition(current, new)


@given(st.lists(st.integers(min_value=0, max_value=100), max_size=30))
def test_random_legal_walks_end_terminal_or_continue(choices: list[int]) -> None:
    state = TaskState.ENQUEUED
    for choice in choices:
        options = sorted(TRANSITIONS[state])
        if not options:
            assert state.is_terminal
            break
        new = options[choice % len(options)]
        check_transition(state, new)
        state = new
