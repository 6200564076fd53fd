from __future__ import annotations

import itertools

import pytest

from hyper2kvm_worker.protocol import JobState
from hyper2kvm_worker.states import TERMINAL, IllegalTransition, StateMachine, can_move


def clock() -> itertools.count[float]:
    return itertools.count(100.0)


def test_happy_path_is_recorded_with_times() -> None:
    ticks = clock()
    machine = StateMachine(lambda: next(ticks))
    for state in (JobState.VALIDATING, JobState.RUNNING, JobState.VERIFYING, JobState.SUCCEEDED):
        machine.move(state)
    assert [t.state for t in machine.history] == [
        JobState.PENDING,
        JobState.VALIDATING,
        JobState.RUNNING,
        JobState.VERIFYING,
        JobState.SUCCEEDED,
    ]
    assert [t.time for t in machine.history] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert machine.finished


def test_next_disk_returns_from_verifying_to_running() -> None:
    machine = StateMachine(lambda: 0.0)
    machine.move(JobState.VALIDATING)
    machine.move(JobState.RUNNING)
    machine.move(JobState.VERIFYING)
    machine.move(JobState.RUNNING)
    assert machine.state is JobState.RUNNING


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(terminal: JobState) -> None:
    for target in JobState:
        assert not can_move(terminal, target)


def test_illegal_moves_are_refused() -> None:
    machine = StateMachine(lambda: 0.0)
    with pytest.raises(IllegalTransition):
        machine.move(JobState.SUCCEEDED)
    assert machine.state is JobState.PENDING


def test_every_live_state_can_fail_or_be_cancelled() -> None:
    for state in set(JobState) - TERMINAL:
        assert can_move(state, JobState.FAILED)
        assert can_move(state, JobState.CANCELLED)
