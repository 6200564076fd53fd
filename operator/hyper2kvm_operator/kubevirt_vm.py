"""The KubeVirt VirtualMachine a job makes of its migrated disks.

Pure. The hardware comes from what described the source: the vSphere inventory (as the job's
status recorded it), or what the worker found beside the disks (an OVA's OVF, a .vmx); for
listed disks nothing describes, from the job's own values. The claims go in the described
disk order; the worker's `kubevirt` module builds the manifest.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Mapping
from typing import Any

from hyper2kvm_operator import api, claim_outputs
from hyper2kvm_operator.names import short_name
from hyper2kvm_operator.vsphere import job_view
from hyper2kvm_worker import kubevirt
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import DescribedBy, Hardware, HardwareDisk
from hyper2kvm_worker.protocol import Operation, Result

JOB_LABEL = claim_outputs.JOB_LABEL
INITRAMFS_FIX = "initramfs"  # offline_fix's fix that puts the virtio drivers in the guest


def hardware(
    spec: api.MigrationJobSpec, vm: Mapping[str, Any], result: Result | None
) -> tuple[Hardware, list[str]]:
    """What the VM is made of, and the job's disk for each of its disks, in its order: the
    source VM as recorded; else what the worker found describing the disks (an OVA's OVF, a
    .vmx beside them); else the job's listed disks with the sizes the worker found."""
    if spec.source is not None:
        return job_view.hardware_of(vm), [str(d["name"]) for d in vm.get("disks") or []]
    if result is not None and result.hardware is not None:
        return result.hardware, described_disks(result.hardware, spec)
    sizes = {d.name: d.virtual_size or 0 for d in result.disks} if result is not None else {}
    disks = [HardwareDisk(label=d.name, capacity_bytes=sizes.get(d.name, 0)) for d in spec.disks]
    return Hardware(described_by=DescribedBy.JOB, disks=disks), [d.name for d in spec.disks]


def described_disks(described: Hardware, spec: api.MigrationJobSpec) -> list[str]:
    """The job's disk for each disk the description names, in the description's order, by
    file name; BadInput when the VM would miss a disk, or a migrated disk has no place."""
    names = [d.name for d in spec.disks]
    if len(described.disks) == len(names) == 1:
        return names  # one disk each: an OVA's only disk is often not named in the job
    by_file = {posixpath.basename(f): d.name for d in spec.disks if (f := _file_of(d.source))}
    found = []
    for disk in described.disks:
        name = by_file.get(posixpath.basename((disk.file or "").replace("\\", "/")))
        if name is None:
            raise BadInput(
                Reason.INVALID_JOB,
                f"{disk.label} ({disk.file}) of the VM's description is none of the job's "
                "disks: the VM would boot without it",
            )
        found.append(name)
    missing = sorted(set(names) - set(found))
    if missing:
        raise BadInput(
            Reason.INVALID_JOB,
            f"disk(s) {', '.join(missing)} of the job are not in the VM's description",
        )
    return found


def _file_of(source: api.DiskSource) -> str | None:
    if source.pvc is not None:
        return source.pvc.path
    if source.hostPath is not None:
        return source.hostPath.path
    if source.ova is not None:
        return source.ova.disk
    if source.ssh is not None:
        return source.ssh.path
    if source.http is not None:
        return urllib.parse.urlsplit(source.http.url).path
    return None


def virtio_ready(spec: api.MigrationJobSpec, result: Result | None) -> bool:
    """Whether the guest is known to boot from virtio: offline_fix found the virtio drivers
    in its initramfs, or put them there (and nothing it tried failed)."""
    if (
        spec.operation is not Operation.OFFLINE_FIX
        or result is None
        or (spec.fix is not None and spec.fix.dryRun)
    ):
        return False
    outcomes = [d.fixes.get(INITRAMFS_FIX) for d in result.disks if d.fixes]
    return any(o in ("applied", "not_needed") for o in outcomes) and "failed" not in outcomes


def build(
    job: str, spec: api.MigrationJobSpec, vm: Mapping[str, Any], result: Result | None
) -> kubevirt.BuiltVm:
    """The VirtualMachine; BadInput when the job's choices do not fit the source (a network
    left unmapped, say)."""
    assert spec.target is not None
    target = spec.target.kubevirt
    described, names = hardware(spec, vm, result)
    claims = {d.disk: d.claim for d in claim_outputs.claim_disks(job, spec, vm)}
    memory = None
    if target.memory is not None:
        amount, unit = int(target.memory[:-2]), target.memory[-2:]
        memory = amount << (30 if unit == "Gi" else 20)
    options = kubevirt.VmOptions(
        name=target.name or (None if described.name else job),
        run_strategy=target.runStrategy.value,
        labels={**(target.labels or {}), JOB_LABEL: short_name(job)},
        instancetype=target.instancetype,
        preference=target.preference,
        cpus=target.cpus,
        memory_bytes=memory,
    )
    networks = {m.source: kubevirt.parse_network_target(m.target) for m in target.networks}
    return kubevirt.build_vm(
        described,
        [claims[name] for name in names],
        virtio=virtio_ready(spec, result),
        networks=networks,
        options=options,
    )
