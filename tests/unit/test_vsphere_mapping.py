"""The pure half of the vSphere source: pyVmomi property values into facts, facts into
Hardware and copy instructions, and the refusals. Built from pyVmomi data objects made
here, for the cases vcsim is not needed to show (and a few it cannot make, such as a delta
disk without a snapshot)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pyVmomi import vim

from hyper2kvm_operator.vsphere import mapping, refusals
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import (
    ControllerFacts,
    DiskFacts,
    VmFacts,
    entity_name,
    vm_facts,
)
from hyper2kvm_operator.vsphere.refusals import Kind
from hyper2kvm_worker.hardware import DescribedBy, Firmware

Disk = vim.vm.device.VirtualDisk


def _disk(key: int, unit: int, backing: Any, capacity: int = 1 << 30) -> Any:
    return Disk(
        key=key,
        controllerKey=1000,
        unitNumber=unit,
        capacityInBytes=capacity,
        backing=backing,
        deviceInfo=vim.Description(label=f"Hard disk {unit + 1}", summary=""),
    )


def _props() -> dict[str, Any]:
    ds = vim.Datastore("datastore-7")
    flat = Disk.FlatVer2BackingInfo(
        fileName="[fast ssd] web01/web01.vmdk", datastore=ds, diskMode="persistent",
        sharing="sharingNone",
    )  # fmt: skip
    rdm = Disk.RawDiskMappingVer1BackingInfo(
        fileName="[fast ssd] web01/lun.vmdk", datastore=ds, compatibilityMode="virtualMode",
        diskMode="persistent", deviceName="/vmfs/devices/disks/naa.1",
    )  # fmt: skip
    nic1 = vim.vm.device.VirtualVmxnet3(
        key=4000, macAddress="00:50:56:AA:BB:01",
        deviceInfo=vim.Description(label="Network adapter 1", summary=""),
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=vim.Network("network-9")),
    )  # fmt: skip
    nic2 = vim.vm.device.VirtualE1000e(
        key=4001, macAddress="00:50:56:aa:bb:02",
        deviceInfo=vim.Description(label="Network adapter 2", summary=""),
        backing=vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(portgroupKey="dvportgroup-12", switchUuid="50 1c")),
    )  # fmt: skip
    scsi = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing")
    usb = vim.vm.device.VirtualUSBController(key=7000)
    files = [
        vim.vm.FileLayoutEx.FileInfo(
            key=1, name="[fast ssd] web01/web01.vmdk", type="diskDescriptor"
        ),
        vim.vm.FileLayoutEx.FileInfo(
            key=2, name="[fast ssd] web01/web01-flat.vmdk", type="diskExtent"
        ),
        vim.vm.FileLayoutEx.FileInfo(
            key=3, name="[fast ssd] web01/lun.vmdk", type="diskDescriptor"
        ),
        vim.vm.FileLayoutEx.FileInfo(
            key=4, name="[fast ssd] web01/lun-rdm.vmdk", type="diskExtent"
        ),
    ]
    unit = vim.vm.FileLayoutEx.DiskUnit
    return {
        "name": "web01",
        "config.hardware.numCPU": 8,
        "config.hardware.numCoresPerSocket": 4,
        "config.hardware.memoryMB": 4096,
        "config.hardware.device": [
            scsi,
            usb,
            _disk(2000, 0, flat),
            _disk(2001, 1, rdm, 2 << 30),
            nic1,
            nic2,
        ],
        "config.firmware": "efi",
        "config.bootOptions.efiSecureBootEnabled": True,
        "config.bootOptions.bootOrder": [vim.vm.BootOptions.BootableDiskDevice(deviceKey=2000)],
        "config.guestId": "rhel9_64Guest",
        "config.version": "vmx-19",
        "config.uuid": "4211aaaa-bbbb-cccc-dddd-eeeeffff0000",
        "config.instanceUuid": "5011aaaa-bbbb-cccc-dddd-eeeeffff0000",
        "layoutEx.file": files,
        "layoutEx.disk": [
            vim.vm.FileLayoutEx.DiskLayout(key=2000, chain=[unit(fileKey=[1, 2])]),
            vim.vm.FileLayoutEx.DiskLayout(key=2001, chain=[unit(fileKey=[3, 4])]),
        ],
        "runtime.powerState": "poweredOn",
        "runtime.host": vim.HostSystem("host-3"),
    }


NAMES = {"datastore-7": "fast ssd", "network-9": "VM Network", "host-3": "esx1.example.com"}
PORTGROUPS = {"dvportgroup-12": "prod-vlan-12"}


def _facts(**changes: Any) -> VmFacts:
    props = {**_props(), **changes}
    return vm_facts(
        "vm-42", props, datacenter_path="Europe/DC1", names=NAMES, portgroups=PORTGROUPS
    )


def test_facts_from_property_values() -> None:
    facts = _facts()
    assert (facts.moref, facts.name, facts.host) == ("vm-42", "web01", "esx1.example.com")
    assert [c.kind for c in facts.controllers] == ["pvscsi"]  # USB holds no disks
    first, second = facts.disks
    assert (first.backing, first.datastore, first.extent) == (
        "flat", "fast ssd", "[fast ssd] web01/web01-flat.vmdk",
    )  # fmt: skip
    assert (second.backing, second.rdm_mode) == ("rdm", "virtualMode")
    assert [(n.model, n.mac, n.network) for n in facts.nics] == [
        ("vmxnet3", "00:50:56:aa:bb:01", "VM Network"),
        ("e1000e", "00:50:56:aa:bb:02", "prod-vlan-12"),
    ]
    assert facts.boot_disk_keys == (2000,)


def test_hardware_from_facts() -> None:
    hardware = mapping.hardware(_facts())
    assert hardware.described_by is DescribedBy.VSPHERE
    assert (hardware.cpus, hardware.cores_per_socket, hardware.memory_bytes) == (8, 4, 4 << 30)
    assert hardware.firmware is Firmware.EFI and hardware.secure_boot
    assert (hardware.guest_os, hardware.machine) == ("rhel9_64Guest", "vmx-19")
    assert hardware.uuid == "4211aaaa-bbbb-cccc-dddd-eeeeffff0000"
    assert [d.label for d in hardware.disks] == ["Hard disk 1", "Hard disk 2"]
    assert [d.boot_order for d in hardware.disks] == [0, None]
    assert [hardware.bus_of(d) for d in hardware.disks] == ["pvscsi", "pvscsi"]
    assert hardware.disks[0].file == "[fast ssd] web01/web01.vmdk"


def test_bios_firmware_and_no_secure_boot() -> None:
    hardware = mapping.hardware(
        _facts(**{"config.firmware": "bios", "config.bootOptions.efiSecureBootEnabled": None})
    )
    assert hardware.firmware is Firmware.BIOS and not hardware.secure_boot


def test_copy_instructions_and_their_url() -> None:
    facts = _facts(**{"config.hardware.device": _props()["config.hardware.device"][:3]})
    [copy] = mapping.copies(facts)
    assert copy == mapping.DiskCopy(
        label="Hard disk 1", datacenter_path="Europe/DC1", datastore="fast ssd",
        path="web01/web01-flat.vmdk", capacity_bytes=1 << 30, host="esx1.example.com",
    )  # fmt: skip
    assert mapping.folder_url("vc.example.com:443", copy) == (
        "https://vc.example.com:443/folder/web01/web01-flat.vmdk"
        "?dcPath=Europe%2FDC1&dsName=fast+ssd"
    )


def test_the_extent_is_the_one_layout_names_not_a_guess() -> None:
    props = _props()
    props["layoutEx.file"][1].name = "[fast ssd] web01/web01_1-flat.vmdk"  # renamed on disk
    assert _facts(**props).disks[0].extent == "[fast ssd] web01/web01_1-flat.vmdk"


def test_a_disk_without_an_extent_has_no_copy() -> None:
    facts = _facts(**{"layoutEx.disk": []})
    assert facts.disks[0].extent is None
    with pytest.raises(ValueError, match="Hard disk 1"):
        mapping.copies(facts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[ds1] a/b.vmdk", ("ds1", "a/b.vmdk")),
        ("[fast ssd]  x y/z-flat.vmdk", ("fast ssd", "x y/z-flat.vmdk")),
    ],
)
def test_datastore_paths(text: str, expected: tuple[str, str]) -> None:
    assert mapping.split_datastore_path(text) == expected


def test_a_path_without_a_datastore_is_refused() -> None:
    with pytest.raises(ValueError):
        mapping.split_datastore_path("web01/web01.vmdk")


def test_snapshot_names_depth_first() -> None:
    tree = vim.vm.SnapshotTree
    roots = [tree(name="base", childSnapshotList=[tree(name="patch-1"), tree(name="patch-2")])]
    assert _facts(**{"snapshot.rootSnapshotList": roots}).snapshots == (
        "base",
        "patch-1",
        "patch-2",
    )


# Refusals, on facts made directly.

CLEAN_DISK = DiskFacts(
    key=2000, label="Hard disk 1", capacity_bytes=1 << 30, controller_key=1000, unit=0,
    backing="flat", file_name="[ds] vm/vm.vmdk", datastore="ds", disk_mode="persistent",
    sharing="sharingNone", encrypted=False, has_parent=False, chain_length=1,
    extent="[ds] vm/vm-flat.vmdk",
)  # fmt: skip
CLEAN_VM = VmFacts(
    moref="vm-1", name="vm", datacenter_path="DC0", host="esx1", bios_uuid=None,
    instance_uuid=None, cpus=2, cores_per_socket=1, memory_mb=2048, firmware="bios",
    secure_boot=False, guest_id=None, hardware_version=None, power_state="poweredOff",
    template=False, encrypted=False,
    controllers=(ControllerFacts(key=1000, kind="pvscsi", bus=0),), disks=(CLEAN_DISK,),
)  # fmt: skip


def _with_disk(**changes: Any) -> VmFacts:
    return dataclasses.replace(CLEAN_VM, disks=(dataclasses.replace(CLEAN_DISK, **changes),))


def test_a_clean_vm_is_not_refused() -> None:
    assert refusals.check(CLEAN_VM) == []
    refusals.refuse(CLEAN_VM)


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"backing": "rdm", "rdm_mode": "virtualMode"}, Kind.RAW_DEVICE_MAPPING),
        ({"backing": "rawdisk"}, Kind.RAW_DEVICE_MAPPING),
        ({"backing": "sesparse"}, Kind.UNSUPPORTED_BACKING),
        ({"disk_mode": "independent_nonpersistent"}, Kind.NONPERSISTENT),
        ({"disk_mode": "nonpersistent"}, Kind.NONPERSISTENT),
        ({"encrypted": True}, Kind.ENCRYPTED),
        ({"sharing": "sharingMultiWriter"}, Kind.SHARED),
        ({"has_parent": True, "chain_length": 2}, Kind.DELTA),
        ({"extent": None}, Kind.NO_EXTENT),
    ],
)
def test_a_disk_refused_by_its_label(changes: dict[str, Any], kind: Kind) -> None:
    found = refusals.check(_with_disk(**changes))
    assert [(r.kind, r.subject) for r in found] == [(kind, "Hard disk 1")]
    assert found[0].message.startswith("Hard disk 1: ")


def test_independent_persistent_disks_are_copied() -> None:
    assert refusals.check(_with_disk(disk_mode="independent_persistent")) == []


@pytest.mark.parametrize("sharing", ["virtualSharing", "physicalSharing"])
def test_a_disk_on_a_shared_bus_is_refused(sharing: str) -> None:
    facts = dataclasses.replace(
        CLEAN_VM, controllers=(ControllerFacts(key=1000, kind="lsilogic", bus=0, sharing=sharing),)
    )
    [found] = refusals.check(facts)
    assert (found.kind, found.subject) == (Kind.SHARED, "Hard disk 1")
    assert sharing in found.message


def test_snapshots_are_refused_by_name_and_their_deltas_not_twice() -> None:
    facts = dataclasses.replace(
        _with_disk(has_parent=True, chain_length=2, backing="sesparse"),
        snapshots=("before", "after"),
    )
    found = refusals.check(facts)
    assert [(r.kind, r.subject) for r in found] == [
        (Kind.SNAPSHOT, "before"),
        (Kind.SNAPSHOT, "after"),
    ]
    with pytest.raises(VSphereError) as raised:
        refusals.refuse(facts)
    assert raised.value.reason is Reason.UNSUPPORTED
    assert "'before'" in str(raised.value) and "'after'" in str(raised.value)


def test_an_encrypted_vm_and_a_template_are_refused() -> None:
    found = refusals.check(dataclasses.replace(CLEAN_VM, encrypted=True, template=True))
    assert {r.kind for r in found} == {Kind.ENCRYPTED, Kind.TEMPLATE}


@pytest.mark.parametrize(
    ("raw", "name"),
    [("web01", "web01"), ("app%2f01", "app/01"), ("a%5cb", "a\\b"), ("100%25 done", "100% done"),
     ("lit%252f", "lit%2f")],
)  # fmt: skip
def test_inventory_names_are_unescaped(raw: str, name: str) -> None:
    assert entity_name(raw) == name
    assert _facts(name=raw).name == name


def test_hardware_beyond_the_models_bounds_is_unsupported() -> None:
    many = tuple(dataclasses.replace(CLEAN_DISK, key=2000 + i, unit=i) for i in range(65))
    with pytest.raises(VSphereError) as raised:
        mapping.hardware(dataclasses.replace(CLEAN_VM, disks=many))
    assert raised.value.reason is Reason.UNSUPPORTED and "disks" in str(raised.value)
