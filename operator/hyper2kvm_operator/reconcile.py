"""What the operator does for a MigrationJob: admit, place, follow, finish.

Each use case reads the job as Kopf hands it over, decides with the pure modules, and
writes through `KubeApi`. Every step is idempotent: the attempt number is stored before its
Pod is created, and Pods have deterministic names, so an operator restarted at any moment
adopts what exists instead of creating a second Pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator import placement, policy, status, worker_job, worker_pod
from hyper2kvm_operator.api import MigrationJobSpec, Phase
from hyper2kvm_operator.kube import KubeApi
from hyper2kvm_operator.metrics import JobView, OperatorMetrics, Snapshot
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings
from hyper2kvm_worker.protocol import Result

Body = Mapping[str, Any]
RESERVATION_SECONDS = 30.0
PLAN_REUSE_SECONDS = 0.2  # Kopf hands a live, read-only view of the object


@dataclass
class Operator:
    """The operator's state in memory: what Kopf's indices do not hold."""

    settings: Settings
    kube: KubeApi
    progress: ProgressReader
    clock: Callable[[], datetime]
    rng: random.Random = field(default_factory=random.Random)
    # Slots taken by Pods just created, until the Pod index shows them or the attempt ends:
    # job -> (node, pod). A reservation also lapses after RESERVATION_SECONDS, so one whose
    # Pod came and went between two looks at the index cannot hold a slot forever.
    reservations: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    view: Snapshot = field(default_factory=Snapshot)
    # The status as this operator last wrote it: Kopf's view of the object lags behind our
    # own patches by one watch event, and a history computed from it would lose entries.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set when a job's worker Pod changes, so its follower looks now instead of next interval.
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    slot_freed_at: float = 0.0
    # Every queued job's timer asks for the same plan; it is computed at most every
    # PLAN_REUSE_SECONDS, and again at once after a placement changed the load.
    plan_version: int = 0
    plan_cache: tuple[float, int, dict[str, placement.WorkerNode]] | None = None
    metrics: OperatorMetrics | None = None

    def wake(self, key: str) -> None:
        self.wakeups.setdefault(key, asyncio.Event()).set()

    async def pause(self, key: str, seconds: float) -> None:
        """Sleep up to `seconds`, or until the job's worker Pod changes."""
        event = self.wakeups.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    def now(self) -> str:
        return policy.format_time(self.clock())

    def record(
        self, key: str, phase: Phase, node: str | None = None, since: datetime | None = None
    ) -> None:
        """Mirror a job's phase into the metrics view.

        Called after this process wrote a transition (`move`) and when a job is first seen
        (`admit`, also on resume). An outcome is counted only for a transition written here:
        a restart re-reading finished jobs must not count them again.
        """
        job = self.view.jobs.get(key)
        wrote = (self.written.get(key) or {}).get("phase") == phase.value
        changed = job is None or job.phase != phase.value
        if job is None:
            job = self.view.jobs[key] = JobView(phase=phase.value)
        if changed:
            job.phase_since = (since or self.clock()).timestamp()
        job.phase, job.node = phase.value, node or job.node
        if changed and wrote and phase in status.TERMINAL and self.metrics is not None:
            self.metrics.outcomes.labels(phase.value).inc()


def _event_target(body: Body) -> kopf.Body:
    return cast(kopf.Body, body)  # Kopf only reads the object's reference from it


def key_of(body: Body) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def current_status(op: Operator, body: Body) -> dict[str, Any]:
    return op.written.get(key_of(body)) or dict(body.get("status") or {})


def phase_of(op: Operator, body: Body) -> Phase | None:
    value = current_status(op, body).get("phase")
    return Phase(value) if value else None


async def move(
    op: Operator, body: Body, phase: Phase, reason: str, message: str = "", **fields: Any
) -> None:
    current = current_status(op, body)
    patch = status.transition(
        current,
        phase,
        op.now(),
        body["metadata"].get("generation"),
        reason,
        message,
        op.settings.history_limit,
    )
    patch.update(fields)
    meta = body["metadata"]
    await op.kube.patch_job_status(meta["namespace"], meta["name"], patch)
    op.written[key_of(body)] = {**current, **patch}
    op.record(key_of(body), phase, fields.get("node"))


# ---------------------------------------------------------------------------- admit


