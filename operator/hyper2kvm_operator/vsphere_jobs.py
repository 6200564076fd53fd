"""What the operator does for a MigrationJob whose source is a VM in vSphere.

When the job is admitted: find the VM, record what vSphere says it is, and refuse what
cannot be copied faithfully. Before each attempt: find it again (its disks must be those
the job was admitted with), stop it if the job says so, and open the attempt's own session,
cloned from the operator's, which reaches the worker only as a Secret the job owns. While
the attempt runs the session is kept alive; when the attempt ends, however it ends, the
session is terminated and its Secret deleted.

vSphere is called in threads, off Kopf's event loop, each call under a deadline. The
provider's password is read by the operator alone and used for its own login.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
from pyVmomi import vim

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator import provider_api, providers, worker_job, worker_pod
from hyper2kvm_operator.api import MigrationJobSpec, Phase, VSphereVmSource
from hyper2kvm_operator.job_state import (
    Body,
    Operator,
    current_status,
    event_target,
    fail_now,
    key_of,
    move,
    retry_or_fail,
)
from hyper2kvm_operator.vsphere import inventory, job_view, mapping, power, sessions, tls
from hyper2kvm_operator.vsphere.client import Connection, Endpoint
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import VmFacts
from hyper2kvm_operator.vsphere.logins import Login

T = TypeVar("T")
log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 120.0  # finding and describing a VM, cloning or ending a session
TASK_TIMEOUT_SECONDS = 300.0  # vSphere's power-off task
ADMIT_RETRY_SECONDS = 30.0  # a server that cannot be reached is asked again this often
SESSION_LOST = (
    "the worker's vSphere session ended on the server (it expired or was terminated, or "
    "vCenter restarted); the attempt is retried with a new session"
)
COOKIE_KEY, CA_KEY, SESSION_KEY = worker_job.SESSION_COOKIE_KEY, worker_job.SESSION_CA_KEY, "key"


class Refusal(Exception):
    """The VM cannot be used now: `reason` and `message` go into the status; a transient one
    (the server unreachable) is tried again, any other fails the job."""

    def __init__(self, reason: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.transient = reason, message, transient


def source_of(body: Body) -> VSphereVmSource | None:
    source = MigrationJobSpec.model_validate(body["spec"]).source
    return source.vsphere if source is not None else None


# ---------------------------------------------------------------------------- admit


async def admit(op: Operator, body: Body) -> dict[str, Any] | None:
    """`status.vm` for a new job, or None when the job was failed instead. While the server
    cannot be reached the job stays Pending, saying so, and Kopf asks again."""
    source = source_of(body)
    assert source is not None
    try:
        login = await _login(op, body, source.provider)
        facts = await _call(op, body, login, _describe(source), CALL_TIMEOUT_SECONDS)
        _check(facts, source, op.settings.policy.max_disks)
    except Refusal as refusal:
        if refusal.transient:
            message = f"{refusal.message}; asking again in {ADMIT_RETRY_SECONDS:.0f}s"
            await move(op, body, Phase.PENDING, refusal.reason, message[:1024])
            raise kopf.TemporaryError(message, delay=ADMIT_RETRY_SECONDS) from None
        await fail_now(op, body, refusal.reason, refusal.message)
        return None
    return job_view.vm_status(source.provider, facts)


# ---------------------------------------------------------------------------- attempts


async def prepare(op: Operator, body: Body, attempt: int) -> worker_job.VmDisks | None:
    """Before attempt `attempt`: the VM found again and stopped if need be, and the
    attempt's session in its Secret. None when the job was moved on (failed, or queued for
    another attempt)."""
    source = source_of(body)
    assert source is not None
    recorded = list((current_status(op, body).get("vm") or {}).get("disks") or [])
    try:
        login = await _login(op, body, source.provider)
        facts = await _call(op, body, login, _describe(source), CALL_TIMEOUT_SECONDS)
        _check(facts, source, op.settings.policy.max_disks)
        changed = job_view.same_disks(recorded, facts)
        if changed:
            raise Refusal(cond.VM_CHANGED, f"VM {facts.name}: {changed}")
        if facts.power_state != power.POWERED_OFF:
            await _stop(op, body, login, source, facts)
        secret = await _session_secret(op, body, login, attempt)
    except Refusal as refusal:
        # A VM found at admission and missing now may be a vCenter still loading its
        # inventory: tried again, as often as the job's retries allow.
        if refusal.transient or refusal.reason == cond.VM_NOT_FOUND:
            await retry_or_fail(op, body, refusal.reason, refusal.message)
        else:
            await fail_now(op, body, refusal.reason, refusal.message)
        return None
    return worker_job.VmDisks(
        vm_name=facts.name,
        server=_server(login),
        session_secret=secret,
        insecure=login.insecure,
        disks=tuple(zip(job_view.disk_names(facts), mapping.copies(facts), strict=True)),
    )


def keep_alive_soon(op: Operator, body: Body) -> None:
    """Touch the running attempt's session, at most every `vsphere_keepalive_seconds`, in a
    task of its own: a slow vCenter never holds up the follower's progress reports."""
    key = key_of(body)
    moment = time.monotonic()
    if moment - op.sessions_touched.get(key, 0.0) < op.settings.vsphere_keepalive_seconds:
        return
    op.sessions_touched[key] = moment
    task = asyncio.create_task(keep_alive(op, body), name=f"keep alive {key}")
    op.background.add(task)
    task.add_done_callback(op.background.discard)


