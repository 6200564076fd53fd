"""How a VM found in vSphere appears in a MigrationJob: its disks' names in the job, the
file each goes to, and the status that records the VM before any copy.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.vsphere import refusals
from hyper2kvm_operator.vsphere.facts import VmFacts
from hyper2kvm_operator.vsphere.power import POWERED_OFF, How, Stopped
from hyper2kvm_worker.hardware import (
    Controller,
    DescribedBy,
    Firmware,
    Hardware,
    HardwareDisk,
    HardwareNic,
)

MESSAGE_LIMIT = 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_VM_FILE_NAME = 80  # vSphere's own limit on a VM's name


def disk_names(facts: VmFacts) -> list[str]:
    """disk-1, disk-2, ... in the VM's device order: short, stable, and valid Pod-name parts."""
    return [f"disk-{index}" for index in range(1, len(facts.disks) + 1)]


def safe_file_name(vm_name: str) -> str:
    """The VM's name as one file name: no slashes, dots at the start, or spaces (a VM may be
    called "web 01/prod"); never empty."""
    safe = _UNSAFE.sub("-", vm_name).strip("-.")[:MAX_VM_FILE_NAME]
    return safe or "vm"


def output_path(rule: str, vm_name: str, disk: str, fmt: str) -> str:
    """The output file of `disk` as the job's naming rule says ({vm}, {disk}, {format})."""
    return (
        rule.replace("{vm}", safe_file_name(vm_name))
        .replace("{disk}", disk)
        .replace("{format}", fmt)
    )


def vm_status(provider: str, facts: VmFacts) -> dict[str, Any]:
    """`status.vm`: the VM as vSphere describes it (the API's SourceVm)."""
    names = dict(zip((d.key for d in facts.disks), disk_names(facts), strict=True))
    boot = {key: order for order, key in enumerate(facts.boot_disk_keys)}
    found: dict[str, Any] = {
        "provider": provider,
        "moref": facts.moref,
        "name": facts.name,
        "datacenter": facts.datacenter_path,
        "host": facts.host,
        "biosUuid": facts.bios_uuid,
        "instanceUuid": facts.instance_uuid,
        "powerState": facts.power_state,
        "cpus": facts.cpus,
        "coresPerSocket": facts.cores_per_socket,
        "memoryMiB": facts.memory_mb,
        "firmware": facts.firmware,
        "secureBoot": facts.secure_boot,
        "guestId": facts.guest_id,
        "hardwareVersion": facts.hardware_version,
        "controllers": [
            {"key": c.key, "kind": c.kind, "bus": c.bus, "sharing": c.sharing}
            for c in facts.controllers
        ],
        "disks": [
            _without_none(
                {
                    "name": names[d.key],
                    "label": d.label,
                    "capacityBytes": d.capacity_bytes,
                    "datastore": d.datastore,
                    "file": d.file_name,
                    "extent": d.extent,
                    "controller": d.controller_key,
                    "unit": d.unit,
                    "mode": d.disk_mode,
                    "bootOrder": boot.get(d.key),
                }
            )
            for d in facts.disks
        ],
        "nics": [
            _without_none({"label": n.label, "model": n.model, "mac": n.mac, "network": n.network})
            for n in facts.nics
        ],
    }
    return _without_none(found)


def problem(facts: VmFacts, may_stop: bool, max_disks: int) -> tuple[str, str] | None:
    """(reason, message) when this VM cannot be migrated as the job asks; None when it can.
    Every refusal is named in the message; the reason is the first one's kind."""
    found = refusals.check(facts)
    if found:
        text = f"VM {facts.name} cannot be migrated: " + "; ".join(r.message for r in found)
        return str(found[0].kind), text[:MESSAGE_LIMIT]
    if not facts.disks:
        return cond.NO_DISKS, f"VM {facts.name} has no disks"
    if len(facts.disks) > max_disks:
        return (
            cond.POLICY_VIOLATION,
            f"VM {facts.name} has {len(facts.disks)} disks; at most {max_disks} per job "
            "(policy.maxDisks)",
        )
    if facts.power_state != POWERED_OFF and not may_stop:
        return (
            cond.POWERED_ON,
            f"VM {facts.name} is {facts.power_state}: its disks change while it runs; stop it, "
            "or set source.vsphere.powerOff to shutdown or force",
        )
    return None


def stopped_status(stopped: Stopped, now: str) -> dict[str, Any]:
    """`status.vm.stopped`: how the operator stopped the VM, and when."""
    return _without_none({"how": str(stopped.how), "time": now, "note": stopped.note})


def stopped_message(vm_name: str, stopped: Stopped) -> str:
    how = {
        How.ALREADY_OFF: "was already powered off",
        How.GUEST_SHUTDOWN: "was shut down by its guest",
        How.POWER_OFF: "was powered off",
    }[stopped.how]
    note = f" ({stopped.note})" if stopped.note else ""
    return f"VM {vm_name} {how}{note}"


def hardware_of(vm: Mapping[str, Any]) -> Hardware:
    """The VM's hardware as the status recorded it at admission (`vm_status`), for the
    VirtualMachine built once its disks are migrated."""
    memory = vm.get("memoryMiB")
    firmware = vm.get("firmware")
    return Hardware(
        described_by=DescribedBy.VSPHERE,
        name=vm.get("name"),
        cpus=vm.get("cpus"),
        cores_per_socket=vm.get("coresPerSocket"),
        memory_bytes=int(memory) << 20 if memory else None,
        firmware=Firmware(firmware) if firmware in ("bios", "efi") else None,
        secure_boot=bool(vm.get("secureBoot")),
        guest_os=vm.get("guestId"),
        machine=vm.get("hardwareVersion"),
        uuid=vm.get("biosUuid"),
        controllers=[
            Controller(
                key=str(c["key"]),
                kind=c["kind"],
                bus=c.get("bus", 0),
                shared=c.get("sharing", "noSharing") != "noSharing",
            )
            for c in vm.get("controllers") or []
        ],
        disks=[
            HardwareDisk(
                label=d["label"],
                capacity_bytes=d["capacityBytes"],
                controller=str(d["controller"]) if d.get("controller") is not None else None,
                unit=d.get("unit"),
                file=d.get("file"),
                datastore=d.get("datastore"),
                boot_order=d.get("bootOrder"),
            )
            for d in vm.get("disks") or []
        ],
        nics=[
            HardwareNic(
                label=n["label"], model=n["model"], mac=n.get("mac"), network=n.get("network")
            )
            for n in vm.get("nics") or []
        ],
    )


def same_disks(before: list[dict[str, Any]], facts: VmFacts) -> str:
    """Why the VM's disks now differ from those recorded at admission, or "" when they do not:
    an attempt copies the disks the job was admitted with, or none."""
    now = [(d.label, d.capacity_bytes, d.extent) for d in facts.disks]
    then = [(d.get("label"), d.get("capacityBytes"), d.get("extent")) for d in before]
    if now == then:
        return ""
    if len(now) != len(then):
        return f"the VM had {len(then)} disks when the job was admitted and has {len(now)} now"
    for (label, size, extent), (_, old_size, old_extent) in zip(now, then, strict=True):
        if size != old_size:
            return f"{label} is {size} bytes now, {old_size} when the job was admitted"
        if extent != old_extent:
            return f"{label} is read from {extent} now, from {old_extent} when admitted"
    return "the VM's disks are not those it had when the job was admitted"


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