async def admit(op: Operator, body: Body) -> None:
    """A new (or not yet admitted) job enters the queue."""
    phase = phase_of(op, body)
    if phase is not None:
        # On resume the phase began when the history says, not now: "stuck" alerts stay true.
        current = current_status(op, body)
        entered = [h["time"] for h in current.get("history") or [] if h.get("phase") == phase]
        since = policy.parse_time(entered[-1]) if entered else None
        op.record(key_of(body), phase, current.get("node"), since)
        return
    if body["spec"].get("cancel"):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled before it started")
        return
    await move(
        op,
        body,
        Phase.QUEUED,
        cond.QUEUED,
        "waiting for a free worker slot",
        queuedTime=op.now(),
        attempt=0,
    )


def queue_entry(body: Body) -> placement.QueuedJob | None:
    """The index entry of a queued job, or None for any other job."""
    state = body.get("status") or {}
    if state.get("phase") != Phase.QUEUED.value or body["spec"].get("cancel"):
        return None
    selector = ((body["spec"].get("placement") or {}).get("nodeSelector")) or {}
    return placement.QueuedJob(
        key=key_of(body),
        priority=int(body["spec"].get("priority", 0)),
        queued_at=state.get("queuedTime") or body["metadata"]["creationTimestamp"],
        node_selector=selector,
        not_before=state.get("retryAfter"),
    )


# ---------------------------------------------------------------------------- place


def _plan(
    op: Operator,
    runnable: Callable[[], list[placement.QueuedJob]],
    nodes: list[placement.WorkerNode],
    pods: dict[str, set[str]],
) -> dict[str, placement.WorkerNode]:
    """Job -> node for every job that can start now (shared by all the queued jobs' timers).

    `runnable` is called only when the plan is recomputed: every queued job's timer asks,
    and walking the whole queue for each would cost queue length squared per tick.
    """
    moment = time.monotonic()
    cached = op.plan_cache
    fresh = cached is not None and moment - cached[0] < PLAN_REUSE_SECONDS
    if cached is not None and fresh and cached[1] == op.plan_version:
        return cached[2]
    load = _load(op, pods)
    plan = {job.key: node for job, node in placement.place(runnable(), nodes, load)}
    op.plan_cache = (moment, op.plan_version, plan)
    return plan


def _load(op: Operator, pods: dict[str, set[str]]) -> dict[str, int]:
    now = time.monotonic()
    for job, (node, pod, since) in list(op.reservations.items()):
        if pod in pods.get(node, set()) or now - since > RESERVATION_SECONDS:
            del op.reservations[job]
    load = {node: len(keys) for node, keys in pods.items()}
    for node, _, _ in op.reservations.values():
        load[node] = load.get(node, 0) + 1
    op.view.active = load
    return load


