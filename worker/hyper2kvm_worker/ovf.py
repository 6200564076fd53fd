"""A VM's hardware from an OVF descriptor (DMTF OVF 1.x and 2.x, as VMware exports it).

Pure: descriptor bytes in, `Hardware` out. The descriptor comes from whoever made the OVA,
so it is parsed by defusedxml with DTDs, entities and external references refused (a
billion-laughs descriptor is bad input, not a hung worker), and it is bounded in size.
Elements and attributes are matched by local name: VMware's OVF 1.x `rasd:` items and
OVF 2.x `epasd:`/`sasd:` items read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from pydantic import ValidationError

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import (
    Controller,
    DescribedBy,
    Firmware,
    Hardware,
    HardwareDisk,
    HardwareNic,
    first_problem,
)

OVF_MAX_BYTES = 4 << 20  # VMware's descriptors are a few KiB; 4 MiB is far beyond any real one

# CIM ResourceType values (DMTF CIM_ResourceAllocationSettingData)
_CPU, _MEMORY, _IDE, _SCSI, _ETHERNET, _DISK, _SATA = 3, 4, 5, 6, 10, 17, 20
_SCSI_KINDS = {
    "lsilogic": "lsilogic",
    "lsilogicsas": "lsilogicsas",
    "virtualscsi": "pvscsi",
    "buslogic": "buslogic",
}
_SATA_KINDS = {"vmware.sata.ahci": "sata", "ahci": "sata", "vmware.nvme.controller": "nvme"}
_SECURE_BOOT_KEYS = frozenset({"bootoptions.efisecurebootenabled", "uefi.secureboot.enabled"})
_UNITS = re.compile(r"^byte[s]?(?:\s*\*\s*(?P<base>\d+)\s*\^\s*(?P<exp>\d+))?$", re.IGNORECASE)
_NAMED_UNITS = {"kilobytes": 1 << 10, "megabytes": 1 << 20, "gigabytes": 1 << 30}
_NUMBER = re.compile(r"^\d{1,19}$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.IGNORECASE)
_MAX_BYTES = 1 << 62


def parse_ovf(data: bytes) -> Hardware:
    """The hardware of the one VirtualSystem `data` describes; BadInput says what is wrong."""
    root = _envelope(data)
    system = _only_system(root)
    section = _first(system, "VirtualHardwareSection")
    if section is None:
        raise BadInput(Reason.INVALID_IMAGE, "the OVF VirtualSystem has no VirtualHardwareSection")
    disks = _disk_section(root)
    try:
        return _hardware(system, section, disks)
    except ValidationError as error:
        raise BadInput(
            Reason.INVALID_IMAGE, f"the OVF descriptor's {first_problem(error)}"
        ) from None


@dataclass(frozen=True)
class DeclaredFile:
    """What an OVF's References (and DiskSection, for a disk's file) say of one file."""

    href: str
    size: int | None  # ovf:size, the file's bytes in the OVA
    capacity: int | None = None  # the disk it holds, in bytes, when it holds one


def declared_files(data: bytes) -> dict[str, DeclaredFile]:
    """The files an OVF descriptor declares, by name: only References and DiskSection are
    read, so that an OVA is checked against them whatever else its descriptor holds."""
    root = _envelope(data)
    files = {href: DeclaredFile(href, size) for href, size in _references(root).values() if href}
    for disk in _disk_section(root).values():
        if disk.href:
            files[disk.href] = DeclaredFile(disk.href, disk.size, disk.capacity)
    return files


def _envelope(data: bytes) -> Element:
    if len(data) > OVF_MAX_BYTES:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"the OVF descriptor is {len(data)} bytes, more than the {OVF_MAX_BYTES} accepted",
        )
    root = _parse_xml(data)
    if _local(root.tag) != "Envelope":
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"not an OVF descriptor: its root element is <{_local(root.tag)}>, not <Envelope>",
        )
    return root


def _parse_xml(data: bytes) -> Element:
    try:
        # No OVF needs a DTD: refusing any is simpler than reasoning about which are safe.
        return SafeElementTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as error:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"the OVF descriptor declares a DTD or entities, which are refused ({error})",
        ) from None
    except ParseError as error:
        raise BadInput(
            Reason.INVALID_IMAGE, f"the OVF descriptor is not well-formed XML: {error}"
        ) from None


def _only_system(root: Element) -> Element:
    systems = [element for element in root.iter() if _local(element.tag) == "VirtualSystem"]
    collections = [e for e in root.iter() if _local(e.tag) == "VirtualSystemCollection"]
    if collections or len(systems) > 1:
        raise BadInput(
            Reason.UNSUPPORTED,
            f"the OVF describes {len(systems)} virtual machines; one VM per job is supported",
        )
    if not systems:
        raise BadInput(Reason.INVALID_IMAGE, "the OVF descriptor has no VirtualSystem")
    return systems[0]


@dataclass(frozen=True)
class _DeclaredDisk:
    """A DiskSection entry joined with its References file."""

    capacity: int
    populated: int | None
    href: str | None
    size: int | None


def _references(root: Element) -> dict[str, tuple[str | None, int | None]]:
    """References: file id -> (href, ovf:size)."""
    files: dict[str, tuple[str | None, int | None]] = {}
    for element in _children_named(root, "References", "File"):
        file_id = _attr(element, "id")
        if file_id is not None:
            declared_size = _number(_attr(element, "size"), f"file {file_id} size")
            files[file_id] = (_attr(element, "href"), declared_size)
    return files


def _disk_section(root: Element) -> dict[str, _DeclaredDisk]:
    files = _references(root)
    declared: dict[str, _DeclaredDisk] = {}
    for element in _children_named(root, "DiskSection", "Disk"):
        disk_id = _attr(element, "diskId")
        if disk_id is None:
            raise BadInput(Reason.INVALID_IMAGE, "an OVF DiskSection Disk has no ovf:diskId")
        units = _multiplier(_attr(element, "capacityAllocationUnits"), 1, f"disk {disk_id}")
        capacity = _number(_attr(element, "capacity"), f"disk {disk_id} capacity")
        if capacity is None:
            raise BadInput(Reason.INVALID_IMAGE, f"OVF disk {disk_id} declares no ovf:capacity")
        file_ref = _attr(element, "fileRef")
        if file_ref and file_ref not in files:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"OVF disk {disk_id} refers to file {file_ref!r}, which References lacks",
            )
        href, size = files[file_ref] if file_ref else (None, None)
        populated = _number(_attr(element, "populatedSize"), f"disk {disk_id} populatedSize")
        declared[disk_id] = _DeclaredDisk(
            _bounded(capacity * units, f"disk {disk_id} capacity"), populated, href, size
        )
    return declared


def _hardware(system: Element, section: Element, declared: dict[str, _DeclaredDisk]) -> Hardware:
    cpus = cores = memory = None
    controllers: list[Controller] = []
    disks: list[HardwareDisk] = []
    disk_items: dict[str, int] = {}  # InstanceID -> index in disks, for the boot order
    nics: list[HardwareNic] = []
    for item in _items(section):
        fields = _fields(item)
        kind = _number(fields.get("ResourceType"), "ResourceType")
        label = fields.get("ElementName") or fields.get("Caption") or ""
        instance = fields.get("InstanceID") or ""
        if kind == _CPU:
            cpus = _number(fields.get("VirtualQuantity"), f"{label} VirtualQuantity")
            per_socket = _first(item, "CoresPerSocket")
            if per_socket is not None:
                cores = _number(per_socket.text, f"{label} CoresPerSocket")
        elif kind == _MEMORY:
            units = _multiplier(fields.get("AllocationUnits"), 1 << 20, label)
            quantity = _number(fields.get("VirtualQuantity"), f"{label} VirtualQuantity")
            memory = None if quantity is None else _bounded(quantity * units, label)
        elif kind in (_IDE, _SCSI, _SATA):
            controllers.append(_controller(kind, instance, fields))
        elif kind == _DISK:
            disk_items[instance] = len(disks)
            disks.append(_disk(label or f"Hard disk {len(disks) + 1}", fields, declared))
        elif kind == _ETHERNET:
            nics.append(_nic(label or f"Network adapter {len(nics) + 1}", fields))
    firmware, secure_boot = _firmware(section)
    return Hardware(
        described_by=DescribedBy.OVF,
        name=_text(_first(system, "Name")) or _attr(system, "id"),
        cpus=cpus,
        cores_per_socket=cores,
        memory_bytes=memory,
        firmware=firmware,
        secure_boot=secure_boot,
        guest_os=_guest_os(system),
        machine=_text(_first(_first(section, "System"), "VirtualSystemType")),
        controllers=controllers,
        disks=_with_boot_order(section, disks, disk_items),
        nics=nics,
    )


def _controller(kind: int, instance: str, fields: dict[str, str]) -> Controller:
    subtype = (fields.get("ResourceSubType") or "").strip().lower()
    if kind == _IDE:
        name = "ide"
    elif kind == _SCSI:
        name = _SCSI_KINDS.get(subtype, subtype or "scsi")
    else:
        name = _SATA_KINDS.get(subtype, "sata")
    bus = _number(fields.get("Address"), "controller Address") or 0
    return Controller(key=instance, kind=name, bus=bus)


def _disk(label: str, fields: dict[str, str], declared: dict[str, _DeclaredDisk]) -> HardwareDisk:
    resource = (fields.get("HostResource") or "").strip()
    disk_id = resource.removeprefix("ovf:").removeprefix("/disk/")
    if not resource.startswith(("ovf:/disk/", "/disk/")) or disk_id not in declared:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{label}: HostResource {resource!r} names no disk of the OVF DiskSection",
        )
    disk = declared[disk_id]
    return HardwareDisk(
        label=label,
        capacity_bytes=disk.capacity,
        controller=fields.get("Parent"),
        unit=_number(fields.get("AddressOnParent"), f"{label} AddressOnParent"),
        file=disk.href,
        populated_bytes=disk.populated,
        file_bytes=disk.size,
    )


def _nic(label: str, fields: dict[str, str]) -> HardwareNic:
    mac = (fields.get("Address") or "").strip()
    if mac and not _MAC.match(mac):
        raise BadInput(Reason.INVALID_IMAGE, f"{label}: {mac!r} is not a MAC address")
    return HardwareNic(
        label=label,
        model=(fields.get("ResourceSubType") or "unknown").strip().lower(),
        mac=mac.replace("-", ":").lower() or None,
        network=(fields.get("Connection") or "").strip() or None,
    )


def _firmware(section: Element) -> tuple[Firmware | None, bool]:
    firmware: Firmware | None = None
    secure_boot = False
    for element in section:
        if _local(element.tag) not in ("Config", "ExtraConfig"):
            continue
        key = (_attr(element, "key") or "").lower()
        value = (_attr(element, "value") or "").strip().lower()
        if key == "firmware":
            firmware = Firmware.EFI if value == "efi" else Firmware.BIOS
        elif key in _SECURE_BOOT_KEYS:
            secure_boot = value == "true"
    return firmware, secure_boot


def _with_boot_order(
    section: Element, disks: list[HardwareDisk], items: dict[str, int]
) -> list[HardwareDisk]:
    # VMware writes one BootOrderSection per bootable device, first to boot first.
    order = [
        _attr(element, "instanceId")
        for element in section.iter()
        if _local(element.tag) == "BootOrderSection" and _attr(element, "type") == "disk"
    ]
    ranked = [items[instance] for instance in order if instance in items]
    return [
        disk.model_copy(update={"boot_order": ranked.index(i) + 1}) if i in ranked else disk
        for i, disk in enumerate(disks)
    ]


def _guest_os(system: Element) -> str | None:
    section = _first(system, "OperatingSystemSection")
    if section is None:
        return None
    return _attr(section, "osType") or _text(_first(section, "Description"))


def _items(section: Element) -> Iterator[Element]:
    for element in section:
        if _local(element.tag) in ("Item", "EthernetPortItem", "StorageItem"):
            yield element


def _fields(item: Element) -> dict[str, str]:
    """An item's child elements by local name (the first of each), text stripped."""
    fields: dict[str, str] = {}
    for child in item:
        fields.setdefault(_local(child.tag), (child.text or "").strip())
    return fields


