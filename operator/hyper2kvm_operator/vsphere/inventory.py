"""Finding a VM (by name, instance UUID or managed object id, within a datacenter when one
is given) and reading what it is made of.

A name that two VMs carry is refused rather than guessed at. The VM is read with one
PropertyCollector call over explicit property paths (facts.VM_PATHS), then the names of
its host, datastores and networks with one more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from hyper2kvm_operator.vsphere import properties
from hyper2kvm_operator.vsphere.client import Connection, call
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from hyper2kvm_operator.vsphere.facts import VM_PATHS, VmFacts, entity_name, vm_facts

_MAX_DEPTH = 64  # folders above a VM; a cycle or a broken server cannot walk forever


@dataclass(frozen=True)
class VmRef:
    """Exactly one of a name, an instance UUID (or BIOS UUID) or a managed object id
    ("vm-42"); `datacenter` (a name, or an inventory path with folders) narrows the search."""

    name: str | None = None
    uuid: str | None = None
    moref: str | None = None
    datacenter: str | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.name, self.uuid, self.moref)) != 1:
            raise VSphereError(
                Reason.INVALID_ARGUMENT, "name exactly one of a VM's name, UUID or moref"
            )

    def __str__(self) -> str:
        what = (
            f"named {self.name!r}" if self.name is not None
            else f"with UUID {self.uuid}" if self.uuid is not None
            else f"{self.moref}"
        )  # fmt: skip
        where = f" in datacenter {self.datacenter!r}" if self.datacenter else ""
        return f"VM {what}{where}"


def find_vm(conn: Connection, ref: VmRef) -> Any:
    """The VirtualMachine `ref` names; VSphereError NotFound or Ambiguous otherwise."""
    where = f"find {ref}"
    datacenter = find_datacenter(conn, ref.datacenter) if ref.datacenter else None
    if ref.name is not None:
        container = datacenter if datacenter is not None else conn.content.rootFolder
        vms = properties.list_in(conn, container, vim.VirtualMachine, ["name"], where)
        found = [
            vm for vm, props in vms.values() if entity_name(str(props.get("name"))) == ref.name
        ]
    elif ref.uuid is not None:
        found = _by_uuid(conn, datacenter, ref.uuid, where)
    else:
        vm = vim.VirtualMachine(ref.moref, conn.stub)
        properties.read(conn, vm, ["name"], where)
        if datacenter is not None and _datacenter_of(conn, vm, where)[0]._moId != datacenter._moId:
            raise VSphereError(Reason.NOT_FOUND, f"{where}: it is in another datacenter")
        found = [vm]
    if not found:
        raise VSphereError(Reason.NOT_FOUND, f"{where}: no such VM")
    if len(found) > 1:
        ids = ", ".join(sorted(vm._moId for vm in found))
        raise VSphereError(
            Reason.AMBIGUOUS, f"{where}: {len(found)} VMs match ({ids}); name one by moref or UUID"
        )
    return found[0]


def find_datacenter(conn: Connection, name_or_path: str) -> Any:
    where = f"find datacenter {name_or_path!r}"
    if "/" in name_or_path:
        found = call(where, conn.content.searchIndex.FindByInventoryPath, name_or_path.strip("/"))
        if not isinstance(found, vim.Datacenter):
            raise VSphereError(Reason.NOT_FOUND, f"{where}: no datacenter at that path")
        return found
    listed = properties.list_in(conn, conn.content.rootFolder, vim.Datacenter, ["name"], where)
    matches = [
        dc for dc, props in listed.values() if entity_name(str(props.get("name"))) == name_or_path
    ]
    if not matches:
        raise VSphereError(Reason.NOT_FOUND, f"{where}: no such datacenter")
    if len(matches) > 1:
        raise VSphereError(
            Reason.AMBIGUOUS, f"{where}: several datacenters carry that name; give its path"
        )
    return matches[0]


def describe(conn: Connection, vm: Any) -> VmFacts:
    """What the VM is made of, as plain facts (see facts.py)."""
    where = f"read VM {vm._moId}"
    props = properties.read(conn, vm, VM_PATHS, where)
    _, datacenter_path = _datacenter_of(conn, vm, where, props)
    refs: list[Any] = list(props.get("network") or [])
    if props.get("runtime.host") is not None:
        refs.append(props["runtime.host"])
    for device in props.get("config.hardware.device") or []:
        datastore = getattr(getattr(device, "backing", None), "datastore", None)
        if isinstance(device, vim.vm.device.VirtualDisk) and datastore is not None:
            refs.append(datastore)
    unique = list({ref._moId: ref for ref in refs}.values())
    named = properties.read_many(
        conn,
        unique,
        {
            vim.HostSystem: ["name"],
            vim.Datastore: ["name"],
            vim.Network: ["name"],
            vim.dvs.DistributedVirtualPortgroup: ["name", "key"],
        },
        where,
    )
    names = {key: str(p["name"]) for key, p in named.items() if "name" in p}
    portgroups = {
        str(p["key"]): str(p["name"]) for p in named.values() if "key" in p and "name" in p
    }
    return vm_facts(
        vm._moId, props, datacenter_path=datacenter_path, names=names, portgroups=portgroups
    )


def _by_uuid(conn: Connection, datacenter: Any, uuid: str, where: str) -> list[Any]:
    search = conn.content.searchIndex
    for instance in (
        True,
        False,
    ):  # the instance UUID is unique in a vCenter; the BIOS one may not be
        found = call(where, search.FindAllByUuid, datacenter, uuid, True, instance)
        if found:
            return list(found)
    return []


def _datacenter_of(
    conn: Connection, vm: Any, where: str, props: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """The VM's datacenter and its inventory path ("DC0", "Folder/DC0"), walking parents."""
    if props is None:
        props = properties.read(conn, vm, ["parent", "parentVApp"], where)
    ref = props.get("parent") or props.get("parentVApp")
    datacenter: Any = None
    above: list[str] = []  # names of the datacenter and the folders above it, bottom up
    for _ in range(_MAX_DEPTH):
        if ref is None:
            break
        step = properties.read(conn, ref, ["name", "parent"], where)
        parent = step.get("parent")
        if datacenter is None and isinstance(ref, vim.Datacenter):
            datacenter = ref
        if datacenter is not None and parent is not None:  # the root folder is no part of paths
            above.append(str(step.get("name", "")))
        ref = parent
    if datacenter is None:
        raise VSphereError(Reason.NOT_FOUND, f"{where}: the VM is in no datacenter")
    return datacenter, "/".join(reversed(above))
