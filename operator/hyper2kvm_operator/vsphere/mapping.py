"""A VM's facts as the worker's `Hardware`, and where each disk's bytes are to be read.

Pure: no I/O. The copy instructions name the flat extent layoutEx reported (the file that
holds the bytes), inside its datastore, with the datacenter path the datastore's `/folder`
URL needs; the worker reads it over HTTPS with a session cookie.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

import pydantic

from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import DiskFacts, VmFacts
from hyper2kvm_worker.hardware import (
    Controller,
    DescribedBy,
    Firmware,
    Hardware,
    HardwareDisk,
    HardwareNic,
    first_problem,
)

_DATASTORE_PATH = re.compile(r"^\[(?P<datastore>[^\]]+)\]\s*(?P<path>.+)$")


@dataclass(frozen=True)
class DiskCopy:
    """Where one disk's bytes are: GET https://HOST/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE."""

    label: str
    datacenter_path: str
    datastore: str
    path: str  # the flat extent inside the datastore, e.g. "web01/web01-flat.vmdk"
    capacity_bytes: int
    host: str | None  # the ESXi host the VM is registered on (for per-host limits)


def folder_url(server: str, copy: DiskCopy) -> str:
    """The HTTPS URL of the disk's flat extent on `server` ("host:port" of vCenter or ESXi)."""
    path = urllib.parse.quote(copy.path, safe="/")
    query = urllib.parse.urlencode({"dcPath": copy.datacenter_path, "dsName": copy.datastore})
    return f"https://{server}/folder/{path}?{query}"


def split_datastore_path(text: str) -> tuple[str, str]:
    """ "[ds1] dir/name.vmdk" -> ("ds1", "dir/name.vmdk")."""
    match = _DATASTORE_PATH.match(text.strip())
    if match is None:
        raise ValueError(f"not a datastore path: {text!r}")
    return match["datastore"], match["path"].strip()


def hardware(facts: VmFacts) -> Hardware:
    """The VM's hardware; VSphereError Unsupported when it exceeds the model's bounds (more
    than 64 disks, say)."""
    try:
        return _hardware(facts)
    except pydantic.ValidationError as exc:
        raise VSphereError(Reason.UNSUPPORTED, f"VM {facts.name}: {first_problem(exc)}") from None


def _hardware(facts: VmFacts) -> Hardware:
    boot = {key: order for order, key in enumerate(facts.boot_disk_keys)}
    return Hardware(
        described_by=DescribedBy.VSPHERE,
        name=facts.name or None,
        cpus=facts.cpus,
        cores_per_socket=facts.cores_per_socket,
        memory_bytes=facts.memory_mb * (1 << 20) if facts.memory_mb else None,
        firmware=_firmware(facts.firmware),
        secure_boot=facts.secure_boot,
        guest_os=facts.guest_id,
        machine=facts.hardware_version,
        uuid=facts.bios_uuid,
        controllers=[
            Controller(key=str(c.key), kind=c.kind, bus=c.bus, shared=c.sharing != "noSharing")
            for c in facts.controllers
        ],
        disks=[_disk(d, boot.get(d.key)) for d in facts.disks],
        nics=[
            HardwareNic(label=n.label, model=n.model, mac=n.mac, network=n.network)
            for n in facts.nics
        ],
    )


def copies(facts: VmFacts) -> list[DiskCopy]:
    """One copy instruction per disk, in the VM's device order. Call only on a VM the refusal
    checks passed: a disk without a flat extent raises ValueError here."""
    result = []
    for disk in facts.disks:
        if disk.extent is None:
            raise ValueError(f"{disk.label}: vSphere names no flat extent for it")
        datastore, path = split_datastore_path(disk.extent)
        result.append(
            DiskCopy(
                label=disk.label,
                datacenter_path=facts.datacenter_path,
                datastore=datastore,
                path=path,
                capacity_bytes=disk.capacity_bytes,
                host=facts.host,
            )
        )
    return result


def _firmware(value: str | None) -> Firmware | None:
    if value == "efi":
        return Firmware.EFI
    if value == "bios":
        return Firmware.BIOS
    return None


def _disk(disk: DiskFacts, boot_order: int | None) -> HardwareDisk:
    return HardwareDisk(
        label=disk.label,
        capacity_bytes=disk.capacity_bytes,
        controller=str(disk.controller_key) if disk.controller_key is not None else None,
        unit=disk.unit,
        file=disk.file_name,
        datastore=disk.datastore,
        boot_order=boot_order,
    )
