"""The VirtualMachine a job makes of its migrated disks: from the source VM the status
recorded, or from the job's own values for listed disks nothing describes."""

from __future__ import annotations

from typing import Any

import pytest

from hyper2kvm_operator import api, kubevirt_vm
from hyper2kvm_operator.vsphere import job_view
from hyper2kvm_worker.errors import WorkerError
from hyper2kvm_worker.hardware import DescribedBy, Hardware, HardwareDisk
from hyper2kvm_worker.protocol import DiskResult, JobState, Operation, Result
from tests.unit.test_vsphere_job_view import FACTS

GiB = 1 << 30
CLAIMS = {"claim": {"create": {"volumeMode": "Block"}}, "format": "raw"}


def vm_spec(**target: Any) -> api.MigrationJobSpec:
    return api.MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "source": {"vsphere": {"provider": "vc", "vm": {"name": "web 01/prod"}}},
            "output": CLAIMS,
            "target": {"kubevirt": target},
        }
    )


def test_a_vsphere_vm_keeps_its_hardware_and_its_disks_are_its_claims() -> None:
    status = job_view.vm_status("vc", FACTS)
    spec = vm_spec(networks=[{"source": "VM Network", "target": "pod"}])
    built = kubevirt_vm.build("web01", spec, status, None)
    manifest = built.manifest
    assert manifest["metadata"]["labels"] == {"hyper2kvm.io/job": "web01"}
    template = manifest["spec"]["template"]["spec"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in template["volumes"]] == [
        "web01-disk-1",
        "web01-disk-2",
    ]
    assert template["domain"]["memory"]["guest"] == "2Gi"
    assert template["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    assert built.provenance["domain.cpu"] == "vsphere"
    assert manifest["spec"]["runStrategy"] == "Halted"


def test_an_unmapped_network_is_refused_before_any_copy() -> None:
    status = job_view.vm_status("vc", FACTS)
    with pytest.raises(WorkerError, match="'VM Network' not in the network map"):
        kubevirt_vm.build("web01", vm_spec(), status, None)


def test_listed_disks_make_a_vm_of_the_jobs_values_and_the_sizes_found() -> None:
    spec = api.MigrationJobSpec.model_validate(
        {
            "operation": "offline_fix",
            "disks": [
                {
                    "name": name,
                    "source": {"pvc": {"claimName": "vmware", "path": f"{name}.vmdk"}},
                    "output": {"claim": {"name": f"db-{name}"}, "format": "qcow2"},
                }
                for name in ("root", "data")
            ],
            "target": {"kubevirt": {"cpus": 2, "memory": "4Gi", "runStrategy": "Always"}},
        }
    )
    result = Result(
        job="j",
        state=JobState.SUCCEEDED,
        disks=[
            DiskResult(name="root", virtual_size=8 * GiB, fixes={"initramfs": "applied"}),
            DiskResult(name="data", virtual_size=GiB),
        ],
    )
    hardware, names = kubevirt_vm.hardware(spec, {}, result)
    assert names == ["root", "data"]
    assert [(d.label, d.capacity_bytes) for d in hardware.disks] == [
        ("root", 8 * GiB), ("data", GiB),
    ]  # fmt: skip
    built = kubevirt_vm.build("db", spec, {}, result)
    template = built.manifest["spec"]["template"]["spec"]
    assert built.manifest["metadata"]["name"] == "db"  # nothing named the VM: the job's name
    assert [d["disk"]["bus"] for d in template["domain"]["devices"]["disks"]] == [
        "virtio", "virtio",
    ]  # fmt: skip  # offline_fix put virtio drivers in
    assert template["domain"]["memory"]["guest"] == "4Gi"
    assert built.provenance["domain.cpu"] == "job"
    assert built.manifest["spec"]["runStrategy"] == "Always"


def test_virtio_only_once_offline_fix_put_its_drivers_in_the_guest() -> None:
    def result(outcome: str | None) -> Result:
        fixes = {"initramfs": outcome} if outcome else None
        return Result(job="j", state=JobState.SUCCEEDED, disks=[DiskResult(name="r", fixes=fixes)])

    source = {"hostPath": {"path": "/srv/r.vmdk"}}
    fixed = api.MigrationJobSpec.model_validate(
        {
            "operation": "offline_fix",
            "disks": [{"name": "r", "source": source, "output": {"claim": {}}}],
        }
    )
    assert kubevirt_vm.virtio_ready(fixed, result("applied"))
    assert kubevirt_vm.virtio_ready(fixed, result("not_needed"))
    assert not kubevirt_vm.virtio_ready(fixed, result("failed"))
    assert not kubevirt_vm.virtio_ready(fixed, result(None))
    converted = fixed.model_copy(update={"operation": Operation.CONVERT})
    assert not kubevirt_vm.virtio_ready(converted, result("applied"))


def test_disks_an_ova_or_vmx_describes_are_matched_to_the_jobs_by_file_name() -> None:
    described = Hardware(
        described_by=DescribedBy.OVF,
        name="web01",
        cpus=2,
        memory_bytes=4 * GiB,
        disks=[
            HardwareDisk(label="Hard disk 1", capacity_bytes=8 * GiB, file="web01-disk1.vmdk"),
            HardwareDisk(label="Hard disk 2", capacity_bytes=GiB, file="web01-disk2.vmdk"),
        ],
    )

    def ova_job(*members: str) -> api.MigrationJobSpec:
        return api.MigrationJobSpec.model_validate(
            {
                "operation": "convert",
                "disks": [
                    {
                        "name": f"d{i}",
                        "source": {"ova": {"hostPath": {"path": "/srv/web01.ova"}, "disk": member}},
                        "output": {"claim": {"name": f"c{i}"}},
                    }
                    for i, member in enumerate(members)
                ],
            }
        )

    # The job lists the OVA's disks in another order: the VM keeps the OVF's.
    reordered = ova_job("web01-disk2.vmdk", "web01-disk1.vmdk")
    assert kubevirt_vm.described_disks(described, reordered) == ["d1", "d0"]
    with pytest.raises(WorkerError, match=r"Hard disk 2 .* is none of the job's disks"):
        kubevirt_vm.described_disks(described, ova_job("web01-disk1.vmdk", "other.vmdk"))
    one = described.model_copy(update={"disks": described.disks[:1]})
    assert kubevirt_vm.described_disks(one, ova_job("anything.vmdk")) == ["d0"]
