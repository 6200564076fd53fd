"""A VM as vSphere describes it, reduced to plain data: what the mapping and the refusal
checks read.

`vm_facts()` turns the property values the inventory read (pyVmomi data objects, keyed by
property path) into these dataclasses. Pure: no I/O, so both the conversion and everything
that reads the result are tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

# Property paths read from a VirtualMachine, each explicit: whole `runtime`, `summary` or
# `config` objects are never fetched (pyVmomi 9 fails to read some of them from vcsim 0.53
# and later, govmomi#4084; and they are large).
VM_PATHS = (
    "name",
    "parent",
    "parentVApp",
    "config.hardware.numCPU",
    "config.hardware.numCoresPerSocket",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.firmware",
    "config.bootOptions.efiSecureBootEnabled",
    "config.bootOptions.bootOrder",
    "config.guestId",
    "config.version",
    "config.uuid",
    "config.instanceUuid",
    "config.keyId",
    "config.template",
    "layoutEx.disk",
    "layoutEx.file",
    "snapshot.rootSnapshotList",
    "runtime.powerState",
    "runtime.host",
    "network",
)

_CONTROLLER_KINDS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.ParaVirtualSCSIController, "pvscsi"),
    (vim.vm.device.VirtualLsiLogicSASController, "lsilogic-sas"),
    (vim.vm.device.VirtualLsiLogicController, "lsilogic"),
    (vim.vm.device.VirtualBusLogicController, "buslogic"),
    (vim.vm.device.VirtualAHCIController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
    (vim.vm.device.VirtualIDEController, "ide"),
)
_NIC_MODELS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualVmxnet3, "vmxnet3"),
    (vim.vm.device.VirtualVmxnet2, "vmxnet2"),
    (vim.vm.device.VirtualVmxnet, "vmxnet"),
    (vim.vm.device.VirtualE1000e, "e1000e"),
    (vim.vm.device.VirtualE1000, "e1000"),
    (vim.vm.device.VirtualPCNet32, "pcnet32"),
    (vim.vm.device.VirtualSriovEthernetCard, "sriov"),
)
_DISK_BACKINGS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualDisk.FlatVer2BackingInfo, "flat"),
    (vim.vm.device.VirtualDisk.FlatVer1BackingInfo, "flat"),
    (vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo, "rdm"),
    (vim.vm.device.VirtualDisk.SeSparseBackingInfo, "sesparse"),
    (vim.vm.device.VirtualDisk.SparseVer2BackingInfo, "sparse"),
    (vim.vm.device.VirtualDisk.SparseVer1BackingInfo, "sparse"),
    (vim.vm.device.VirtualDisk.RawDiskVer2BackingInfo, "rawdisk"),
    (vim.vm.device.VirtualDisk.PartitionedRawDiskVer2BackingInfo, "rawdisk"),
)


@dataclass(frozen=True)
class ControllerFacts:
    key: int
    kind: str  # pvscsi, lsilogic, lsilogic-sas, buslogic, sata, nvme, ide, or the type's name
    bus: int
    sharing: str = "noSharing"  # SCSI bus sharing: noSharing, virtualSharing, physicalSharing


@dataclass(frozen=True)
class DiskFacts:
    key: int
    label: str
    capacity_bytes: int
    controller_key: int | None
    unit: int | None
    backing: str  # flat, rdm, sesparse, sparse, rawdisk, or the backing type's name
    file_name: str | None  # the descriptor, "[ds] dir/name.vmdk"
    datastore: str | None  # the backing's datastore, by name
    disk_mode: str | None  # persistent, independent_persistent, independent_nonpersistent, ...
    sharing: str | None  # sharingNone, sharingMultiWriter
    encrypted: bool  # the backing has a key
    has_parent: bool  # a delta disk over a parent (a snapshot's, or a linked clone's)
    rdm_mode: str | None = None  # physicalMode, virtualMode
    chain_length: int = 0  # units in layoutEx's chain for this disk
    extent: str | None = None  # the flat extent file, "[ds] dir/name-flat.vmdk", from layoutEx


@dataclass(frozen=True)
class NicFacts:
    key: int
    label: str
    model: str
    mac: str | None
    network: str | None


@dataclass(frozen=True)
class VmFacts:
    moref: str
    name: str
    datacenter_path: str  # the datacenter's inventory path, e.g. "DC0" or "Folder/DC0"
    host: str | None  # the ESXi host it is registered on, by name
    bios_uuid: str | None
    instance_uuid: str | None
    cpus: int | None
    cores_per_socket: int | None
    memory_mb: int | None
    firmware: str | None  # bios, efi
    secure_boot: bool
    guest_id: str | None
    hardware_version: str | None  # vmx-19
    power_state: str | None  # poweredOn, poweredOff, suspended
    template: bool
    encrypted: bool  # the VM's own configuration has a key (an encrypted VM)
    controllers: tuple[ControllerFacts, ...] = ()
    disks: tuple[DiskFacts, ...] = ()
    nics: tuple[NicFacts, ...] = ()
    snapshots: tuple[str, ...] = ()  # every snapshot's name, the tree walked depth first
    boot_disk_keys: tuple[int, ...] = field(default=())  # disks in boot order, if set


def vm_facts(
    moref: str,
    props: Mapping[str, Any],
    *,
    datacenter_path: str,
    names: Mapping[str, str],
    portgroups: Mapping[str, str] | None = None,
) -> VmFacts:
    """The facts of one VM from its properties (`VM_PATHS`); `names` maps managed object
    ids (hosts, datastores, networks) to names, `portgroups` distributed port group keys to
    names."""
    devices = list(props.get("config.hardware.device") or [])
    files = {f.key: f for f in props.get("layoutEx.file") or []}
    chains = {d.key: list(d.chain or []) for d in props.get("layoutEx.disk") or []}
    boot = props.get("config.bootOptions.bootOrder") or []
    host = props.get("runtime.host")
    return VmFacts(
        moref=moref,
        name=entity_name(str(props.get("name") or "")),
        datacenter_path=datacenter_path,
        host=names.get(host._moId) if host is not None else None,
        bios_uuid=props.get("config.uuid"),
        instance_uuid=props.get("config.instanceUuid"),
        cpus=props.get("config.hardware.numCPU") or None,
        cores_per_socket=props.get("config.hardware.numCoresPerSocket") or None,
        memory_mb=props.get("config.hardware.memoryMB") or None,
        firmware=props.get("config.firmware"),
        secure_boot=bool(props.get("config.bootOptions.efiSecureBootEnabled")),
        guest_id=props.get("config.guestId"),
        hardware_version=props.get("config.version"),
        power_state=_str_or_none(props.get("runtime.powerState")),
        template=bool(props.get("config.template")),
        encrypted=props.get("config.keyId") is not None,
        controllers=tuple(_controller(d) for d in devices if _holds_disks(d)),
        disks=tuple(
            _disk(d, names, chains.get(d.key, []), files)
            for d in devices
            if isinstance(d, vim.vm.device.VirtualDisk)
        ),
        nics=tuple(
            _nic(d, names, portgroups or {})
            for d in devices
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ),
        snapshots=tuple(_snapshot_names(props.get("snapshot.rootSnapshotList") or [])),
        boot_disk_keys=tuple(
            b.deviceKey for b in boot if isinstance(b, vim.vm.BootOptions.BootableDiskDevice)
        ),
    )


def entity_name(raw: str) -> str:
    """An inventory name as a person wrote it: vSphere escapes %, / and \\ in names."""
    for escaped, plain in (("%2f", "/"), ("%2F", "/"), ("%5c", "\\"), ("%5C", "\\")):
        raw = raw.replace(escaped, plain)
    return raw.replace("%25", "%")


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _holds_disks(device: Any) -> bool:
    # Of the controllers, PCI, PS/2, SIO, USB and the like hold no disks.
    return isinstance(
        device,
        vim.vm.device.VirtualSCSIController
        | vim.vm.device.VirtualIDEController
        | vim.vm.device.VirtualSATAController
        | vim.vm.device.VirtualNVMEController,
    )


def _label(device: Any) -> str:
    info = device.deviceInfo
    return str(info.label) if info is not None and info.label else f"device {device.key}"


def _kind(device: Any, table: Iterable[tuple[type, str]]) -> str:
    for cls, name in table:
        if isinstance(device, cls):
            return name
    return type(device).__name__.rsplit(".", 1)[-1]


def _controller(device: Any) -> ControllerFacts:
    sharing = getattr(device, "sharedBus", None)
    return ControllerFacts(
        key=device.key,
        kind=_kind(device, _CONTROLLER_KINDS),
        bus=device.busNumber or 0,
        sharing=str(sharing) if sharing else "noSharing",
    )


def _disk(
    device: Any, names: Mapping[str, str], chain: list[Any], files: Mapping[int, Any]
) -> DiskFacts:
    backing = device.backing
    datastore = getattr(backing, "datastore", None)
    capacity = device.capacityInBytes or (device.capacityInKB or 0) * 1024
    return DiskFacts(
        key=device.key,
        label=_label(device),
        capacity_bytes=int(capacity),
        controller_key=device.controllerKey,
        unit=device.unitNumber,
        backing=_kind(backing, _DISK_BACKINGS),
        file_name=getattr(backing, "fileName", None) or None,
        datastore=names.get(datastore._moId) if datastore is not None else None,
        disk_mode=getattr(backing, "diskMode", None),
        sharing=getattr(backing, "sharing", None),
        encrypted=getattr(backing, "keyId", None) is not None,
        has_parent=getattr(backing, "parent", None) is not None,
        rdm_mode=getattr(backing, "compatibilityMode", None),
        chain_length=len(chain),
        extent=_extent(chain, files),
    )


def _extent(chain: list[Any], files: Mapping[int, Any]) -> str | None:
    """The flat extent of the disk's top chain unit (vSphere orders a chain base first):
    the file that holds its bytes, as layoutEx names it, never a name guessed from the
    descriptor's. Chains of more than one unit are deltas, which refusals.py refuses."""
    if not chain:
        return None
    for key in chain[-1].fileKey or []:
        info = files.get(key)
        if info is not None and info.type == "diskExtent":
            return str(info.name)
    return None


def _nic(device: Any, names: Mapping[str, str], portgroups: Mapping[str, str]) -> NicFacts:
    backing = device.backing
    network: str | None = None
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        ref = backing.network
        network = (names.get(ref._moId) if ref is not None else None) or backing.deviceName
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = backing.port.portgroupKey if backing.port is not None else None
        network = portgroups.get(key) if key else None
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        network = backing.opaqueNetworkId
    mac = device.macAddress
    return NicFacts(
        key=device.key,
        label=_label(device),
        model=_kind(device, _NIC_MODELS),
        mac=str(mac).lower() if mac else None,
        network=network,
    )


def _snapshot_names(trees: Iterable[Any]) -> list[str]:
    names: list[str] = []
    for tree in trees:
        names.append(str(tree.name))
        names.extend(_snapshot_names(tree.childSnapshotList or []))
    return names
