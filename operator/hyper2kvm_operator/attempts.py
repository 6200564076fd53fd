"""What the operator does while an attempt runs: mirror its progress, enforce cancel and
timeout, and finish it from the worker's result."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from hyper2kvm_operator import claims, kubevirt_target, policy, status, vsphere_jobs, worker_pod
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import MigrationJobSpec, Phase
from hyper2kvm_operator.job_state import (
    Body,
    Operator,
    current_status,
    event_target,
    fail_now,
    key_of,
    move,
    phase_of,
    retry_or_fail,
)
from hyper2kvm_operator.metrics import JobView
from hyper2kvm_operator.reconcile import ensure_pod
from hyper2kvm_worker.protocol import Result

# ---------------------------------------------------------------------------- follow


async def follow(
    op: Operator,
    body: Body,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """For the job's whole life: follow each attempt while it runs, idle in between (woken
    by the job's next phase change, not by a timer)."""
    key = key_of(body)
    op.followers[key] = stopped
    try:
        while not stopped:
            phase = phase_of(op, body)
            if phase in status.TERMINAL:
                return
            if phase in status.ACTIVE:
                await follow_attempt(op, body, stopped, logger)
            else:
                await op.idle(key, stopped)
    finally:
        if op.followers.get(key) is stopped:
            del op.followers[key]


