"""OVF descriptors read into Hardware: VMware's exports, OVF 2.x, and hostile or broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import DescribedBy, Firmware
from hyper2kvm_worker.ovf import OVF_MAX_BYTES, parse_ovf

GOLDEN = Path(__file__).parent / "golden"

CPU = """<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
  <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>"""
MEMORY = """<Item><rasd:AllocationUnits>{units}</rasd:AllocationUnits>
  <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
  <rasd:VirtualQuantity>{quantity}</rasd:VirtualQuantity></Item>"""
SCSI = """<Item><rasd:InstanceID>3</rasd:InstanceID>
  <rasd:ResourceSubType>{kind}</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>"""
DISK = """<Item><rasd:AddressOnParent>{unit}</rasd:AddressOnParent>
  <rasd:ElementName>Hard disk {number}</rasd:ElementName>
  <rasd:HostResource>ovf:/disk/{disk_id}</rasd:HostResource>
  <rasd:InstanceID>{instance}</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
  <rasd:ResourceType>17</rasd:ResourceType></Item>"""
NIC = """<Item><rasd:Address>{mac}</rasd:Address><rasd:Connection>{network}</rasd:Connection>
  <rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>9</rasd:InstanceID>
  <rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>"""
DISK_DECLARATION = (
    '<Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{units}" '
    'ovf:diskId="{disk_id}" ovf:fileRef="file1"/>'
)


def envelope(
    items: str = CPU,
    disks: str = "",
    extra: str = "",
    systems: int = 1,
    prolog: str = "",
) -> bytes:
    system = f"""<VirtualSystem ovf:id="vm"><Info>A VM</Info><Name>vm</Name>
      <VirtualHardwareSection><Info>hardware</Info>{items}{extra}</VirtualHardwareSection>
    </VirtualSystem>"""
    return f"""<?xml version="1.0"?>{prolog}
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="vm-disk1.vmdk" ovf:id="file1" ovf:size="4096"/></References>
  <DiskSection><Info>disks</Info>{disks}</DiskSection>
  {system * systems}