def _multiplier(units: str | None, default: int, what: str) -> int:
    if units is None or not units.strip():
        return default
    text = units.strip()
    if text.lower() in _NAMED_UNITS:
        return _NAMED_UNITS[text.lower()]
    match = _UNITS.match(text)
    if match is None:
        raise BadInput(Reason.INVALID_IMAGE, f"{what}: unknown allocation units {text!r}")
    if match["base"] is None:
        return 1
    base, exponent = int(match["base"]), int(match["exp"])
    if base not in (2, 10) or exponent > 60:
        raise BadInput(Reason.INVALID_IMAGE, f"{what}: allocation units {text!r} out of range")
    return int(base**exponent)


def _number(text: str | None, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    if not _NUMBER.match(text.strip()):
        raise BadInput(Reason.INVALID_IMAGE, f"{what}: {text.strip()[:40]!r} is not a number")
    return int(text)


def _bounded(value: int, what: str) -> int:
    if value > _MAX_BYTES:
        raise BadInput(Reason.INVALID_IMAGE, f"{what}: {value} bytes is beyond any real disk")
    return value


def _children_named(root: Element, section: str, child: str) -> Iterator[Element]:
    for element in root:
        if _local(element.tag) == section:
            yield from (e for e in element if _local(e.tag) == child)


def _first(parent: Element | None, name: str) -> Element | None:
    if parent is None:
        return None
    return next((child for child in parent if _local(child.tag) == name), None)


def _attr(element: Element, name: str) -> str | None:
    """An attribute by local name, whatever its namespace (ovf:, vmw:, or none)."""
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _text(element: Element | None) -> str | None:
    return (element.text or "").strip() or None if element is not None else None


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]
