"""Claims that are a job's disks, in KubeVirt's layout: their names, sizes and manifests, and
the annotations that say whether the disk in one is verified.

Pure. A Block claim is the raw disk itself; a Filesystem claim holds it as `disk.img`. A
claim the operator makes is the migration's result and outlives the job: it carries the
job's labels, never an owner reference. Whether its content can be trusted is on the claim
itself (`hyper2kvm.io/verified`), written false before an attempt touches it and true with
the digest once the worker proved the disk equal to its source: a VM is never built over a
claim that says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyper2kvm_operator import api
from hyper2kvm_operator.names import short_name
from hyper2kvm_operator.tenancy import quantity
from hyper2kvm_worker.protocol import OutputFormat

VERIFIED = "hyper2kvm.io/verified"
DIGEST = "hyper2kvm.io/digest"
WRITTEN_BY = "hyper2kvm.io/written-by"  # "<job>/<attempt>": who wrote it last
JOB_LABEL = "hyper2kvm.io/job"
FILESYSTEM_OVERHEAD = 0.055  # what KubeVirt CDI reserves by default for the filesystem
MiB = 1 << 20


@dataclass(frozen=True)
class ClaimFacts:
    """A claim output as found before an attempt: its name and whether it is a device."""

    name: str
    block: bool


def claim_name(job: str, disk: str, output: api.DiskOutput | api.VmOutput) -> str:
    assert output.claim is not None
    return output.claim.name or f"{job}-{disk}"


def claim_size(capacity_bytes: int, block: bool) -> str:
    """The request for a claim that holds a disk of `capacity_bytes`: the disk itself on a
    device; with the filesystem's overhead and room for qcow2's metadata on a filesystem."""
    if block:
        return f"{math.ceil(capacity_bytes / MiB)}Mi"
    return f"{math.ceil(capacity_bytes * (1 + FILESYSTEM_OVERHEAD) / MiB) + 64}Mi"


def claim_manifest(
    body: Mapping[str, Any], name: str, create: api.ClaimCreate, size: str
) -> dict[str, Any]:
    meta = body["metadata"]
    spec: dict[str, Any] = {
        "accessModes": list(create.accessModes),
        "volumeMode": create.volumeMode.value,
        "resources": {"requests": {"storage": size}},
    }
    if create.storageClassName is not None:
        spec["storageClassName"] = create.storageClassName
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                JOB_LABEL: short_name(meta["name"]),
                "app.kubernetes.io/managed-by": "hyper2kvm",
            },
            "annotations": {VERIFIED: "false"},
        },
        "spec": spec,
    }


def made_by(obj: Mapping[str, Any], job: str) -> bool:
    """Whether the job labelled `obj` (a claim, a VirtualMachine) as its own."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL) == short_name(job)


def is_block(claim: Mapping[str, Any]) -> bool:
    return (claim.get("spec") or {}).get("volumeMode") == api.VolumeMode.BLOCK.value


def too_small(claim: Mapping[str, Any], needed_bytes: int) -> str:
    """Why an existing claim cannot hold a disk of `needed_bytes`, or "" (also when its size
    is not known yet: then the worker checks the device or the free space itself)."""
    status = claim.get("status") or {}
    capacity = (status.get("capacity") or {}).get("storage")
    if capacity is None:
        return ""
    have = int(quantity(capacity))
    if have >= needed_bytes:
        return ""
    name = claim["metadata"]["name"]
    return f"claim {name} holds {have} bytes; the disk needs {needed_bytes}"


def unverified(job: str, attempt: int) -> dict[str, str | None]:
    """The annotations of a claim an attempt is about to write."""
    return {VERIFIED: "false", DIGEST: None, WRITTEN_BY: f"{job}/{attempt}"}


def verified(digest: str) -> dict[str, str | None]:
    return {VERIFIED: "true", DIGEST: digest}


@dataclass(frozen=True)
class ClaimDisk:
    """A disk of the job whose output is a claim."""

    disk: str
    claim: str
    create: api.ClaimCreate | None
    raw: bool  # the output format is raw (what a Block claim holds)
    needed_bytes: int | None  # the disk's size, when known before the copy (vSphere)

    @property
    def request(self) -> str:
        """The size of the claim to make: the job's, or from the disk's size."""
        assert self.create is not None
        if self.create.size is not None:
            return self.create.size
        assert self.needed_bytes is not None  # the CRD asks a listed disk's claim for a size
        return claim_size(self.needed_bytes, self.create.volumeMode is api.VolumeMode.BLOCK)


def claim_disks(job: str, spec: api.MigrationJobSpec, vm: Mapping[str, Any]) -> list[ClaimDisk]:
    """The disks of `spec` written into claims; `vm` is the status of a source VM (its
    disks and their capacities), empty for a job that lists its disks."""
    found = []
    for disk in spec.disks:
        output = disk.output
        if output is None or output.claim is None:
            continue
        found.append(
            ClaimDisk(
                disk=disk.name,
                claim=claim_name(job, disk.name, output),
                create=output.claim.create,
                raw=output.format is OutputFormat.RAW,
                needed_bytes=None,  # known once the worker opens the source; it checks
            )
        )
    rule = spec.output
    if rule is not None and rule.claim is not None:
        for entry in vm.get("disks") or []:
            name = str(entry["name"])
            found.append(
                ClaimDisk(
                    disk=name,
                    claim=claim_name(job, name, rule),
                    create=rule.claim.create,
                    raw=rule.format is OutputFormat.RAW,
                    needed_bytes=int(entry["capacityBytes"]),
                )
            )
    return found