</Envelope>""".encode()


def refused(data: bytes) -> BadInput:
    with pytest.raises(BadInput) as caught:
        parse_ovf(data)
    return caught.value


def test_reads_a_vmware_export_whole() -> None:
    hardware = parse_ovf((GOLDEN / "web01.ovf").read_bytes())
    assert hardware.described_by is DescribedBy.OVF
    assert (hardware.name, hardware.guest_os, hardware.machine) == (
        "web01",
        "ubuntu64Guest",
        "vmx-19",
    )
    assert (hardware.cpus, hardware.cores_per_socket, hardware.memory_bytes) == (4, 2, 8 << 30)
    assert hardware.firmware is Firmware.EFI
    assert hardware.secure_boot
    assert [(c.key, c.kind) for c in hardware.controllers] == [("3", "pvscsi"), ("4", "sata")]
    first, second = hardware.disks
    assert (first.label, first.capacity_bytes, first.populated_bytes) == (
        "Hard disk 1",
        16 << 30,
        3 << 30,
    )
    assert (first.file, first.file_bytes, first.controller, first.unit) == (
        "web01-disk1.vmdk",
        1310720,
        "3",
        0,
    )
    assert (second.file, second.capacity_bytes, second.populated_bytes, second.unit) == (
        "web01-disk2.vmdk",
        512 << 20,
        0,
        1,
    )
    assert hardware.bus_of(first) == "pvscsi"
    assert [(n.model, n.mac, n.network) for n in hardware.nics] == [
        ("vmxnet3", "00:50:56:ab:12:34", "VM Network"),
        ("e1000e", "00:50:56:ab:56:78", "backend-vlan20"),
    ]


@pytest.mark.parametrize(
    ("subtype", "kind"),
    [("lsilogic", "lsilogic"), ("lsilogicsas", "lsilogicsas"), ("VirtualSCSI", "pvscsi"),
     ("buslogic", "buslogic")],
)  # fmt: skip
def test_names_scsi_controllers_as_vmware_does(subtype: str, kind: str) -> None:
    hardware = parse_ovf(envelope(CPU + SCSI.format(kind=subtype)))
    assert [c.kind for c in hardware.controllers] == [kind]


@pytest.mark.parametrize(
    ("units", "quantity", "expected"),
    [("byte * 2^20", "4096", 4 << 30), ("byte*2^30", "2", 2 << 30), ("MegaBytes", "512", 512 << 20),
     ("byte * 10^6", "2000", 2 * 10**9), ("byte", str(1 << 30), 1 << 30)],
)  # fmt: skip
def test_memory_in_its_allocation_units(units: str, quantity: str, expected: int) -> None:
    hardware = parse_ovf(envelope(MEMORY.format(units=units, quantity=quantity)))
    assert hardware.memory_bytes == expected


def test_unknown_allocation_units_are_refused() -> None:
    error = refused(envelope(MEMORY.format(units="furlongs", quantity="1")))
    assert "unknown allocation units 'furlongs'" in error.message


def test_ovf_2_items_are_read_by_local_name() -> None:
    items = """<EthernetPortItem
        xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData">
      <epasd:Address>00:50:56:01:02:03</epasd:Address><epasd:Connection>lan</epasd:Connection>
      <epasd:InstanceID>9</epasd:InstanceID><epasd:ResourceSubType>VmxNet3</epasd:ResourceSubType>
      <epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>"""
    data = envelope(CPU + items).replace(b"envelope/1", b"envelope/2")
    hardware = parse_ovf(data)
    assert [(n.model, n.mac, n.network) for n in hardware.nics] == [
        ("vmxnet3", "00:50:56:01:02:03", "lan")
    ]


def test_no_firmware_key_leaves_the_firmware_unsaid() -> None:
    hardware = parse_ovf(envelope())
    assert hardware.firmware is None
    assert not hardware.secure_boot


def test_the_boot_order_section_names_the_boot_disk() -> None:
    disks = DISK_DECLARATION.format(capacity=1, units="byte * 2^30", disk_id="a")
    disks += DISK_DECLARATION.format(capacity=2, units="byte * 2^30", disk_id="b")
    items = CPU + SCSI.format(kind="lsilogic")
    items += DISK.format(unit=0, number=1, disk_id="a", instance=6)
    items += DISK.format(unit=1, number=2, disk_id="b", instance=7)
    boot = '<vmw:BootOrderSection vmw:instanceId="7" vmw:type="disk"><Info>boot</Info>'
    hardware = parse_ovf(envelope(items, disks, extra=boot + "</vmw:BootOrderSection>"))
    assert [d.boot_order for d in hardware.disks] == [None, 1]


BILLION_LAUGHS = """<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>"""


def test_entity_expansion_is_refused() -> None:
    data = envelope(prolog=BILLION_LAUGHS).replace(b"<Name>vm</Name>", b"<Name>&lol3;</Name>")
    error = refused(data)
    assert error.reason is Reason.INVALID_IMAGE
    assert "DTD or entities, which are refused" in error.message


def test_external_entities_are_refused() -> None:
    prolog = '<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    data = envelope(prolog=prolog).replace(b"<Name>vm</Name>", b"<Name>&x;</Name>")
    assert "refused" in refused(data).message


def test_an_oversized_descriptor_is_refused_before_parsing() -> None:
    error = refused(b" " * (OVF_MAX_BYTES + 1))
    assert f"more than the {OVF_MAX_BYTES} accepted" in error.message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<Envelope><unclosed></Envelope>", "not well-formed XML"),
        (b"<?xml version='1.0'?><Project/>", "root element is <Project>"),
        (envelope(systems=0), "has no VirtualSystem"),
    ],
)
def test_what_is_not_an_ovf_is_refused(data: bytes, words: str) -> None:
    assert words in refused(data).message


def test_several_virtual_machines_are_unsupported() -> None:
    error = refused(envelope(systems=2))
    assert error.reason is Reason.UNSUPPORTED
    assert "describes 2 virtual machines" in error.message


def test_a_disk_item_naming_an_undeclared_disk_is_refused() -> None:
    items = CPU + DISK.format(unit=0, number=1, disk_id="ghost", instance=6)
    error = refused(envelope(items))
    assert "Hard disk 1: HostResource 'ovf:/disk/ghost' names no disk" in error.message


def test_an_impossible_capacity_is_refused() -> None:
    disks = DISK_DECLARATION.format(capacity=1 << 40, units="byte * 2^30", disk_id="a")
    items = CPU + DISK.format(unit=0, number=1, disk_id="a", instance=6)
    assert "beyond any real disk" in refused(envelope(items, disks)).message


def test_a_malformed_mac_is_refused() -> None:
    error = refused(envelope(CPU + NIC.format(mac="00:50:56:zz:00:01", network="lan")))
    assert "Network adapter 1: '00:50:56:zz:00:01' is not a MAC address" in error.message


def test_a_non_number_is_refused() -> None:
    error = refused(envelope(MEMORY.format(units="byte * 2^20", quantity="lots")))
    assert "'lots' is not a number" in error.message


def test_more_disks_than_the_model_holds_are_refused() -> None:
    disks = DISK_DECLARATION.format(capacity=1, units="byte * 2^30", disk_id="a")
    items = CPU + "".join(
        DISK.format(unit=i, number=i, disk_id="a", instance=10 + i) for i in range(65)
    )
    error = refused(envelope(items, disks))
    assert "the OVF descriptor's disks" in error.message
