"""The worker Pod and the ConfigMap holding its job, built as plain manifests (pure).

Names are deterministic (`<job>-<attempt>`), so an operator restarted at any moment finds
the Pod it already made instead of making a second one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hyper2kvm_operator import api
from hyper2kvm_operator.names import short_name
from hyper2kvm_operator.settings import Settings
from hyper2kvm_operator.worker_job import SCRATCH, SECRETS_ROOT, WorkerJobPlan
from hyper2kvm_worker.protocol import Operation

JOB_LABEL = "hyper2kvm.io/job"
ATTEMPT_LABEL = "hyper2kvm.io/attempt"
NODE_LABEL = "hyper2kvm.io/node"  # where the Pod was placed, for people: slots come from status
MANAGED_BY = {"app.kubernetes.io/managed-by": "hyper2kvm-operator"}
WORKER_LABELS = {**MANAGED_BY, "app.kubernetes.io/name": "hyper2kvm-worker"}
JOB_FILE_DIR = "/etc/hyper2kvm"
WORKER_UID = 10001  # the worker image's user
# The volumes' group is the worker's, so a freshly provisioned output or scratch claim
# (owned by root) is writable without an init container; OnRootMismatch skips the walk over
# a volume already right. NFS and hostPath ignore fsGroup: make those writable for this uid
# or group. The user goes with the group: containerd refuses to start a Pod sandbox whose
# group is set without a user. A privileged offline_fix container overrides the user.
POD_SECURITY_CONTEXT = {
    "runAsUser": WORKER_UID,
    "runAsGroup": WORKER_UID,
    "fsGroup": WORKER_UID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Every worker container but a privileged offline_fix: what PSA's "restricted" level asks.
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": WORKER_UID,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
TERMINATION_LOG = "/dev/termination-log"
TMP_SIZE = "64Mi"  # /tmp holds sockets and small files only; scratch space is SCRATCH


def pod_name(job: str, attempt: int) -> str:
    return short_name(job, f"-{attempt}")


def configmap_name(job: str, attempt: int) -> str:
    return short_name(job, f"-{attempt}-job")


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether `obj` is a child of this very job: its controller reference names the job's
    UID (a Pod of the same name made by somebody else is never adopted)."""
    uid = body["metadata"]["uid"]
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in references)


def _metadata(
    body: Mapping[str, Any], name: str, attempt: int, labels: Mapping[str, str]
) -> dict[str, Any]:
    """Name, namespace, the job's labels and the owner reference of a child object."""
    job = body["metadata"]["name"]
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": {**labels, JOB_LABEL: short_name(job), ATTEMPT_LABEL: str(attempt)},
        "ownerReferences": [owner_reference(body)],
    }


def job_configmap(body: Mapping[str, Any], attempt: int, plan: WorkerJobPlan) -> dict[str, Any]:
    name = configmap_name(body["metadata"]["name"], attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(body, name, attempt, MANAGED_BY),
        "data": {"job.json": plan.job.model_dump_json(exclude_none=True)},
    }


def session_secret_name(job: str, attempt: int) -> str:
    return short_name(job, f"-{attempt}-vsphere")


def session_secret(
    body: Mapping[str, Any], attempt: int, data: Mapping[str, str]
) -> dict[str, Any]:
    """A vSphere attempt's own session (cookie, CA, the key that ends it), owned by the job."""
    name = session_secret_name(body["metadata"]["name"], attempt)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(body, name, attempt, MANAGED_BY),
        "stringData": dict(data),
    }


def security_context(operation: Operation, namespace: str, settings: Settings) -> dict[str, Any]:
    if operation is Operation.OFFLINE_FIX and settings.policy.privileged_fix(namespace):
        # Only for /dev/kvm, so that libguestfs' appliance runs with KVM instead of TCG;
        # without it offline_fix works unprivileged, more slowly. As root: the device's
        # group differs from host to host, so the image's user may not open it.
        return {"privileged": True, "runAsUser": 0, "runAsNonRoot": False}
    return copy.deepcopy(CONTAINER_SECURITY_CONTEXT)


def resources(spec: api.MigrationJobSpec, settings: Settings) -> dict[str, Any]:
    wanted = spec.resources
    requests = dict(settings.worker_requests)
    limits = dict(settings.worker_limits)
    if spec.operation is Operation.OFFLINE_FIX or spec.skipFreeSpace:
        limits["memory"] = settings.fix_memory_limit  # libguestfs' appliance VM on top
    if wanted is not None and wanted.requests is not None:
        requests.update(wanted.requests.model_dump(exclude_none=True))
    if wanted is not None and wanted.limits is not None:
        limits.update(wanted.limits.model_dump(exclude_none=True))
    return {"requests": requests, "limits": limits}


