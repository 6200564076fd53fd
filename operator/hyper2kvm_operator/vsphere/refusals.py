"""VMs this migration refuses, and why, disk by disk. Pure: no I/O.

Each refusal names the disk (or the snapshot) so that a person knows what to change on the
VMware side: remove the snapshot, make the disk persistent, and so on. Reading the flat
extent of such a VM would copy the wrong bytes (a snapshot's base without its delta), no
bytes at all (a raw LUN behind a mapping file), bytes nobody can read (encrypted), or bytes
another VM is still writing (a shared disk).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import ControllerFacts, DiskFacts, VmFacts

# Disk modes whose writes are thrown away: the file is not what the guest sees.
_DISCARDING_MODES = frozenset({"independent_nonpersistent", "nonpersistent", "undoable"})


class Kind(enum.StrEnum):
    SNAPSHOT = "Snapshot"
    RAW_DEVICE_MAPPING = "RawDeviceMapping"
    NONPERSISTENT = "NonpersistentDisk"
    ENCRYPTED = "Encrypted"
    SHARED = "SharedDisk"
    DELTA = "DeltaDisk"
    UNSUPPORTED_BACKING = "UnsupportedBacking"
    NO_EXTENT = "NoFlatExtent"
    TEMPLATE = "Template"


@dataclass(frozen=True)
class Refusal:
    kind: Kind
    subject: str  # the disk's label, the snapshot's name, or the VM's
    message: str


def check(facts: VmFacts) -> list[Refusal]:
    """Everything that stops this VM from being migrated; empty when nothing does."""
    refusals: list[Refusal] = []
    if facts.template:
        refusals.append(Refusal(Kind.TEMPLATE, facts.name, f"{facts.name} is a template"))
    if facts.encrypted:
        refusals.append(
            Refusal(
                Kind.ENCRYPTED, facts.name, f"{facts.name} is an encrypted VM: decrypt it first"
            )
        )
    for name in facts.snapshots:
        refusals.append(
            Refusal(
                Kind.SNAPSHOT,
                name,
                f"snapshot {name!r}: delete or consolidate the VM's snapshots first",
            )
        )
    controllers = {c.key: c for c in facts.controllers}
    for disk in facts.disks:
        refusals.extend(
            _disk(disk, controllers.get(disk.controller_key or -1), bool(facts.snapshots))
        )
    return refusals


def refuse(facts: VmFacts) -> None:
    """Raise VSphereError(Unsupported) listing every refusal, if there is any."""
    refusals = check(facts)
    if refusals:
        raise VSphereError(
            Reason.UNSUPPORTED,
            f"VM {facts.name} cannot be migrated: " + "; ".join(r.message for r in refusals),
        )


def _disk(
    disk: DiskFacts, controller: ControllerFacts | None, has_snapshots: bool
) -> list[Refusal]:
    label = disk.label
    found: list[Refusal] = []

    def refuse_as(kind: Kind, why: str) -> None:
        found.append(Refusal(kind, label, f"{label}: {why}"))

    if disk.backing in ("rdm", "rawdisk"):
        mode = f" ({disk.rdm_mode})" if disk.rdm_mode else ""
        refuse_as(
            Kind.RAW_DEVICE_MAPPING,
            f"a raw device mapping{mode}: its bytes are on a LUN, not in a datastore file",
        )
    elif disk.backing != "flat" and not disk.has_parent:
        refuse_as(Kind.UNSUPPORTED_BACKING, f"a {disk.backing} disk: only flat disks are read")
    if disk.disk_mode in _DISCARDING_MODES:
        refuse_as(
            Kind.NONPERSISTENT,
            f"disk mode {disk.disk_mode}: the guest's writes are not in the file",
        )
    if disk.encrypted:
        refuse_as(Kind.ENCRYPTED, "encrypted: decrypt it first")
    if disk.sharing == "sharingMultiWriter":
        refuse_as(Kind.SHARED, "shared with other VMs (multi-writer)")
    if controller is not None and controller.sharing != "noSharing":
        refuse_as(Kind.SHARED, f"on a controller with SCSI bus sharing ({controller.sharing})")
    # A snapshot's delta is refused as the snapshot, by name; without one it is a linked clone.
    if (disk.has_parent or disk.chain_length > 1) and not has_snapshots:
        refuse_as(Kind.DELTA, "a delta disk over a parent (a linked clone): consolidate it first")
    if not found and disk.extent is None:
        refuse_as(Kind.NO_EXTENT, "vSphere names no flat extent file for it")
    return found
