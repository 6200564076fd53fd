"""Rendering MigrationJob status: phases with their audit trail, progress, results (pure).

Every function returns a merge-patch fragment for `.status`; the caller sends it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import Any

from hyper2kvm_operator import claim_outputs
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import DiskOutput, MigrationJobSpec, Phase, VmOutput
from hyper2kvm_operator.vsphere import job_view
from hyper2kvm_worker.protocol import JobState, Progress, Result

TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
ACTIVE = frozenset({Phase.SCHEDULED, Phase.RUNNING, Phase.VERIFYING})
_WORKER_PHASE = {JobState.RUNNING: Phase.RUNNING, JobState.VERIFYING: Phase.VERIFYING}


def human_rate(bytes_per_second: float) -> str:
    value = float(bytes_per_second)
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if value < 1024 or unit == "GiB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def transition(
    status: dict[str, Any],
    phase: Phase,
    now: str,
    generation: int | None,
    reason: str,
    message: str = "",
    history_limit: int = 32,
) -> dict[str, Any]:
    """The patch moving a job to `phase`, with its history entry and conditions."""
    patch: dict[str, Any] = {"phase": phase.value, "reason": reason, "message": message}
    if status.get("phase") != phase.value:
        entry = {"phase": phase.value, "time": now, "reason": reason}
        patch["history"] = [*(status.get("history") or []), entry][-history_limit:]
    conditions = list(status.get("conditions") or [])
    if phase in TERMINAL:
        patch["completionTime"] = now
        ok = phase is Phase.SUCCEEDED
        conditions = cond.set_condition(
            conditions, cond.READY, ok, reason, message, now, generation
        )
        conditions = cond.set_condition(
            conditions, cond.SUCCEEDED, ok, reason, message, now, generation
        )
        conditions = cond.set_condition(
            conditions, cond.FAILED, phase is Phase.FAILED, reason, message, now, generation
        )
        conditions = cond.set_condition(
            conditions, cond.PROGRESSING, False, reason, message, now, generation
        )
    else:
        conditions = cond.set_condition(
            conditions, cond.READY, False, reason, message, now, generation
        )
        conditions = cond.set_condition(
            conditions, cond.PROGRESSING, phase in ACTIVE, reason, message, now, generation
        )
    patch["conditions"] = conditions
    patch["observedGeneration"] = generation
    return patch


def progress_fields(progress: Progress) -> dict[str, Any]:
    """What a worker's /progress answer becomes in status."""
    return {
        "progress": f"{int(progress.percent)}%",
        "bytesDone": progress.bytes_done,
        "bytesTotal": progress.bytes_total,
        "throughput": human_rate(progress.rate_bytes_per_second),
        "eta": human_duration(progress.eta_seconds),
        "disks": [
            {
                "name": disk.name,
                "phase": disk.phase,
                "bytesDone": disk.bytes_done,
                "bytesTotal": disk.bytes_total,
            }
            for disk in progress.disks
        ],
    }


def worker_phase(progress: Progress) -> Phase | None:
    """The job phase a worker's state stands for, while it works."""
    return _WORKER_PHASE.get(progress.state)


def output_locations(job: str, spec: MigrationJobSpec, vm: Mapping[str, Any]) -> dict[str, str]:
    """Where each disk's output is, by disk, in the terms the user wrote it (not the Pod's
    mount path); `vm` is the status of a source VM, whose disks the job found."""
    found = {d.name: _location(job, d.name, d.output, d.output.file)
             for d in spec.disks if d.output is not None}  # fmt: skip
    rule = spec.output
    if rule is not None:
        for disk in vm.get("disks") or []:
            name = str(disk["name"])
            path = job_view.output_path(rule.path, str(vm.get("name", "")), name, rule.format)
            found[name] = _location(job, name, rule, path)
    return found


def _location(job: str, disk: str, output: DiskOutput | VmOutput, file: str) -> str:
    if output.claim is not None:
        return f"claim:{claim_outputs.claim_name(job, disk, output)}"
    if output.pvc is not None:
        return f"pvc:{output.pvc.claimName}/{file}"
    assert output.hostPath is not None
    return posixpath.join(output.hostPath.path, file)


def result_fields(result: Result, locations: Mapping[str, str]) -> dict[str, Any]:
    disks = []
    for disk in result.disks:
        entry: dict[str, Any] = {
            "name": disk.name,
            "phase": "done",
            "output": locations.get(disk.name) if disk.output else None,
            "format": disk.format,
            "virtualSize": disk.virtual_size,
            "fileSize": disk.file_size,
            "digest": disk.digest,
            "verified": disk.verified,
            "freeSpaceZeroed": disk.free_space_zeroed,
            "inspection": disk.inspection,
        }
        disks.append({key: value for key, value in entry.items() if value is not None})
    fields: dict[str, Any] = {"disks": disks}
    if result.state is JobState.SUCCEEDED:
        fields.update({"progress": "100%", "eta": None})
    return fields


def worker_history(
    history: list[dict[str, Any]], result: Result, format_time: Callable[[float], str]
) -> list[dict[str, Any]]:
    """Add the worker's own Running/Verifying transitions that polling did not catch.

    A phase shorter than the polling interval is still part of the audit trail: the worker
    recorded it with its time, so it is inserted after the attempt's Scheduled entry.
    """
    since = max(
        (i for i, h in enumerate(history) if h["phase"] == Phase.SCHEDULED.value), default=-1
    )
    seen = {h["phase"] for h in history[since + 1 :]}
    missing = [
        {"phase": phase.value, "time": format_time(t.time), "reason": "ReportedByWorker"}
        for t in result.history
        if (phase := _WORKER_PHASE.get(t.state)) is not None and phase.value not in seen
    ]
    if not missing:
        return history
    return history[: since + 1] + sorted(
        [*history[since + 1 :], *missing], key=lambda entry: entry["time"]
    )
