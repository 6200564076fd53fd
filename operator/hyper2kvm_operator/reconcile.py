"""What the operator does for a new or queued MigrationJob: admit it, place it, make its Pod.

Each use case reads the job as Kopf hands it over, decides with the pure modules, and
writes through `KubeApi`. Every step is idempotent: the attempt number is stored before its
Pod is created, and Pods have deterministic names, so an operator restarted at any moment
adopts what exists instead of creating a second Pod.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from hyper2kvm_operator import (
    claims,
    kubevirt_target,
    network_policy,
    placement,
    policy,
    status,
    tenancy,
    vsphere_jobs,
    worker_job,
    worker_pod,
)
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import MigrationJobSpec, Phase
from hyper2kvm_operator.job_state import (
    Body,
    Operator,
    Reservation,
    current_status,
    event_target,
    fail_now,
    key_of,
    move,
    phase_of,
    retry_or_fail,
)
from hyper2kvm_operator.kube import Refused

RESERVATION_SECONDS = 30.0
PLAN_REUSE_SECONDS = 0.2  # Kopf hands a live, read-only view of the object

# ---------------------------------------------------------------------------- admit


async def admit(op: Operator, body: Body) -> None:
    """A new (or not yet admitted) job enters the queue."""
    phase = phase_of(op, body)
    if phase is not None and phase is not Phase.PENDING:  # Pending: admission is unfinished
        # On resume the phase began when the history says, not now: "stuck" alerts stay true.
        current = current_status(op, body)
        entered = [h["time"] for h in current.get("history") or [] if h.get("phase") == phase]
        since = policy.parse_time(entered[-1]) if entered else None
        op.record(key_of(body), phase, current.get("node"), since)
        return
    if body["spec"].get("cancel"):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled before it started")
        return
    if await refuse_by_policy(op, body):
        return
    found: dict[str, Any] = {}
    if body["spec"].get("source"):
        vm = await vsphere_jobs.admit(op, body)
        if vm is None:
            return
        found["vm"] = vm
        try:  # what the VM's description can tell now, not after hours of copying
            kubevirt_target.check(body, MigrationJobSpec.model_validate(body["spec"]), vm)
        except kubevirt_target.VmRefused as refused:
            await fail_now(op, body, refused.reason, refused.message)
            return
    await move(
        op,
        body,
        Phase.QUEUED,
        cond.QUEUED,
        "waiting for a free worker slot",
        queuedTime=op.now(),
        attempt=0,
        **found,
    )


async def refuse_by_policy(op: Operator, body: Body) -> bool:
    """Fail the job at once when it breaks the cluster's policy; True when it did."""
    spec = MigrationJobSpec.model_validate(body["spec"])
    broken = tenancy.violations(body["metadata"]["namespace"], spec, op.settings.policy)
    if not broken:
        return False
    message = "; ".join(str(violation) for violation in broken)[:1024]
    await move(op, body, Phase.FAILED, cond.POLICY_VIOLATION, message)
    kopf.warn(event_target(body), reason=cond.POLICY_VIOLATION, message=message)
    return True


def active_node(body: Body) -> str | None:
    """The node of the job's running attempt, or None when it has none."""
    state = body.get("status") or {}
    phase = state.get("phase")
    return state.get("node") if phase and Phase(phase) in status.ACTIVE else None


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
        source_host=source_host(body),
    )


def source_host(body: Body) -> str | None:
    """ "namespace/provider/host" of the ESXi host a vSphere job reads from, or None."""
    vm = (body.get("status") or {}).get("vm") or {}
    if not vm.get("provider") or not vm.get("host"):
        return None
    return f"{body['metadata']['namespace']}/{vm['provider']}/{vm['host']}"


# ---------------------------------------------------------------------------- place