def scratch_volume(settings: Settings) -> dict[str, Any]:
    """The scratch volume's source: a shared claim, a claim of its own, or node disk."""
    if settings.scratch_claim is not None:
        return {"persistentVolumeClaim": {"claimName": settings.scratch_claim}}
    if settings.scratch_size is not None:
        # A generic ephemeral volume: a ReadWriteOnce claim made for this Pod alone and
        # deleted with it, so parallel workers never share or leak scratch space.
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": settings.scratch_size}},
        }
        if settings.scratch_storage_class is not None:
            claim["storageClassName"] = settings.scratch_storage_class
        return {
            "ephemeral": {
                "volumeClaimTemplate": {"metadata": {"labels": dict(MANAGED_BY)}, "spec": claim}
            }
        }
    # Bounded: kubelet evicts a worker that fills more than its share of the node's disk.
    return {"emptyDir": {"sizeLimit": settings.scratch_limit}}


def worker_pod(
    body: Mapping[str, Any],
    spec: api.MigrationJobSpec,
    attempt: int,
    node: str,
    plan: WorkerJobPlan,
    settings: Settings,
) -> dict[str, Any]:
    name = body["metadata"]["name"]
    volumes: list[dict[str, Any]] = [
        {"name": "job", "configMap": {"name": configmap_name(name, attempt)}},
        {"name": "scratch", **scratch_volume(settings)},
        # The root filesystem is read-only, and libnbd makes its socket directory under /tmp
        # whatever TMPDIR says (nbdcopy of a qemu-nbd source, for digests).
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job", "mountPath": JOB_FILE_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir, not shared /tmp
    ]
    devices: list[dict[str, Any]] = []
    for volume in plan.volumes:
        if volume.claim_name is not None:
            source: dict[str, Any] = {
                "persistentVolumeClaim": {
                    "claimName": volume.claim_name,
                    "readOnly": volume.read_only,
                }
            }
        else:
            # Directory, also for outputs: a job never makes folders on a node (as root, for
            # kubelet does it), an admin prepares them under the policy's prefixes.
            source = {"hostPath": {"path": volume.host_path, "type": "Directory"}}
        volumes.append({"name": volume.name, **source})
        if volume.device:  # a Block claim: the raw device, owned by the Pod's user
            devices.append({"name": volume.name, "devicePath": volume.mount_path})
            continue
        mounts.append(
            {"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
        )
    mounted = plan.secrets + ((plan.session_secret,) if plan.session_secret else ())
    for index, secret in enumerate(mounted):
        # Readable by the worker's group (the Pod's fsGroup) and nobody else.
        volumes.append(
            {"name": f"secret-{index}", "secret": {"secretName": secret, "defaultMode": 0o440}}
        )
        mounts.append(
            {"name": f"secret-{index}", "mountPath": f"{SECRETS_ROOT}/{secret}", "readOnly": True}
        )
    placement = spec.placement
    tolerations = [dict(t) for t in settings.worker_tolerations]  # the chart's, then the job's
    if placement is not None and placement.tolerations:
        tolerations += [t.model_dump(exclude_none=True) for t in placement.tolerations]
    container = {
        "name": "worker",
        "image": settings.worker_image,
        **({"imagePullPolicy": settings.worker_pull_policy} if settings.worker_pull_policy else {}),
        "command": list(settings.worker_command),
        "args": [
            "run",
            "--job",
            f"{JOB_FILE_DIR}/job.json",
            "--result",
            TERMINATION_LOG,
            # Every address of the Pod's own network namespace: the operator reads progress
            # on the Pod IP, `kubectl port-forward` on its loopback.
            "--listen",
            f"0.0.0.0:{settings.worker_port}",
        ],
        "env": [
            {"name": "TMPDIR", "value": SCRATCH},
            {"name": "LIBGUESTFS_CACHEDIR", "value": SCRATCH},  # the root filesystem is read-only
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "ports": [{"name": "progress", "containerPort": settings.worker_port}],
        "volumeMounts": mounts,
        **({"volumeDevices": devices} if devices else {}),
        "resources": resources(spec, settings),
        "securityContext": security_context(
            spec.operation, body["metadata"]["namespace"], settings
        ),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(
            body, pod_name(name, attempt), attempt, {**WORKER_LABELS, NODE_LABEL: node}
        ),
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "terminationGracePeriodSeconds": 30,
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {"key": "metadata.name", "operator": "In", "values": [node]}
                                ]
                            }
                        ]
                    }
                }
            },
            "tolerations": tolerations,
            **(
                {"imagePullSecrets": [{"name": name} for name in settings.worker_pull_secrets]}
                if settings.worker_pull_secrets
                else {}
            ),
            "containers": [container],
            "volumes": volumes,
        },
    }
