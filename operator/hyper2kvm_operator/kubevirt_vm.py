"""The KubeVirt VirtualMachine a job makes of its migrated disks.

Pure. The hardware comes from what described the source (the vSphere inventory, as the job's
status recorded it) or, for listed disks nothing describes, from the job's own values; the
claims go in the source's disk order; the worker's `kubevirt` module builds the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyper2kvm_operator import api, claim_outputs
from hyper2kvm_operator.names import short_name
from hyper2kvm_operator.vsphere import job_view
from hyper2kvm_worker import kubevirt
from hyper2kvm_worker.hardware import DescribedBy, Hardware, HardwareDisk
from hyper2kvm_worker.protocol import Operation, Result

JOB_LABEL = claim_outputs.JOB_LABEL
INITRAMFS_FIX = "initramfs"  # offline_fix's fix that puts the virtio drivers in the guest


def hardware(spec: api.MigrationJobSpec, vm: Mapping[str, Any], result: Result | None) -> Hardware:
    """What the VM is made of: the source VM as recorded, or the job's listed disks with the
    sizes the worker found."""
    if spec.source is not None:
        return job_view.hardware_of(vm)
    sizes = {d.name: d.virtual_size or 0 for d in result.disks} if result is not None else {}
    return Hardware(
        described_by=DescribedBy.JOB,
        disks=[HardwareDisk(label=d.name, capacity_bytes=sizes.get(d.name, 0)) for d in spec.disks],
    )


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
    described = hardware(spec, vm, result)
    claims = {d.disk: d.claim for d in claim_outputs.claim_disks(job, spec, vm)}
    names = (
        [str(d["name"]) for d in vm.get("disks") or []]
        if spec.source
        else [d.name for d in spec.disks]
    )
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
