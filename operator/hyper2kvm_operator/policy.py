"""Decisions about attempts: how a worker's exit is classified, when to retry, timeouts (pure)."""

from __future__ import annotations

import enum
import random
from datetime import UTC, datetime, timedelta

from hyper2kvm_worker.errors import ExitCode


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    PERMANENT = "permanent"  # bad input: retrying cannot help
    TRANSIENT = "transient"  # retry with backoff while attempts remain
    CANCELLED = "cancelled"


OOM_KILLED = "OOMKilled"  # what kubelet reports for a container killed at its memory limit


def classify(exit_code: int, killed_by: str | None = None) -> Outcome:
    """`killed_by` is the terminated container state's reason, as kubelet reports it."""
    if exit_code == ExitCode.OK:
        return Outcome.SUCCEEDED
    if exit_code in (ExitCode.PERMANENT, ExitCode.USAGE) or killed_by == OOM_KILLED:
        # The same job under the same memory limit would be killed again.
        return Outcome.PERMANENT
    if exit_code == ExitCode.CANCELLED:
        return Outcome.CANCELLED
    return Outcome.TRANSIENT  # 75, internal errors, and other kills may pass


def oom_message(limit: str | None) -> str:
    at = f"its memory limit of {limit}" if limit else "its memory limit"
    return (
        f"the worker was killed at {at}: raise spec.resources.limits.memory "
        "(or the chart's worker.resources.limits.memory)"
    )


def backoff_seconds(attempt: int, base: float, ceiling: float, rng: random.Random) -> float:
    """Exponential backoff with jitter after attempt `attempt` (1-based) failed."""
    delay = min(ceiling, base * 2.0 ** max(0, attempt - 1))
    return delay * rng.uniform(0.5, 1.0)  # jitter spreads retries of jobs that failed together


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    """RFC 3339 with milliseconds: queue order and latencies need better than seconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def after(moment: datetime, seconds: float) -> str:
    return format_time(moment + timedelta(seconds=seconds))


def timed_out(start: str | None, timeout_seconds: int, now: datetime) -> bool:
    return start is not None and now >= parse_time(start) + timedelta(seconds=timeout_seconds)
