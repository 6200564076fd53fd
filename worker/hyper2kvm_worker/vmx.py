"""A VM's hardware from its `.vmx` configuration file.

Pure: text in, `Hardware` out. A `.vmx` is `key = "value"` lines; keys are matched without
regard to case, as VMware does, and the keys this module does not know are ignored. A line
that is not `key = "value"`, or a key given twice, is refused with its line number: a file
that says two things is not guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

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

VMX_MAX_BYTES = 1 << 20  # real files are a few KiB

_LINE = re.compile(
    r'^(?P<key>[A-Za-z0-9_.:\-]+)\s*=\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"#]*))\s*$'
)
_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")  # VMware writes `"` as |22 and `|` as |7C
_NUMBER = re.compile(r"^\d{1,19}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_DEVICE = re.compile(r"^(?P<bus>scsi|sata|nvme|ide)(?P<n>\d{1,3}):(?P<unit>\d{1,3})$")
# VMware numbers hard disks by device key: SCSI (2000s), IDE (3000s), SATA (16000s), NVMe.
_BUS_ORDER = {"scsi": 0, "ide": 1, "sata": 2, "nvme": 3}
_SCSI_KINDS = {"lsisas1068": "lsilogicsas", "pvscsi": "pvscsi", "buslogic": "buslogic"}
_DISK_TYPES = frozenset({"", "disk", "scsi-harddisk", "ata-harddisk", "plaindisk"})
_TRUE = frozenset({"true", "yes", "1"})


@dataclass(frozen=True)
class _Value:
    text: str
    line: int


def parse_vmx(text: str) -> Hardware:
    """The hardware `text` describes; BadInput names the line that is wrong."""
    if len(text.encode("utf-8", "surrogateescape")) > VMX_MAX_BYTES:
        raise BadInput(
            Reason.INVALID_IMAGE, f"the .vmx file is larger than the {VMX_MAX_BYTES} accepted"
        )
    config = _entries(text)
    try:
        return _hardware(config)
    except ValidationError as error:
        raise BadInput(Reason.INVALID_IMAGE, f"the .vmx file's {first_problem(error)}") from None


def _entries(text: str) -> dict[str, _Value]:
    config: dict[str, _Value] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f'.vmx line {number}: expected key = "value", found {line[:60]!r}',
            )
        key = match["key"].lower()
        if key in config:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f".vmx line {number}: {match['key']} is set again (first on line "
                f"{config[key].line}); which one applies is ambiguous",
            )
        value = match["quoted"] if match["quoted"] is not None else match["bare"]
        config[key] = _Value(_ESCAPE.sub(lambda m: chr(int(m[1], 16)), value), number)
    return config


def _hardware(config: dict[str, _Value]) -> Hardware:
    controllers = list(_controllers(config))
    firmware = _text(config, "firmware")
    return Hardware(
        described_by=DescribedBy.VMX,
        name=_text(config, "displayname"),
        cpus=_number(config, "numvcpus"),
        cores_per_socket=_number(config, "cpuid.corespersocket"),
        memory_bytes=_mib(config, "memsize"),
        # No `firmware` key is VMware's own default: BIOS.
        firmware=Firmware.EFI if (firmware or "").lower() == "efi" else Firmware.BIOS,
        secure_boot=_flag(config, "uefi.secureboot.enabled"),
        guest_os=_text(config, "guestos"),
        machine=f"vmx-{version}" if (version := _number(config, "virtualhw.version")) else None,
        controllers=controllers,
        disks=_boot_order(config, list(_disks(config, {c.key for c in controllers}))),
        nics=list(_nics(config)),
    )


def _controllers(config: dict[str, _Value]) -> Iterator[Controller]:
    # IDE buses 0 and 1 exist on every VM without a `present` key.
    for key, bus, kind in sorted(_controller_keys(config)):
        if kind == "ide" or _flag(config, f"{key}.present"):
            if kind == "scsi":
                dev = (_text(config, f"{key}.virtualdev") or "lsilogic").lower()
                kind = _SCSI_KINDS.get(dev, dev)
            shared = (_text(config, f"{key}.sharedbus") or "none").lower() != "none"
            yield Controller(key=key, kind=kind, bus=bus, shared=shared)


def _controller_keys(config: dict[str, _Value]) -> set[tuple[str, int, str]]:
    found = {("ide0", 0, "ide"), ("ide1", 1, "ide")}
    for key in config:
        match = re.match(r"^(scsi|sata|nvme)(\d{1,3})\.present$", key)
        if match:
            found.add((f"{match[1]}{match[2]}", int(match[2]), match[1]))
    return found


def _disks(config: dict[str, _Value], controllers: set[str]) -> Iterator[HardwareDisk]:
    devices = []
    for key in config:
        name, _, field = key.partition(".")
        match = _DEVICE.match(name)
        if match and field == "present" and _flag(config, key):
            devices.append((_BUS_ORDER[match["bus"]], int(match["n"]), int(match["unit"]), name))
    number = 0
    for *_, unit, device in sorted(devices):
        kind = (_text(config, f"{device}.devicetype") or "").lower()
        file = _text(config, f"{device}.filename")
        controller = device.split(":")[0]
        if kind not in _DISK_TYPES or not file or controller not in controllers:
            continue  # a CD-ROM, a passthrough device, or a disk on an absent controller
        number += 1
        yield HardwareDisk(
            label=f"Hard disk {number}",
            capacity_bytes=0,  # a .vmx does not say; the VMDK it names does
            controller=controller,
            unit=unit,
            file=file,
        )


def _boot_order(config: dict[str, _Value], disks: list[HardwareDisk]) -> list[HardwareDisk]:
    # Only the simple case: disks boot first and bios.hddOrder names the disk.
    order = [part.strip().lower() for part in (_text(config, "bios.bootorder") or "").split(",")]
    first = (_text(config, "bios.hddorder") or "").split(",")[0].strip().lower()
    if order[0] != "hdd" or not first:
        return disks
    return [
        disk.model_copy(update={"boot_order": 1})
        if f"{disk.controller}:{disk.unit}" == first
        else disk
        for disk in disks
    ]


def _nics(config: dict[str, _Value]) -> Iterator[HardwareNic]:
    slots = sorted(
        int(match[1])
        for key in config
        if (match := re.match(r"^ethernet(\d{1,3})\.present$", key)) and _flag(config, key)
    )
    for number, slot in enumerate(slots, start=1):
        key = f"ethernet{slot}"
        # A static address is the one VMware uses; otherwise the one it generated.
        static = (_text(config, f"{key}.addresstype") or "").lower() == "static"
        generated = f"{key}.generatedaddress"
        source = generated if not static and generated in config else f"{key}.address"
        mac = _text(config, source)
        if mac is not None and not _MAC.match(mac):
            raise BadInput(
                Reason.INVALID_IMAGE,
                f".vmx line {config[source].line}: {mac!r} is not a MAC address",
            )
        yield HardwareNic(
            label=f"Network adapter {number}",
            # No virtualDev is VMware's oldest default, the AMD PCnet adapter.
            model=(_text(config, f"{key}.virtualdev") or "vlance").lower(),
            mac=mac.lower() if mac else None,
            network=_text(config, f"{key}.networkname"),
        )


def _text(config: dict[str, _Value], key: str) -> str | None:
    value = config.get(key)
    return value.text.strip() or None if value is not None else None


def _flag(config: dict[str, _Value], key: str) -> bool:
    return (_text(config, key) or "").lower() in _TRUE


def _number(config: dict[str, _Value], key: str) -> int | None:
    text = _text(config, key)
    if text is None:
        return None
    if not _NUMBER.match(text):
        line = config[key].line
        raise BadInput(
            Reason.INVALID_IMAGE, f".vmx line {line}: {key} = {text[:40]!r} is not a number"
        )
    return int(text)


def _mib(config: dict[str, _Value], key: str) -> int | None:
    mib = _number(config, key)
    return None if mib is None else mib << 20
