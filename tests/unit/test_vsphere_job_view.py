"""A VM found in vSphere, as a MigrationJob sees it: disk names, output files, the status
that records the VM, what is refused, and the worker's job made from its disks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from hyper2kvm_operator import api, tenancy, worker_job, worker_pod
from hyper2kvm_operator.placement import QueuedJob, SourceLimits, WorkerNode, place, why_waiting
from hyper2kvm_operator.vsphere import job_view, mapping
from hyper2kvm_operator.vsphere.facts import ControllerFacts, DiskFacts, NicFacts, VmFacts
from hyper2kvm_operator.vsphere.power import How, Stopped
from hyper2kvm_worker import protocol

MiB = 1 << 20


def _disk(key: int, unit: int, size: int = 64 * MiB, **changes: object) -> DiskFacts:
    disk = DiskFacts(
        key=key,
        label=f"Hard disk {unit + 1}",
        capacity_bytes=size,
        controller_key=1000,
        unit=unit,
        backing="flat",
        file_name=f"[LocalDS_0] web 01/web01_{unit}.vmdk",
        datastore="LocalDS_0",
        disk_mode="persistent",
        sharing="sharingNone",
        encrypted=False,
        has_parent=False,
        chain_length=1,
        extent=f"[LocalDS_0] web 01/web01_{unit}-flat.vmdk",
    )
    return dataclasses.replace(disk, **changes)  # type: ignore[arg-type]


FACTS = VmFacts(
    moref="vm-42",
    name="web 01/prod",
    datacenter_path="Europe/DC9",
    host="esx1.example.com",
    bios_uuid="4211aaaa-bbbb-cccc-dddd-eeeeffff0000",
    instance_uuid="5011aaaa-bbbb-cccc-dddd-eeeeffff0000",
    cpus=4,
    cores_per_socket=2,
    memory_mb=2048,
    firmware="efi",
    secure_boot=True,
    guest_id="ubuntu64Guest",
    hardware_version="vmx-19",
    power_state="poweredOff",
    template=False,
    encrypted=False,
    controllers=(ControllerFacts(key=1000, kind="pvscsi", bus=0),),
    disks=(_disk(2000, 0), _disk(2001, 1, 32 * MiB)),
    nics=(
        NicFacts(
            key=4000,
            label="Network adapter 1",
            model="vmxnet3",
            mac="00:50:56:aa:bb:01",
            network="VM Network",
        ),
    ),
)


def test_disks_are_named_in_device_order_and_files_follow_the_rule() -> None:
    assert job_view.disk_names(FACTS) == ["disk-1", "disk-2"]
    assert job_view.safe_file_name("web 01/prod") == "web-01-prod"
    assert job_view.safe_file_name("../..") == "vm"
    assert job_view.safe_file_name(".hidden") == "hidden"
    assert job_view.output_path(api.DEFAULT_OUTPUT_PATH, "web 01/prod", "disk-2", "raw") == (
        "web-01-prod-disk-2.raw"
    )
    assert job_view.output_path("{vm}/{disk}.img", "db", "disk-1", "qcow2") == "db/disk-1.img"


def test_the_status_records_the_vm_as_vsphere_describes_it() -> None:
    vm = job_view.vm_status("vc", FACTS)
    api.SourceVm.model_validate(vm)  # the CRD's own shape
    assert vm["provider"] == "vc" and vm["moref"] == "vm-42" and vm["name"] == "web 01/prod"
    assert (vm["cpus"], vm["memoryMiB"], vm["firmware"], vm["secureBoot"]) == (
        4, 2048, "efi", True,
    )  # fmt: skip
    assert vm["disks"][1] == {
        "name": "disk-2",
        "label": "Hard disk 2",
        "capacityBytes": 32 * MiB,
        "datastore": "LocalDS_0",
        "file": "[LocalDS_0] web 01/web01_1.vmdk",
        "extent": "[LocalDS_0] web 01/web01_1-flat.vmdk",
        "controller": 1000,
        "unit": 1,
        "mode": "persistent",
    }
    assert vm["nics"] == [
        {"label": "Network adapter 1", "model": "vmxnet3", "mac": "00:50:56:aa:bb:01",
         "network": "VM Network"}
    ]  # fmt: skip
    assert vm["controllers"] == [{"key": 1000, "kind": "pvscsi", "bus": 0, "sharing": "noSharing"}]


def test_what_cannot_be_copied_is_refused_naming_it() -> None:
    assert job_view.problem(FACTS, may_stop=False, max_disks=16) is None
    snapshot = dataclasses.replace(FACTS, snapshots=("before upgrade",))
    assert job_view.problem(snapshot, False, 16) == (
        "Snapshot",
        "VM web 01/prod cannot be migrated: snapshot 'before upgrade': delete or consolidate "
        "the VM's snapshots first",
    )
    rdm = dataclasses.replace(FACTS, disks=(_disk(2000, 0, backing="rdm"), FACTS.disks[1]))
    reason, message = job_view.problem(rdm, False, 16) or ("", "")
    assert reason == "RawDeviceMapping" and "Hard disk 1" in message
    running = dataclasses.replace(FACTS, power_state="poweredOn")
    reason, message = job_view.problem(running, False, 16) or ("", "")
    assert reason == "PoweredOn" and "powerOff" in message
    assert job_view.problem(running, may_stop=True, max_disks=16) is None
    reason, message = job_view.problem(FACTS, False, max_disks=1) or ("", "")
    assert reason == "PolicyViolation" and "policy.maxDisks" in message
    assert job_view.problem(dataclasses.replace(FACTS, disks=()), False, 16) == (
        "NoDisks", "VM web 01/prod has no disks",
    )  # fmt: skip


def test_an_attempt_copies_the_disks_the_job_was_admitted_with() -> None:
    recorded = job_view.vm_status("vc", FACTS)["disks"]
    assert job_view.same_disks(recorded, FACTS) == ""
    grown = dataclasses.replace(FACTS, disks=(FACTS.disks[0], _disk(2001, 1, 64 * MiB)))
    assert job_view.same_disks(recorded, grown) == (
        f"Hard disk 2 is {64 * MiB} bytes now, {32 * MiB} when the job was admitted"
    )
    added = dataclasses.replace(FACTS, disks=(*FACTS.disks, _disk(2002, 2)))
    assert "had 2 disks" in job_view.same_disks(recorded, added)


def test_how_the_vm_was_stopped_is_said() -> None:
    stopped = Stopped(How.POWER_OFF, datetime(2026, 1, 1, tzinfo=UTC), "the guest did not "
                      "shut down within 10s")  # fmt: skip
    assert job_view.stopped_status(stopped, "2026-01-01T00:00:00Z") == {
        "how": "PowerOff",
        "time": "2026-01-01T00:00:00Z",
        "note": "the guest did not shut down within 10s",
    }
    assert job_view.stopped_message("db", stopped) == (
        "VM db was powered off (the guest did not shut down within 10s)"
    )


def _vm_spec(**output: object) -> api.MigrationJobSpec:
    return api.MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "source": {"vsphere": {"provider": "vc", "vm": {"name": "web 01/prod"}}},
            "output": {"hostPath": {"path": "/srv/out"}, **output},
        }
    )


def test_the_worker_reads_each_disk_with_the_attempt_session_only() -> None:
    vm = worker_job.VmDisks(
        vm_name=FACTS.name,
        server="https://vc.example.com:443",
        session_secret="web01-1-vsphere",
        insecure=False,
        disks=tuple(zip(job_view.disk_names(FACTS), mapping.copies(FACTS), strict=True)),
    )
    plan = worker_job.plan("ns/web01", _vm_spec(format="raw"), None, vm)
    assert plan.secrets == () and plan.session_secret == "web01-1-vsphere"
    first = plan.job.disks[0]
    assert first.name == "disk-1"
    assert first.source.model_dump(exclude_none=True) == {
        "kind": "vsphere",
        "url": "https://vc.example.com:443",
        "datacenter": "Europe/DC9",
        "datastore": "LocalDS_0",
        "path": "web 01/web01_0-flat.vmdk",
        "cookie_file": "/secrets/web01-1-vsphere/cookie",
        "ca_file": "/secrets/web01-1-vsphere/ca.crt",
        "insecure": False,
        "format": "raw",
        "size": 64 * MiB,
    }
    assert isinstance(first.output, protocol.Output)
    assert first.output.path == "web-01-prod-disk-1.raw"
    assert [v.host_path for v in plan.volumes] == ["/srv/out"]
    # One disk at a time from the ESXi host: its limit counts one read per job.
    assert plan.job.parallel_disks == 1
    with pytest.raises(ValueError, match="needs the VM's disks"):
        worker_job.plan("ns/web01", _vm_spec())


def test_the_session_secret_is_the_jobs_and_mounted_for_the_worker_group_only() -> None:
    body = {"metadata": {"name": "web01", "namespace": "ns", "uid": "u-1"}}
    secret = worker_pod.session_secret(body, 2, {"cookie": "c", "key": "k"})
    assert secret["metadata"]["name"] == "web01-2-vsphere"
    assert worker_pod.owned_by(secret, body)
    assert secret["stringData"] == {"cookie": "c", "key": "k"}


def test_a_source_vms_output_folder_is_held_to_the_host_path_policy() -> None:
    policy = tenancy.Policy(host_paths=(tenancy.HostPathGrant("/srv", write=False),))
    found = tenancy.violations("team-a", _vm_spec(), policy)
    assert [str(v) for v in found] == [
        "the source VM's output writes to the node's /srv/out, under no host folder namespace "
        "team-a may write (policy.hostPaths)"
    ]


def test_an_esxi_host_at_its_limit_holds_back_only_its_own_jobs() -> None:
    nodes = [WorkerNode("n1", {}, slots=4)]
    host = "ns/vc/esx1"
    queue = [
        QueuedJob("ns/a", 0, "2026-01-01T00:00:01Z", source_host=host),
        QueuedJob("ns/b", 0, "2026-01-01T00:00:02Z", source_host=host),
        QueuedJob("ns/c", 0, "2026-01-01T00:00:03Z", source_host="ns/vc/esx2"),
        QueuedJob("ns/d", 0, "2026-01-01T00:00:04Z"),
    ]
    limits = SourceLimits(active={host: 1}, limit=lambda h: 2)
    placed = [job.key for job, _ in place(queue, nodes, {}, sources=limits)]
    assert placed == ["ns/a", "ns/c", "ns/d"]  # b would be esx1's third reader
    full = SourceLimits(active={host: 2}, limit=lambda h: 2)
    assert why_waiting(queue[1], nodes, sources=full) == (
        "ESXi host esx1 is read by 2 jobs, its provider's limit (maxDisksPerHost)"
    )
    unlimited = SourceLimits(active={host: 50})
    assert len(place(queue, nodes, {}, sources=unlimited)) == 4


def test_the_hardware_read_back_from_the_status_is_the_hardware_vsphere_described() -> None:
    booting = dataclasses.replace(FACTS, boot_disk_keys=(2001, 2000))
    recorded = job_view.vm_status("vc", booting)
    assert job_view.hardware_of(recorded) == mapping.hardware(booting)
    assert [d.boot_order for d in job_view.hardware_of(recorded).disks] == [1, 0]
