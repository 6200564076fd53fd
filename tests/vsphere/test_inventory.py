"""Finding VMs in vcsim and reading them into Hardware and copy instructions; refusing the
VMs whose disks cannot be copied as files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim

from hyper2kvm_operator.vsphere import client, inventory, mapping, power, refusals
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import VmFacts
from hyper2kvm_operator.vsphere.inventory import VmRef
from hyper2kvm_operator.vsphere.refusals import Kind
from hyper2kvm_worker.hardware import DescribedBy, Firmware
from tests.vsphere import vms
from tests.vsphere.vcsim import Vcsim


@pytest.fixture(scope="module")
def web01(vcsim: Vcsim, conn: client.Connection) -> Any:
    vms.create(vcsim, "web01")
    return vms.find(conn, "web01")


@pytest.fixture(scope="module")
def twins(vcsim: Vcsim, conn: client.Connection) -> Iterator[list[Any]]:
    """Two VMs named "twin", in two folders of one datacenter."""
    for folder in ("a", "b"):
        vcsim.govc("folder.create", f"/DC0/vm/{folder}")
        vcsim.govc(
            "vm.create", "-on=false", "-host", vms.HOST, "-ds", vms.DATASTORE, "-force",
            "-net", vms.NETWORKS[0], "-folder", f"/DC0/vm/{folder}", "twin",
        )  # fmt: skip
    yield [
        inventory.find_vm(conn, VmRef(moref=m))
        for m in _morefs(vcsim, "/DC0/vm/a/twin", "/DC0/vm/b/twin")
    ]


def _morefs(vcsim: Vcsim, *paths: str) -> list[str]:
    out = vcsim.govc("ls", "-i", *paths).split()
    return [ref.split(":", 1)[1] for ref in out]


def test_find_by_name_uuid_and_moref(conn: client.Connection, web01: Any) -> None:
    facts = inventory.describe(conn, web01)
    assert facts.instance_uuid and facts.bios_uuid
    assert inventory.find_vm(conn, VmRef(name="web01"))._moId == web01._moId
    assert inventory.find_vm(conn, VmRef(name="web01", datacenter="DC0"))._moId == web01._moId
    assert inventory.find_vm(conn, VmRef(uuid=facts.instance_uuid))._moId == web01._moId
    assert inventory.find_vm(conn, VmRef(uuid=facts.bios_uuid))._moId == web01._moId
    assert inventory.find_vm(conn, VmRef(moref=web01._moId, datacenter="DC0"))._moId == web01._moId


@pytest.mark.parametrize(
    "ref",
    [
        VmRef(name="no-such-vm"),
        VmRef(uuid="00000000-0000-0000-0000-000000000000"),
        VmRef(moref="vm-999999"),
        VmRef(name="web01", datacenter="NoSuchDC"),
    ],
    ids=["name", "uuid", "moref", "datacenter"],
)
def test_a_missing_vm_is_not_found(conn: client.Connection, web01: Any, ref: VmRef) -> None:
    with pytest.raises(VSphereError) as raised:
        inventory.find_vm(conn, ref)
    assert raised.value.reason is Reason.NOT_FOUND
    assert (ref.datacenter or str(ref)) in str(raised.value)  # what was not found


def test_a_datacenter_narrows_the_search(vcsim: Vcsim, conn: client.Connection, web01: Any) -> None:
    vcsim.govc("datacenter.create", "EmptyDC")
    for ref in (
        VmRef(name="web01", datacenter="EmptyDC"),
        VmRef(moref=web01._moId, datacenter="EmptyDC"),
    ):
        with pytest.raises(VSphereError) as raised:
            inventory.find_vm(conn, ref)
        assert raised.value.reason is Reason.NOT_FOUND


def test_two_vms_with_one_name_are_refused(conn: client.Connection, twins: list[Any]) -> None:
    with pytest.raises(VSphereError) as raised:
        inventory.find_vm(conn, VmRef(name="twin", datacenter="DC0"))
    assert raised.value.reason is Reason.AMBIGUOUS
    for twin in twins:
        assert twin._moId in str(raised.value)
    uuid = inventory.describe(conn, twins[1]).instance_uuid
    assert inventory.find_vm(conn, VmRef(uuid=uuid))._moId == twins[1]._moId


def test_the_hardware_of_a_vm(conn: client.Connection, web01: Any) -> None:
    facts = inventory.describe(conn, web01)
    hardware = mapping.hardware(facts)
    assert hardware.described_by is DescribedBy.VSPHERE
    assert hardware.name == "web01"
    assert (hardware.cpus, hardware.memory_bytes) == (4, 2 << 30)
    assert hardware.firmware is Firmware.EFI and hardware.secure_boot
    assert hardware.guest_os == "ubuntu64Guest"
    assert hardware.uuid == facts.bios_uuid
    assert [(n.model, n.mac, n.network) for n in hardware.nics] == [
        ("vmxnet3", vms.MACS[0], vms.NETWORKS[0]),
        ("e1000e", vms.MACS[1], vms.NETWORKS[1]),
    ]
    assert [d.capacity_bytes for d in hardware.disks] == [mb << 20 for mb in vms.DISKS_MB]
    assert [hardware.bus_of(d) for d in hardware.disks] == ["pvscsi", "pvscsi"]
    assert [d.unit for d in hardware.disks] == [0, 1]
    assert {d.datastore for d in hardware.disks} == {vms.DATASTORE}
    assert refusals.check(facts) == []


def test_copy_instructions_name_the_flat_extents(
    vcsim: Vcsim, conn: client.Connection, web01: Any
) -> None:
    facts = inventory.describe(conn, web01)
    copies = mapping.copies(facts)
    assert [(c.datacenter_path, c.datastore, c.path, c.capacity_bytes, c.host) for c in copies] == [
        ("DC0", vms.DATASTORE, "web01/web01-flat.vmdk", 64 << 20, vms.HOST),
        ("DC0", vms.DATASTORE, "web01/data-flat.vmdk", 32 << 20, vms.HOST),
    ]
    for copy, disk in zip(copies, facts.disks, strict=True):
        assert disk.file_name and disk.file_name.endswith(copy.path.replace("-flat", ""))
        assert (vcsim.datastores[copy.datastore] / copy.path).is_file()


def test_a_vm_with_snapshots_is_refused_naming_them(vcsim: Vcsim, conn: client.Connection) -> None:
    vms.create(vcsim, "snap01")
    vcsim.govc("snapshot.create", "-vm", "snap01", "before-upgrade")
    vcsim.govc("snapshot.create", "-vm", "snap01", "after-upgrade")
    facts = inventory.describe(conn, vms.find(conn, "snap01"))
    assert facts.snapshots == ("before-upgrade", "after-upgrade")
    found = refusals.check(facts)
    assert [(r.kind, r.subject) for r in found if r.kind is Kind.SNAPSHOT] == [
        (Kind.SNAPSHOT, "before-upgrade"),
        (Kind.SNAPSHOT, "after-upgrade"),
    ]
    with pytest.raises(VSphereError) as raised:
        refusals.refuse(facts)
    assert raised.value.reason is Reason.UNSUPPORTED
    assert "before-upgrade" in str(raised.value) and "after-upgrade" in str(raised.value)


@pytest.fixture(scope="module")
def odd01(vcsim: Vcsim, conn: client.Connection) -> VmFacts:
    """A VM with one disk of every kind refused, each in its own file."""
    vms.create(vcsim, "odd01")
    vm = ["-vm", "odd01"]
    controller = vms.pvscsi_controller(vcsim, vm)
    vcsim.govc("vm.disk.create", *vm, "-name", "odd01/scratch", "-size", "8MB",
               "-controller", controller, "-mode", "independent_nonpersistent")  # fmt: skip
    vcsim.govc("vm.disk.create", *vm, "-name", "odd01/cluster", "-size", "8MB",
               "-controller", controller, "-sharing", "sharingMultiWriter")  # fmt: skip
    vcsim.govc("device.scsi.add", *vm, "-type", "lsilogic", "-sharing", "physicalSharing")
    shared_bus = next(
        line.split()[0]
        for line in vcsim.govc("device.ls", *vm).splitlines()
        if "VirtualLsiLogicController" in line
    )
    vcsim.govc("vm.disk.create", *vm, "-name", "odd01/quorum", "-size", "8MB",
               "-controller", shared_bus)  # fmt: skip
    ref = vms.find(conn, "odd01")
    pvscsi_key = next(
        c.key for c in inventory.describe(conn, ref).controllers if c.kind == "pvscsi"
    )
    encrypted = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        diskMode="persistent", thinProvisioned=True
    )
    change = vms.add_disk(pvscsi_key, 5, "[LocalDS_0] odd01/secret.vmdk", encrypted)
    change.backing = vim.vm.device.VirtualDeviceSpec.BackingSpec(
        crypto=vim.encryption.CryptoSpecEncrypt(
            cryptoKeyId=vim.encryption.CryptoKeyId(
                keyId="key-1", providerId=vim.encryption.KeyProviderId(id="kms-1")
            )
        )
    )
    vms.reconfigure(conn, ref, change)
    mapping_file = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        deviceName="/vmfs/devices/disks/naa.600508b1001c4d41",
        lunUuid="0200000000600508b1001c4d41",
        compatibilityMode="physicalMode",
        diskMode="independent_persistent",
    )
    vms.reconfigure(
        conn, ref, vms.add_disk(pvscsi_key, 6, "[LocalDS_0] odd01/lun.vmdk", mapping_file)
    )
    return inventory.describe(conn, ref)


def _label(facts: VmFacts, file_part: str) -> str:
    return next(d.label for d in facts.disks if d.file_name and file_part in d.file_name)


@pytest.mark.parametrize(
    ("file_part", "kind"),
    [
        ("odd01/scratch.vmdk", Kind.NONPERSISTENT),
        ("odd01/cluster.vmdk", Kind.SHARED),
        ("odd01/quorum.vmdk", Kind.SHARED),
        ("odd01/secret.vmdk", Kind.ENCRYPTED),
        ("odd01/lun.vmdk", Kind.RAW_DEVICE_MAPPING),
    ],
)
def test_disks_that_are_refused_by_name(odd01: VmFacts, file_part: str, kind: Kind) -> None:
    label = _label(odd01, file_part)
    found = refusals.check(odd01)
    assert (kind, label) in [(r.kind, r.subject) for r in found]
    assert any(r.message.startswith(f"{label}: ") for r in found if r.kind is kind)


def test_the_vms_own_disks_are_not_refused(odd01: VmFacts) -> None:
    refused = {r.subject for r in refusals.check(odd01)}
    assert _label(odd01, "odd01/odd01.vmdk") not in refused
    assert _label(odd01, "odd01/data.vmdk") not in refused


def test_an_encrypted_vm_is_refused(vcsim: Vcsim, conn: client.Connection) -> None:
    vms.create(vcsim, "crypt01")
    ref = vms.find(conn, "crypt01")
    key = vim.encryption.CryptoKeyId(
        keyId="key-2", providerId=vim.encryption.KeyProviderId(id="kms-1")
    )
    spec = vim.vm.ConfigSpec(crypto=vim.encryption.CryptoSpecEncrypt(cryptoKeyId=key))
    task = client.call("encrypt", ref.ReconfigVM_Task, spec, attempts=1)
    power.wait_task(conn, task, 30, 0.1, power.Clock(), "encrypt")
    facts = inventory.describe(conn, ref)
    assert facts.encrypted
    assert (Kind.ENCRYPTED, "crypt01") in [(r.kind, r.subject) for r in refusals.check(facts)]
