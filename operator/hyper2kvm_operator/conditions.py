"""Status conditions (Kubernetes conventions) and the reasons they carry, in one place.

`set_condition` is pure: the transition time moves only when the status flips, so a
condition that stays True keeps the time it became True.
"""

from __future__ import annotations

from typing import Any

READY = "Ready"  # True once the job has ended well: `kubectl wait --for=condition=Ready`
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PROGRESSING = "Progressing"

# Reasons the operator itself gives (the worker's own reasons pass through unchanged).
QUEUED = "Queued"
NO_CAPACITY = "NoCapacity"
SCHEDULED = "Scheduled"
RUNNING = "Running"
VERIFYING = "Verifying"
COMPLETED = "Completed"
RETRYING = "Retrying"
RETRIES_EXHAUSTED = "RetriesExhausted"
TIMED_OUT = "TimedOut"
CANCELLED = "Cancelled"
POD_LOST = "PodLost"
INVALID_SPEC = "InvalidSpec"
POLICY_VIOLATION = "PolicyViolation"  # the job asks for what the cluster's policy forbids
POD_REFUSED = "PodRefused"  # the API server would not create the worker Pod
NAME_TAKEN = "NameTaken"  # a child's name is held by an object this job does not own
CREDENTIALS_REFUSED = "CredentialsRefused"  # a secretRef names a Secret not meant for us

# A VSphereProvider's Ready condition.
CONNECTED = "Connected"
INCOMPLETE_CREDENTIALS = "IncompleteCredentials"  # its Secret lacks username or password
# and the vSphere client's own reasons: InvalidLogin, CertificateMismatch, Unreachable, ...


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with condition `kind` set; other conditions are kept as they are."""
    value = "True" if status else "False"
    previous = find(conditions, kind)
    transition = now
    if previous is not None and previous.get("status") == value:
        transition = previous.get("lastTransitionTime", now)
    updated: dict[str, Any] = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != kind] + [updated]


def find(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


# A job whose source is a VM in vSphere (and the vSphere client's reasons: InvalidLogin, ...).
PROVIDER_NOT_FOUND = "ProviderNotFound"  # source.vsphere.provider names no VSphereProvider
VM_NOT_FOUND = "VMNotFound"
POWERED_ON = "PoweredOn"  # the VM runs and the job did not ask to stop it
POWERED_OFF = "PoweredOff"  # an Event: the operator stopped the VM
VM_CHANGED = "VMChanged"  # its disks are not those the job was admitted with
NO_DISKS = "NoDisks"
SESSION_EXPIRED = "SessionExpired"  # the attempt's vSphere session ended on the server
CLAIM_REFUSED = "ClaimRefused"  # a claim output cannot hold the disk (missing, small, wrong mode)
KUBEVIRT_REFUSED = "KubeVirtRefused"  # the VirtualMachine could not be made
VM_CREATED = "VirtualMachineCreated"  # an Event: the VirtualMachine was made