async def place_if_first(
    op: Operator,
    body: Body,
    queue: list[placement.QueuedJob],
    nodes: list[placement.WorkerNode],
    pods: dict[str, set[str]],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Start this job if the global plan gives it a slot now; every job runs the same plan."""
    key = key_of(body)
    if phase_of(op, body) is not Phase.QUEUED:
        return  # the index is one event behind a placement this operator just made
    if body["spec"].get("cancel"):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled while queued")
        return
    now = op.now()

    def runnable() -> list[placement.QueuedJob]:
        return [
            job
            for job in queue
            if (job.not_before is None or job.not_before <= now)
            and op.written.get(job.key, {}).get("phase", Phase.QUEUED.value) == Phase.QUEUED.value
        ]

    op.view.slots = {node.name: node.slots for node in nodes}
    target = _plan(op, runnable, nodes, pods).get(key)
    state = current_status(op, body)
    if target is None:
        mine = next((job for job in queue if job.key == key), None)
        if mine is not None and (mine.not_before is None or mine.not_before <= now):
            why = placement.why_waiting(mine, nodes, op.settings.node_label)
            if state.get("message") != why and state.get("reason") != cond.RETRYING:
                await move(op, body, Phase.QUEUED, cond.NO_CAPACITY, why)
        return
    attempt = int(state.get("attempt") or 0) + 1
    pod = worker_pod.pod_name(body["metadata"]["name"], attempt)
    op.reservations[key] = (target.name, f"{body['metadata']['namespace']}/{pod}", time.monotonic())
    op.plan_version += 1
    could_run_since = max(
        policy.parse_time(state.get("queuedTime") or now).timestamp(),
        policy.parse_time(state.get("retryAfter") or now).timestamp()
        if state.get("retryAfter")
        else 0.0,
        op.slot_freed_at,
    )
    # The attempt is recorded first: a restart then finds it and creates (or adopts) its Pod.
    await move(
        op,
        body,
        Phase.SCHEDULED,
        cond.SCHEDULED,
        f"attempt {attempt} placed on {target.name}",
        node=target.name,
        pod=pod,
        attempt=attempt,
        retryAfter=None,
        startTime=state.get("startTime") or now,
    )
    await ensure_pod(op, body, attempt, target.name)
    if op.metrics is not None:
        op.metrics.scheduling_latency.observe(max(0.0, time.time() - could_run_since))
    logger.info("%s placed on %s (attempt %d)", key, target.name, attempt)


async def ensure_pod(op: Operator, body: Body, attempt: int, node: str) -> None:
    spec = MigrationJobSpec.model_validate(body["spec"])
    name = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    plan = worker_job.plan(name, spec)
    await op.kube.create(worker_pod.job_configmap(body, attempt, plan))
    pod = worker_pod.worker_pod(body, spec, attempt, node, plan, op.settings)
    await op.kube.create(pod)


# ---------------------------------------------------------------------------- follow


async def follow(
    op: Operator,
    body: Body,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """For the job's whole life: follow each attempt while it runs, idle in between."""
    while not stopped:
        phase = phase_of(op, body)
        if phase in status.TERMINAL:
            return
        if phase in status.ACTIVE:
            await follow_attempt(op, body, stopped, logger)
        else:
            await stopped.wait(op.settings.status_interval_seconds)


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
        pod = await op.kube.read_pod(meta["namespace"], pod_name) if pod_name else None
        if pod is None:
            if phase is Phase.SCHEDULED and pod_name:
                await ensure_pod(op, body, attempt, state["node"])  # restart between the two
            else:
                await retry_or_fail(op, body, cond.POD_LOST, f"worker Pod {pod_name} is gone")
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
        elif (terminated := _terminated(pod)) is not None:
            await finish(op, body, terminated, _memory_limit(pod), logger)
            return
        else:
            last_written = await mirror(op, body, pod, last_written)
        await op.pause(key, op.settings.status_interval_seconds)


def _memory_limit(pod: Body) -> str | None:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    return str(limit) if limit else None


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
    locations = {d.name: status.output_location(d.output) for d in spec.disks if d.output}
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
        await move(op, body, Phase.SUCCEEDED, cond.COMPLETED, "all disks done", **fields)
        attempt = current_status(op, body).get("attempt")
        # kopf.info() would be dropped: posting.level keeps handler logs out of Events.
        kopf.event(
            _event_target(body),
            type="Normal",
            reason="Succeeded",
            message=f"attempt {attempt} succeeded",
        )
    elif outcome is policy.Outcome.PERMANENT:
        await move(op, body, Phase.FAILED, reason, message, **fields)
        kopf.warn(_event_target(body), reason=reason, message=message)
    elif outcome is policy.Outcome.CANCELLED and body["spec"].get("cancel"):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled by spec.cancel")
    else:
        await retry_or_fail(op, body, reason, message)
    logger.info("%s attempt ended: exit %d, %s: %s", key_of(body), exit_code, reason, message)


async def retry_or_fail(op: Operator, body: Body, reason: str, message: str) -> None:
    state = current_status(op, body)
    attempt = int(state.get("attempt") or 1)
    retries = int(body["spec"].get("retries", 0))
    if attempt > retries:
        text = f"attempt {attempt} failed ({reason}: {message}); no retries left"
        await move(op, body, Phase.FAILED, cond.RETRIES_EXHAUSTED, text)
        kopf.warn(_event_target(body), reason=cond.RETRIES_EXHAUSTED, message=text)
        return
    delay = policy.backoff_seconds(
        attempt, op.settings.backoff_base_seconds, op.settings.backoff_max_seconds, op.rng
    )
    text = f"attempt {attempt} failed ({reason}: {message}); retrying in {delay:.0f}s"
    await move(
        op,
        body,
        Phase.QUEUED,
        cond.RETRYING,
        text,
        retryAfter=policy.after(op.clock(), delay),
        queuedTime=state.get("queuedTime"),
    )
    kopf.warn(_event_target(body), reason=cond.RETRYING, message=text)


def forget(op: Operator, body: Body) -> None:
    """The job was deleted (its Pods go with it, by owner reference)."""
    key = key_of(body)
    op.written.pop(key, None)
    op.view.jobs.pop(key, None)
    op.reservations.pop(key, None)
    op.wakeups.pop(key, None)


async def cancel_queued(op: Operator, body: Body) -> None:
    if phase_of(op, body) in (None, Phase.PENDING, Phase.QUEUED):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled while queued")
