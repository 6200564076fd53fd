"""What a fix intends to change in a guest, and how it ended: plain data, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    APPLIED = "applied"
    NOT_NEEDED = "not_needed"
    WOULD_APPLY = "would_apply"
    FAILED = "failed"


@dataclass(frozen=True)
class Action:
    kind: str  # write, remove, link or run
    path: str
    content: str = ""  # the text to write, the link target, or the script to run
    mode: int | None = None


@dataclass
class Plan:
    name: str
    changes: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    error: str | None = None
    check: Callable[[], str | None] | None = None  # after applying: what is still wrong

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        self.actions.append(Action("write", path, text, mode))

    def run(self, description: str, script: str) -> None:
        self.changes.append(description)
        self.actions.append(Action("run", description, script))


@dataclass(frozen=True)
class Outcome:
    name: str
    status: Status
    details: tuple[str, ...] = ()

    def report(self) -> dict[str, object]:
        return {"fix": self.name, "status": self.status.value, "details": list(self.details)}


def dry_outcome(plan: Plan) -> Outcome:
    """What a dry run reports for a plan: nothing is applied."""
    if plan.error is not None:
        return Outcome(plan.name, Status.FAILED, (plan.error,))
    if not plan.actions:
        return Outcome(plan.name, Status.NOT_NEEDED)
    return Outcome(plan.name, Status.WOULD_APPLY, tuple(plan.changes))
