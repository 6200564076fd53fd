"""What the operator does for a new or queued MigrationJob: admit it, place it, make its Pod.

Each use case reads the job as Kopf hands it over, decides with the pure modules, and
writes through `KubeApi`. Every step is idempotent: the attempt number is stored before its
Pod is created, and Pods have deterministic names, so an operator restarted at any moment
adopts what exists instead of creating a second Pod.
"""

from __future__ import annotations

import logging
import time
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
    current_status,
    event_target,
    fail_now,
    key_of,
    move,
    phase_of,
    retry_or_fail,
)
from hyper2kvm_operator.kube import Refused

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


async def start(
    op: Operator,
    body: Body,
    node: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Start the job's next attempt on `node`, where the placement plan gave it a slot (the
    placer reserved it; the reservation goes when the attempt does not start)."""
    key = key_of(body)
    async with op.lock(key):  # not while a waiting reason is being written, nor after it
        if phase_of(op, body) is not Phase.QUEUED:
            op.reservations.pop(key, None)  # the index was one event behind this operator
            return
        if body["spec"].get("cancel"):
            op.reservations.pop(key, None)
            await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled while queued")
            return
        now = op.now()
        state = current_status(op, body)
        attempt = int(state.get("attempt") or 0) + 1
        op.released.discard(key)  # a new attempt holds a slot again
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
            f"attempt {attempt} placed on {node}",
            node=node,
            pod=worker_pod.pod_name(body["metadata"]["name"], attempt),
            attempt=attempt,
            retryAfter=None,
            startTime=state.get("startTime") or now,
        )
    if not await ensure_pod(op, body, attempt, node):
        op.reservations.pop(key, None)
        return
    if op.metrics is not None:
        op.metrics.scheduling_latency.observe(max(0.0, time.time() - could_run_since))
    logger.info("%s placed on %s (attempt %d)", key, node, attempt)


async def tell_waiting(op: Operator, body: Body, why: str) -> None:
    """Say in the status why a queued job still waits, unless it says so already (or says
    it waits out a retry's backoff, which it then still does)."""
    async with op.lock(key_of(body)):
        state = current_status(op, body)
        if phase_of(op, body) is not Phase.QUEUED or body["spec"].get("cancel"):
            return
        if state.get("message") != why and state.get("reason") != cond.RETRYING:
            await move(op, body, Phase.QUEUED, cond.NO_CAPACITY, why)


async def ensure_pod(op: Operator, body: Body, attempt: int, node: str) -> bool:
    """Create the attempt's ConfigMap and Pod (or find them, made before a restart). False
    when the attempt cannot run and the job was moved on: the policy (checked again: it
    may have changed since the job was admitted) or its Secrets refuse it, a name is held
    by an object this job does not own, or the API server refuses the Pod."""
    # The placer and the job's follower may both get here; one at a time, and the
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
    op.released.discard(key)
    op.wakeups.pop(key, None)
    op.locks.pop(key, None)


async def cancel_queued(op: Operator, body: Body) -> None:
    async with op.lock(key_of(body)):  # not while the placer starts it
        if phase_of(op, body) in (None, Phase.PENDING, Phase.QUEUED):
            await move(op, body, Phase.CANCELLED, cond.CANCELLED, "cancelled while queued")