async def keep_alive(op: Operator, body: Body) -> None:
    """Touch the running attempt's session. A session the server no longer knows (it
    expired, was terminated, or vCenter restarted) is noted in `op.sessions_lost`, and the
    follower ends that attempt: the worker could read nothing more with it. A failure to
    reach the server is only logged."""
    key = key_of(body)
    attempt = int(current_status(op, body).get("attempt") or 0)
    session = await _attempt_session(op, body)
    source = source_of(body)
    if session is None or source is None:
        return
    try:
        login = await _login(op, body, source.provider)
        alive = await _call(
            op, body, login, lambda conn: sessions.keep_alive(conn, session), CALL_TIMEOUT_SECONDS
        )
    except Refusal as refusal:
        log.warning("%s: the worker's vSphere session was not kept alive: %s", key, refusal)
        return
    if not alive:
        log.warning("%s: the worker's vSphere session has ended on the server", key)
        op.sessions_lost[key] = attempt


async def end(op: Operator, body: Body) -> None:
    """The attempt ended (or the job went): terminate its session, delete its Secret."""
    op.sessions_touched.pop(key_of(body), None)
    op.sessions_lost.pop(key_of(body), None)
    session = await _attempt_session(op, body)
    if session is None:
        return
    source = source_of(body)
    try:
        if source is not None:
            login = await _login(op, body, source.provider)
            await _call(
                op, body, login, lambda conn: sessions.terminate(conn, session),
                CALL_TIMEOUT_SECONDS,
            )  # fmt: skip
    except Refusal as refusal:
        # The server ends an idle session by itself; the cookie goes with the Secret now.
        log.warning("%s: the worker's vSphere session was not ended: %s", key_of(body), refusal)
    await op.kube.delete_secret(body["metadata"]["namespace"], _attempt_secret(op, body))


# ---------------------------------------------------------------------------- parts


async def _login(op: Operator, body: Body, provider: str) -> Login:
    namespace = body["metadata"]["namespace"]
    found = await op.kube.read_custom(provider_api.PLURAL, namespace, provider)
    if found is None:
        # Transient: a GitOps tool may apply the job a moment before its provider.
        raise Refusal(
            cond.PROVIDER_NOT_FOUND,
            f"VSphereProvider {provider} does not exist in namespace {namespace}",
            transient=True,
        )
    spec = provider_api.VSphereProviderSpec.model_validate(found.get("spec") or {})
    try:
        await providers.check_address(op, spec.url)
        data = await providers.marked_secret(op, namespace, spec.credentialsSecretRef.name)
        return providers.login_of(spec, data)
    except providers.CheckFailed as failed:
        transient = failed.reason == Reason.UNREACHABLE  # a name that did not resolve
        raise Refusal(failed.reason, failed.message, transient) from None


async def _call(
    op: Operator, body: Body, login: Login, use: Callable[[Connection], T], timeout: float
) -> T:
    source = source_of(body)
    assert source is not None
    provider = f"{body['metadata']['namespace']}/{source.provider}"
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(op.logins.with_connection, provider, login, use), timeout
        )
    except TimeoutError:
        raise Refusal(Reason.TIMEOUT, f"vSphere did not answer in {timeout:.0f}s", True) from None
    except VSphereError as error:
        reason = cond.VM_NOT_FOUND if error.reason is Reason.NOT_FOUND else str(error.reason)
        raise Refusal(reason, error.message, error.transient) from None


