"""The job state machine: which transitions are legal, and their timestamped history."""

from __future__ import annotations

from collections.abc import Callable

from hyper2kvm_worker.protocol import JobState, Transition

TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.VALIDATING, JobState.FAILED, JobState.CANCELLED}),
    JobState.VALIDATING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.VERIFYING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    # Verifying goes back to running when a job has more disks to convert.
    JobState.VERIFYING: frozenset(
        {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    pass


def can_move(current: JobState, target: JobState) -> bool:
    return target in _ALLOWED[current]


class StateMachine:
    """Holds the current state and records every transition with the injected clock's time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.history: list[Transition] = [Transition(state=JobState.PENDING, time=clock())]

    @property
    def state(self) -> JobState:
        return self.history[-1].state

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def move(self, target: JobState, reason: str | None = None) -> Transition:
        if target == self.state and target in (JobState.RUNNING, JobState.VERIFYING):
            return self.history[-1]  # re-entering the same phase for the next disk
        if not can_move(self.state, target):
            raise IllegalTransition(f"{self.state} -> {target}")
        transition = Transition(state=target, time=self._clock(), reason=reason)
        self.history.append(transition)
        return transition