def _plan(
    op: Operator,
    runnable: Callable[[], list[placement.QueuedJob]],
    nodes: list[placement.WorkerNode],
    active: dict[str, set[str]],
    sources: Callable[[], placement.SourceLimits],
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
    load, namespaces = _load(op, active)
    chosen = placement.place(
        runnable(), nodes, load, namespaces, op.settings.policy.slots_for, sources()
    )
    plan = {job.key: node for job, node in chosen}
    op.plan_cache = (moment, op.plan_version, plan)
    return plan


def _load(op: Operator, active: dict[str, set[str]]) -> tuple[dict[str, int], dict[str, int]]:
    """Attempts running per node and per namespace: the active jobs (as the operator wrote
    their status, never as Pods of anybody's say so) and the reservations not yet seen."""
    now = time.monotonic()
    for job, held in list(op.reservations.items()):
        if job in active.get(held.node, set()) or now - held.since > RESERVATION_SECONDS:
            del op.reservations[job]
    keys = {(node, key) for node, found in active.items() for key in found}
    keys |= {(held.node, key) for key, held in op.reservations.items()}
    load: dict[str, int] = {}
    namespaces: dict[str, int] = {}
    for node, key in keys:
        load[node] = load.get(node, 0) + 1
        namespace = placement.namespace_of(key)
        namespaces[namespace] = namespaces.get(namespace, 0) + 1
    op.view.active = load
    return load, namespaces


def _sources(
    op: Operator, reading: dict[str, set[str]], host_limit: Callable[[str], int]
) -> placement.SourceLimits:
    """Jobs reading from each ESXi host: the active ones and the reservations not yet seen."""
    counts = {host: len(keys) for host, keys in reading.items()}
    for key, held in op.reservations.items():
        host = held.source_host
        if host is not None and key not in reading.get(host, set()):
            counts[host] = counts.get(host, 0) + 1
    return placement.SourceLimits(active=counts, limit=host_limit)


async def place_if_first(
    op: Operator,
    body: Body,
    queue: list[placement.QueuedJob],
    nodes: list[placement.WorkerNode],
    active: dict[str, set[str]],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    reading: dict[str, set[str]] | None = None,
    host_limit: Callable[[str], int] = lambda _: 0,
) -> None:
    """Start this job if the global plan gives it a slot now; every job runs the same plan.
    `active` holds the jobs whose attempt runs on each node, `reading` those that read
    from each ESXi host, whose limit `host_limit` gives."""
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

    def sources() -> placement.SourceLimits:
        return _sources(op, reading or {}, host_limit)

    target = _plan(op, runnable, nodes, active, sources).get(key)
    state = current_status(op, body)
    if target is None:
        mine = next((job for job in queue if job.key == key), None)
        if mine is not None and (mine.not_before is None or mine.not_before <= now):
            why = placement.why_waiting(
                mine, nodes, op.settings.node_label, _load(op, active)[1],
                op.settings.policy.slots_for, sources(),
            )  # fmt: skip
            if state.get("message") != why and state.get("reason") != cond.RETRYING:
                await move(op, body, Phase.QUEUED, cond.NO_CAPACITY, why)
        return
    attempt = int(state.get("attempt") or 0) + 1
    pod = worker_pod.pod_name(body["metadata"]["name"], attempt)
    op.reservations[key] = Reservation(target.name, time.monotonic(), source_host(body))
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
    if not await ensure_pod(op, body, attempt, target.name):
        op.reservations.pop(key, None)
        return
    if op.metrics is not None:
        op.metrics.scheduling_latency.observe(max(0.0, time.time() - could_run_since))
    logger.info("%s placed on %s (attempt %d)", key, target.name, attempt)


async def ensure_pod(op: Operator, body: Body, attempt: int, node: str) -> bool:
    """Create the attempt's ConfigMap and Pod (or find them, made before a restart). False
    when the attempt cannot run and the job was moved on: the policy (checked again: it
    may have changed since the job was admitted) or its Secrets refuse it, a name is held
    by an object this job does not own, or the API server refuses the Pod."""
    # The placing timer and the job's follower may both get here; one at a time, and the
    # second finds the Pod made (a vSphere job's preparation is not repeated for nothing).
    async with op.lock(key_of(body)):
        state = current_status(op, body)
        if phase_of(op, body) is not Phase.SCHEDULED or state.get("attempt") != attempt:
            return False  # the attempt ended meanwhile
        meta = body["metadata"]
        pod = await op.kube.read_pod(meta["namespace"], worker_pod.pod_name(meta["name"], attempt))
        if pod is not None and worker_pod.owned_by(pod, body):
            return True
        return await _ensure_pod(op, body, attempt, node)


async def _ensure_pod(op: Operator, body: Body, attempt: int, node: str) -> bool:
    if await refuse_by_policy(op, body):
        return False
    spec = MigrationJobSpec.model_validate(body["spec"])
    namespace = body["metadata"]["namespace"]
    rules = op.policy()
    found = await claims.prepare(op, body, spec, attempt)  # before the VM is stopped
    if found is None:
        return False
    vm = None
    if spec.source is not None:
        vm = await vsphere_jobs.prepare(op, body, attempt)
        if vm is None:
            return False
    plan = worker_job.plan(f"{namespace}/{body['metadata']['name']}", spec, rules, vm, found)
    made = await _make_children(op, body, spec, attempt, node, plan, rules)
    if not made and vm is not None:
        await vsphere_jobs.end(op, body)  # the attempt's session, with no worker to use it
    return made


async def _make_children(
    op: Operator,
    body: Body,
    spec: MigrationJobSpec,
    attempt: int,
    node: str,
    plan: worker_job.WorkerJobPlan,
    rules: tenancy.Policy,
) -> bool:
    namespace = body["metadata"]["namespace"]
    problem = await _credentials_problem(op, namespace, plan.secrets)
    if problem:
        await fail_now(op, body, cond.CREDENTIALS_REFUSED, problem)
        return False
    if op.settings.network_policy:
        manifest = network_policy.manifest(
            namespace,
            rules,
            op.settings.operator_namespace,
            op.settings.operator_labels,
            op.settings.worker_port,
        )
        if op.network_policies.get(namespace) != manifest:  # once, and again when it changed
            await op.kube.apply_network_policy(manifest)
            op.network_policies[namespace] = manifest
    children = (
        worker_pod.job_configmap(body, attempt, plan),
        worker_pod.worker_pod(body, spec, attempt, node, plan, op.settings),
    )
    for child in children:
        kind, child_name = child["kind"], child["metadata"]["name"]
        try:
            existing = await op.kube.create(child)
        except Refused as refusal:
            text = f"the API server refused {kind} {child_name}: {refusal.message}"
            if refusal.transient:
                await retry_or_fail(op, body, cond.POD_REFUSED, text)
            else:
                await fail_now(op, body, cond.POD_REFUSED, text)
            return False
        if existing is not None and not worker_pod.owned_by(existing, body):
            await fail_now(
                op,
                body,
                cond.NAME_TAKEN,
                f"{kind} {child_name} exists and is not this job's (no owner reference to "
                "it); it is never adopted: delete it, or re-create the job under another name",
            )
            return False
    return True


async def _credentials_problem(op: Operator, namespace: str, secrets: tuple[str, ...]) -> str:
    """Why a Secret a source names may not be handed to the worker, or "" when all may."""
    label = op.settings.policy.credential_label
    for secret in secrets:
        labels = await op.kube.secret_labels(namespace, secret)
        refusal = tenancy.unmarked_secret(
            secret, namespace, labels, label, "to let sources send its credentials"
        )
        if refusal:
            return refusal
    return ""


async def forget(op: Operator, body: Body) -> None:
    """The job was deleted (its Pods and Secrets go with it, by owner reference)."""
    key = key_of(body)
    if body["spec"].get("source") and phase_of(op, body) in status.ACTIVE:
        await vsphere_jobs.end(op, body)
    op.written.pop(key, None)
    op.view.jobs.pop(key, None)
    op.reservations.pop(key, None)
    op.wakeups.pop(key, None)
    op.locks.pop(key, None)


async def cancel_queued(op: Operator, body: Body) -> None:
    if phase_of(op, body) in (None, Phase.PENDING, Phase.QUEUED):
        await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled while queued")