async def follow_attempt(
    op: Operator,
    body: Body,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """While an attempt runs: mirror its progress, enforce timeout and cancel, finish it."""
    try:
        await _follow_attempt(op, body, stopped, logger)
    finally:
        if phase_of(op, body) not in status.ACTIVE:
            op.reservations.pop(key_of(body), None)  # the attempt ended: its slot is free
            op.replan()
            if body["spec"].get("source"):
                await vsphere_jobs.end(op, body)


async def _follow_attempt(
    op: Operator,
    body: Body,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    key = key_of(body)
    meta = body["metadata"]
    last_written: dict[str, Any] = {}
    while not stopped:
        state = current_status(op, body)
        phase = phase_of(op, body)
        if phase not in status.ACTIVE:
            return
        attempt, pod_name = int(state.get("attempt") or 1), state.get("pod")
        pod = await op.worker_pod(meta["namespace"], pod_name) if pod_name else None
        if pod is None:
            if phase is Phase.SCHEDULED and pod_name:
                # A restart between recording the attempt and creating its Pod.
                if not await ensure_pod(op, body, attempt, state["node"]):
                    return
            else:
                await retry_or_fail(op, body, cond.POD_LOST, f"worker Pod {pod_name} is gone")
                return
        elif not worker_pod.owned_by(pod, body):
            await fail_now(
                op,
                body,
                cond.NAME_TAKEN,
                f"Pod {pod_name} is not this job's (no owner reference to it); it is never "
                "followed or adopted",
            )
            return
        elif body["spec"].get("cancel"):
            await stop_pod(op, body, pod_name)
            await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled by spec.cancel")
            return
        elif policy.timed_out(state.get("startTime"), body["spec"]["timeoutSeconds"], op.clock()):
            await stop_pod(op, body, pod_name)
            limit = body["spec"]["timeoutSeconds"]
            await move(op, body, Phase.FAILED, cond.TIMED_OUT, f"ran longer than {limit}s")
            return
        elif (terminated := _terminated(pod)) is not None and _ended(pod):
            op.released.add(key)
            op.replan()
            await finish(op, body, terminated, _memory_limit(pod), logger)
            return
        elif op.sessions_lost.get(key) == attempt:
            await stop_pod(op, body, pod_name)
            await retry_or_fail(op, body, cond.SESSION_EXPIRED, vsphere_jobs.SESSION_LOST)
            return
        else:
            last_written = await mirror(op, body, pod, last_written)
            if body["spec"].get("source"):
                vsphere_jobs.keep_alive_soon(op, body)
        await op.pause(key, op.settings.status_interval_seconds)


def _memory_limit(pod: Body) -> str | None:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    return str(limit) if limit else None


def _ended(pod: Body) -> bool:
    """The Pod itself has ended, not only its container: kubelet reports the terminal phase
    once the sandbox is gone, and until then the Pod still holds its node's slot."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _terminated(pod: Body) -> dict[str, Any] | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is not None:
            return dict(terminated)
    return None


async def mirror(op: Operator, body: Body, pod: Body, last: dict[str, Any]) -> dict[str, Any]:
    """Copy the worker's progress into status when it changed (one write per interval)."""
    pod_ip = (pod.get("status") or {}).get("podIP")
    if not pod_ip:
        return last
    read_at = time.monotonic()
    progress = await op.progress.read(pod_ip)
    if progress is None:
        return last
    fields = status.progress_fields(progress)
    current = phase_of(op, body)
    phase = status.worker_phase(progress) or current or Phase.RUNNING
    if fields == last and phase == current:
        return last
    meta = body["metadata"]
    if phase != current:
        reason = cond.VERIFYING if phase is Phase.VERIFYING else cond.RUNNING
        node = current_status(op, body).get("node")
        await move(op, body, phase, reason, f"worker running on {node}", **fields)
    else:
        await op.kube.patch_job_status(meta["namespace"], meta["name"], fields)
        op.written[key_of(body)] = {**current_status(op, body), **fields}
    job = op.view.jobs.setdefault(key_of(body), JobView(phase=phase.value))
    job.progress, job.throughput = progress.percent / 100, progress.rate_bytes_per_second
    if op.metrics is not None:
        op.metrics.status_lag.observe(time.monotonic() - read_at)
    return fields


async def stop_pod(op: Operator, body: Body, pod_name: str | None) -> None:
    if pod_name:
        await op.kube.delete_pod(body["metadata"]["namespace"], pod_name)
        op.slot_freed_at = time.time()


# ---------------------------------------------------------------------------- finish


def parse_result(message: str | None) -> Result | None:
    try:
        return Result.model_validate_json(message or "")
    except ValidationError:
        return None


async def finish(
    op: Operator,
    body: Body,
    terminated: dict[str, Any],
    memory_limit: str | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    op.slot_freed_at = time.time()
    exit_code = int(terminated.get("exitCode", 1))
    result = parse_result(terminated.get("message"))
    killed_by = terminated.get("reason")
    outcome = policy.classify(exit_code, killed_by)
    spec = MigrationJobSpec.model_validate(body["spec"])
    vm = current_status(op, body).get("vm") or {}
    locations = status.output_locations(body["metadata"]["name"], spec, vm)
    fields = status.result_fields(result, locations) if result is not None else {}
    if result is not None:
        current = current_status(op, body)
        history = status.worker_history(
            list(current.get("history") or []),
            result,
            lambda epoch: policy.format_time(datetime.fromtimestamp(epoch, UTC)),
        )
        op.written[key_of(body)] = {**current, "history": history}
    error = result.error if result is not None else None
    reason = error.reason if error else f"ExitCode{exit_code}"
    message = error.message if error else killed_by or f"worker exit code {exit_code}"
    if killed_by == policy.OOM_KILLED:
        reason, message = policy.OOM_KILLED, policy.oom_message(memory_limit)
    if outcome is policy.Outcome.SUCCEEDED:
        if result is not None:
            await claims.mark_verified(op, body, spec, result)
        if result is not None and spec.target is not None:
            try:
                await kubevirt_target.make(op, body, spec, result)
            except kubevirt_target.VmRefused as refused:
                # The disks are migrated and verified (their claims say so); no VM is made.
                await move(op, body, Phase.FAILED, refused.reason, refused.message, **fields)
                kopf.warn(event_target(body), reason=refused.reason, message=refused.message)
                return
        await move(op, body, Phase.SUCCEEDED, cond.COMPLETED, "all disks done", **fields)
        attempt = current_status(op, body).get("attempt")
        # kopf.info() would be dropped: posting.level keeps handler logs out of Events.
        kopf.event(
            event_target(body),
            type="Normal",
            reason="Succeeded",
            message=f"attempt {attempt} succeeded",
        )
    elif outcome is policy.Outcome.PERMANENT:
        await move(op, body, Phase.FAILED, reason, message, **fields)
        kopf.warn(event_target(body), reason=reason, message=message)
    elif outcome is policy.Outcome.CANCELLED and body["spec"].get("cancel"):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled by spec.cancel")
    else:
        await retry_or_fail(op, body, reason, message)
    logger.info("%s attempt ended: exit %d, %s: %s", key_of(body), exit_code, reason, message)