def _describe(source: VSphereVmSource) -> Callable[[Connection], VmFacts]:
    ref = inventory.VmRef(
        name=source.vm.name, uuid=source.vm.uuid, moref=source.vm.moref,
        datacenter=source.datacenter,
    )  # fmt: skip
    return lambda conn: inventory.describe(conn, inventory.find_vm(conn, ref))


def _check(facts: VmFacts, source: VSphereVmSource, max_disks: int) -> None:
    problem = job_view.problem(facts, source.powerOff is not None, max_disks)
    if problem is not None:
        raise Refusal(*problem)


async def _stop(
    op: Operator, body: Body, login: Login, source: VSphereVmSource, facts: VmFacts
) -> None:
    """Stop the VM as the job says, and say so in its status and an Event."""
    assert source.powerOff is not None  # _check refused a running VM without it
    mode = power.StopMode(source.powerOff.value)
    grace = float(source.shutdownGraceSeconds)

    def stop(conn: Connection) -> power.Stopped:
        vm = vim.VirtualMachine(facts.moref, conn.stub)
        return power.stop(conn, vm, mode, grace=grace, task_timeout=TASK_TIMEOUT_SECONDS)

    deadline = grace + TASK_TIMEOUT_SECONDS + CALL_TIMEOUT_SECONDS
    stopped = await _call(op, body, login, stop, deadline)
    record = job_view.stopped_status(stopped, op.now())
    vm = {**(current_status(op, body).get("vm") or {}), "stopped": record}
    meta = body["metadata"]
    await op.kube.patch_job_status(meta["namespace"], meta["name"], {"vm": vm})
    op.written[key_of(body)] = {**current_status(op, body), "vm": vm}
    kopf.event(
        event_target(body),
        type="Normal",
        reason=cond.POWERED_OFF,
        message=job_view.stopped_message(facts.name, stopped),
    )


async def _session_secret(op: Operator, body: Body, login: Login, attempt: int) -> str:
    """The name of the attempt's session Secret, made now (or before a restart)."""

    def open_session(conn: Connection) -> tuple[sessions.WorkerSession, str | None]:
        ca = login.ca_bundle
        if login.thumbprint is not None:  # curl cannot pin: the pinned certificate is its CA
            endpoint = conn.endpoint
            ca = tls.pinned_certificate(endpoint.host, endpoint.port, conn.trust, conn.timeout)
        return sessions.clone(conn), ca

    session, ca = await _call(op, body, login, open_session, CALL_TIMEOUT_SECONDS)
    data = {COOKIE_KEY: session.cookie_header, SESSION_KEY: session.key}
    if ca is not None:
        data[CA_KEY] = ca
    manifest = worker_pod.session_secret(body, attempt, data)
    existing = await op.kube.create(manifest)
    if existing is not None:  # made before a restart: this one is not needed
        await _call(
            op, body, login, lambda conn: sessions.terminate(conn, session), CALL_TIMEOUT_SECONDS
        )
        if not worker_pod.owned_by(existing, body):
            raise Refusal(
                cond.NAME_TAKEN,
                f"Secret {manifest['metadata']['name']} exists and is not this job's; delete "
                "it, or re-create the job under another name",
            )
    return str(manifest["metadata"]["name"])


async def _attempt_session(op: Operator, body: Body) -> sessions.WorkerSession | None:
    """The running attempt's session, from its Secret (only one this job owns)."""
    meta = body["metadata"]
    data = await op.kube.owned_secret(meta["namespace"], _attempt_secret(op, body), meta["uid"])
    if data is None or not data.get(COOKIE_KEY) or not data.get(SESSION_KEY):
        return None
    return sessions.restore(data[COOKIE_KEY], data[SESSION_KEY])


def _attempt_secret(op: Operator, body: Body) -> str:
    """The name of the Secret of the job's current (or last) attempt's session."""
    attempt = int(current_status(op, body).get("attempt") or 0)
    return worker_pod.session_secret_name(body["metadata"]["name"], attempt)


def _server(login: Login) -> str:
    return f"https://{Endpoint.from_url(login.url)}"
