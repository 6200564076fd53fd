"""Finding a VM by name and where its disks' bytes are, with vSphere's SOAP API (vim25)
and the standard library: the worker has no vSphere SDK.

For the standalone command line, in the session vsphere_session.py logged in. The VM is
found by its name among the VMs of a ContainerView (over the root folder, or over the
datacenter given), then read with explicit property paths, never whole `config`, `runtime`
or `summary` objects (large, and some SDKs fail to read them from vcsim: govmomi#4084).
A disk's bytes are in the flat extent that layoutEx names for the last unit of its chain.
What cannot be copied faithfully as that file (a running VM, a snapshot, a raw device
mapping, a sparse or delta disk, a disk whose writes are discarded or shared) is refused,
naming the disk or the snapshot.

Every count and string kept from a reply is bounded. `vm_from_properties` and `refusals` are
pure: tested on recorded replies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.sources.vsphere_session import Session, soap_call

MAX_DISKS = 64  # a job's limit (protocol.Job)
MAX_NAME = 1024  # characters of a name or label
_MAX_PATH = 4096  # characters of a datastore path
_MAX_DEVICES = 2048
_MAX_FILES = 16384  # layoutEx files: a VM's snapshots add some for every disk
_MAX_CHAIN = 1024  # units of one disk's chain, and files of one unit
_MAX_SNAPSHOTS = 4096
_SHOWN = 8  # snapshots or VMs named in one message
_MAX_DEPTH = 64  # levels above a VM: a cycle or a broken server cannot walk forever
_PAGE = 1000  # VM names per reply while searching
_MAX_VMS = 500_000
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

# What is read of the VM: first what decides whether it can be copied at all, then where
# the bytes are (layoutEx grows with every snapshot, so it is read only for a VM without).
VM_PATHS = (
    "name",
    "parent",
    "parentVApp",
    "config.hardware.device",
    "snapshot",
    "runtime.powerState",
)
LAYOUT_PATHS = ("layoutEx.disk", "layoutEx.file")
_FLAT = frozenset({"VirtualDiskFlatVer2BackingInfo", "VirtualDiskFlatVer1BackingInfo"})
_RAW = frozenset(
    {
        "VirtualDiskRawDiskMappingVer1BackingInfo",
        "VirtualDiskRawDiskVer2BackingInfo",
        "VirtualDiskPartitionedRawDiskVer2BackingInfo",
    }
)
# Disk modes whose writes are thrown away: the file is not what the guest sees.
_DISCARDING = frozenset({"independent_nonpersistent", "nonpersistent", "undoable"})


@dataclass(frozen=True)
class Ref:
    """A managed object reference: its type and id ("VirtualMachine", "vm-42")."""

    type: str
    value: str

    def xml(self, tag: str) -> str:
        kind = escape(self.type, {'"': "&quot;"})
        return f'<{tag} type="{kind}">{escape(self.value)}</{tag}>'


@dataclass(frozen=True)
class VmDisk:
    label: str
    capacity_bytes: int
    backing: str  # the backing's type, e.g. VirtualDiskFlatVer2BackingInfo
    file_name: str | None  # the descriptor, "[ds] dir/name.vmdk"
    disk_mode: str | None  # persistent, independent_persistent, independent_nonpersistent, ...
    sharing: str | None  # sharingNone, sharingMultiWriter
    bus_sharing: str | None  # its SCSI controller's bus sharing: noSharing, physicalSharing...
    encrypted: bool
    delta: bool  # over a parent disk: a snapshot's delta or a linked clone
    extent: str | None  # "[ds] dir/name-flat.vmdk", as layoutEx names it


@dataclass(frozen=True)
class Vm:
    moref: str
    name: str  # unescaped, as a person wrote it
    power_state: str | None  # poweredOn, poweredOff, suspended
    snapshots: tuple[str, ...]  # every snapshot's name, the tree walked depth first
    disks: tuple[VmDisk, ...]  # in device order
    parent: Ref | None  # its folder or vApp, to walk up to its datacenter
    datacenter: str = ""  # the datacenter's inventory path ("DC0", "Europe/DC9")


def find_vm(session: Session, name: str, datacenter: str | None = None) -> Vm:
    """The VM called `name` (in `datacenter`, an inventory path, when given), with the flat
    extent of each disk and its datacenter's path. BadInput when no VM or several carry the
    name, or when the VM cannot be copied faithfully."""
    content = _service_content(session)
    container = content["rootFolder"]
    if datacenter:
        container = _find_datacenter(session, content, datacenter)
    found = _named(session, content, container, name)
    where = f" in datacenter {datacenter!r}" if datacenter else ""
    if not found:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"no VM named {name!r}{where}")
    if len(found) > 1:
        ids = ", ".join(sorted(found)[:_SHOWN])
        raise BadInput(
            Reason.INVALID_JOB,
            f"the name {name!r} is ambiguous: {len(found)} VMs{where} carry it ({ids}); "
            "rename one, or narrow the search to one datacenter",
        )
    ref = Ref("VirtualMachine", found[0])
    props = _properties(session, content, ref, VM_PATHS)
    _refuse(vm_from_properties(ref.value, props), located=False)
    props.update(_properties(session, content, ref, LAYOUT_PATHS))
    vm = vm_from_properties(ref.value, props)
    _refuse(vm, located=True)
    path = datacenter.strip("/") if datacenter else _datacenter_path(session, content, vm)
    return dataclasses.replace(vm, datacenter=path)


def entity_name(raw: str) -> str:
    """An inventory name as a person wrote it: vSphere escapes %, / and \\ in names."""
    for escaped, plain in (("%2f", "/"), ("%2F", "/"), ("%5c", "\\"), ("%5C", "\\")):
        raw = raw.replace(escaped, plain)
    return raw.replace("%25", "%")


def property_values(reply: ET.Element) -> dict[str, ET.Element]:
    """Property path -> `val` element of the first object in a RetrieveProperties(Ex) reply."""
    for _, props in _objects(reply):
        return props
    return {}


def vm_from_properties(moref: str, props: Mapping[str, ET.Element]) -> Vm:
    """The VM that the values of VM_PATHS (and LAYOUT_PATHS, if read) describe."""
    devices = _children(props.get("config.hardware.device"), None, _MAX_DEVICES, "devices")
    buses = {
        _int(d, "key"): _text(d, "sharedBus") for d in devices if _child(d, "sharedBus") is not None
    }
    extents = _extents(props.get("layoutEx.disk"), props.get("layoutEx.file"))
    disks = [d for d in devices if _xsi_type(d) == "VirtualDisk"]
    if len(disks) > MAX_DISKS:
        raise BadInput(Reason.UNSUPPORTED, f"VM {moref} has {len(disks)} disks, over {MAX_DISKS}")
    return Vm(
        moref=moref,
        name=entity_name(_value(props.get("name")) or moref),
        power_state=_value(props.get("runtime.powerState")),
        snapshots=_snapshot_names(props.get("snapshot")),
        disks=tuple(_disk(d, buses, extents) for d in disks),
        parent=_ref(props.get("parent")) or _ref(props.get("parentVApp")),
    )


def refusals(vm: Vm, located: bool = True) -> list[str]:
    """Why the VM's disks, read as files, would not be the disks its guest sees; empty
    when nothing stops the copy. `located`: layoutEx was read, so a disk without a flat
    extent is refused too."""
    found: list[str] = []
    if vm.power_state in ("poweredOn", "suspended"):
        state = "powered on" if vm.power_state == "poweredOn" else "suspended"
        found.append(f"it is {state}: power it off first (a guest changes its disks as it runs)")
    if vm.snapshots:
        shown = ", ".join(repr(s) for s in vm.snapshots[:_SHOWN])
        more = f" and {len(vm.snapshots) - _SHOWN} more" if len(vm.snapshots) > _SHOWN else ""
        found.append(f"it has snapshots ({shown}{more}): delete or consolidate them first")
    if not vm.disks:
        found.append("it has no virtual disks")
    for disk in vm.disks:
        problems = list(_disk_refusals(disk, bool(vm.snapshots)))
        if located and not problems and disk.extent is None:
            problems.append("vSphere names no flat extent file for it")
        found.extend(f"{disk.label}: {why}" for why in problems)
    return found


def _refuse(vm: Vm, located: bool) -> None:
    problems = refusals(vm, located)
    if problems:
        raise BadInput(
            Reason.UNSUPPORTED, f"VM {vm.name} cannot be copied faithfully: " + "; ".join(problems)
        )


def _disk_refusals(disk: VmDisk, has_snapshots: bool) -> Iterator[str]:
    if disk.backing in _RAW:
        yield "a raw device mapping: its bytes are on a LUN, not in a datastore file"
    elif disk.backing not in _FLAT:
        yield f"its backing is {disk.backing}: only flat disks are read"
    if disk.disk_mode in _DISCARDING:
        yield f"disk mode {disk.disk_mode}: the guest's writes are not in the file"
    if disk.sharing == "sharingMultiWriter":
        yield "shared with other VMs (multi-writer)"
    if disk.bus_sharing not in (None, "noSharing"):
        yield f"on a controller with SCSI bus sharing ({disk.bus_sharing})"
    if disk.encrypted:
        yield "encrypted: decrypt it first"
    if disk.delta and not has_snapshots:  # a snapshot's delta is refused as the snapshot
        yield "a delta disk over a parent (a linked clone): consolidate it first"


def _disk(
    device: ET.Element,
    buses: Mapping[int | None, str | None],
    extents: Mapping[int, tuple[str | None, int]],
) -> VmDisk:
    key = _int(device, "key")
    backing = _child(device, "backing")
    capacity = _int(device, "capacityInBytes")
    if capacity is None:
        capacity = (_int(device, "capacityInKB") or 0) * 1024
    info = _child(device, "deviceInfo")
    label = (_text(info, "label", truncate=True) if info is not None else None) or f"disk {key}"
    extent, units = extents.get(key, (None, 0)) if key is not None else (None, 0)
    return VmDisk(
        label=label,
        capacity_bytes=capacity,
        backing=(_xsi_type(backing) if backing is not None else "") or "unknown",
        file_name=_text(backing, "fileName", _MAX_PATH),
        disk_mode=_text(backing, "diskMode"),
        sharing=_text(backing, "sharing"),
        bus_sharing=buses.get(_int(device, "controllerKey")),
        encrypted=_child(backing, "keyId") is not None,
        delta=_child(backing, "parent") is not None or units > 1,
        extent=extent,
    )


def _extents(
    disks: ET.Element | None, files: ET.Element | None
) -> dict[int, tuple[str | None, int]]:
    """Disk key -> the diskExtent file of the last unit of its chain (vSphere lists a chain
    base first), and the number of units (more than one: a delta over a parent)."""
    names: dict[int, tuple[str | None, str | None]] = {}
    for info in _children(files, None, _MAX_FILES, "layoutEx files"):
        key = _int(info, "key")
        if key is not None:
            names[key] = (_text(info, "type"), _text(info, "name", _MAX_PATH))
    found: dict[int, tuple[str | None, int]] = {}
    for layout in _children(disks, None, MAX_DISKS * 4, "layoutEx disks"):
        key, units = _int(layout, "key"), _children(layout, "chain", _MAX_CHAIN, "chain units")
        if key is None or not units:
            continue
        last = [_number(k) for k in _children(units[-1], "fileKey", _MAX_CHAIN, "chain files")]
        kinds_and_names = [names[k] for k in last if k is not None and k in names]
        extent = next((name for kind, name in kinds_and_names if kind == "diskExtent"), None)
        found[key] = (extent or None, len(units))
    return found


def _snapshot_names(info: ET.Element | None) -> tuple[str, ...]:
    """Every snapshot's name, depth first, from a VirtualMachineSnapshotInfo."""
    names: list[str] = []
    stack = list(reversed(_children(info, "rootSnapshotList", _MAX_SNAPSHOTS, "snapshots")))
    while stack:
        tree = stack.pop()
        names.append(_text(tree, "name", truncate=True) or "(unnamed)")
        if len(names) > _MAX_SNAPSHOTS:
            raise BadInput(Reason.UNSUPPORTED, f"more than {_MAX_SNAPSHOTS} snapshots")
        children = _children(tree, "childSnapshotList", _MAX_SNAPSHOTS, "snapshots")
        stack.extend(reversed(children))
    return tuple(names)


# ---------------------------------------------------------------------------- the calls


def _service_content(session: Session) -> dict[str, Ref]:
    reply = soap_call(
        session,
        '<RetrieveServiceContent xmlns="urn:vim25">'
        '<_this type="ServiceInstance">ServiceInstance</_this>'
        "</RetrieveServiceContent>",
    )
    content: dict[str, Ref] = {}
    for returnval in _returnvals(reply):
        for tag in ("rootFolder", "propertyCollector", "viewManager", "searchIndex"):
            ref = _ref(_child(returnval, tag))
            if ref is not None:
                content[tag] = ref
    if len(content) < 4:
        raise BadInput(Reason.UNSUPPORTED, f"{session.url}/sdk has no inventory to search")
    return content


def _find_datacenter(session: Session, content: Mapping[str, Ref], path: str) -> Ref:
    index = content["searchIndex"].xml("_this")
    wanted = f"<inventoryPath>{escape(path.strip('/'))}</inventoryPath>"
    body = f'<FindByInventoryPath xmlns="urn:vim25">{index}{wanted}</FindByInventoryPath>'
    found = next((_ref(r) for r in _returnvals(soap_call(session, body))), None)
    if found is None or found.type != "Datacenter":
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"no datacenter at inventory path {path!r}")
    return found


def _named(session: Session, content: Mapping[str, Ref], container: Ref, name: str) -> list[str]:
    """The ids of the VMs under `container` called `name`."""
    body = (
        f'<CreateContainerView xmlns="urn:vim25">{content["viewManager"].xml("_this")}'
        f"{container.xml('container')}<type>VirtualMachine</type>"
        "<recursive>true</recursive></CreateContainerView>"
    )
    view = next((_ref(r) for r in _returnvals(soap_call(session, body))), None)
    if view is None:
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{session.url}/sdk made no view")
    collector = content["propertyCollector"].xml("_this")
    in_view = f"{view.xml('obj')}<skip>true</skip>{_TRAVERSE_VIEW}"
    found: list[str] = []
    seen = 0
    try:
        reply = soap_call(session, _retrieve(collector, "VirtualMachine", ("name",), in_view))
        for _ in range(_MAX_VMS):  # pages: a server that sends empty ones cannot loop forever
            for ref, props in _objects(reply):
                seen += 1
                if entity_name(_value(props.get("name")) or "") == name:
                    found.append(ref.value)
            token = next((_text(r, "token") for r in _returnvals(reply)), None)
            if not token:
                return found
            paged = f"{collector}<token>{escape(token)}</token>"
            if seen >= _MAX_VMS:
                _call_quietly(
                    session,
                    f'<CancelRetrievePropertiesEx xmlns="urn:vim25">{paged}'
                    "</CancelRetrievePropertiesEx>",
                )
                break
            reply = soap_call(
                session,
                f'<ContinueRetrievePropertiesEx xmlns="urn:vim25">{paged}'
                "</ContinueRetrievePropertiesEx>",
            )
    finally:  # a view lives as long as the session unless destroyed
        _call_quietly(session, f'<DestroyView xmlns="urn:vim25">{view.xml("_this")}</DestroyView>')
    raise BadInput(Reason.UNSUPPORTED, f"more than {_MAX_VMS} VMs to search: name a datacenter")


_TRAVERSE_VIEW = (
    '<selectSet xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="TraversalSpec">'
    "<name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>"
)


def _retrieve(collector: str, kind: str, paths: tuple[str, ...], object_spec: str) -> str:
    wanted = "".join(f"<pathSet>{escape(p)}</pathSet>" for p in paths)
    return (
        f'<RetrievePropertiesEx xmlns="urn:vim25">{collector}<specSet><propSet>'
        f"<type>{escape(kind)}</type>{wanted}</propSet><objectSet>{object_spec}</objectSet>"
        f"</specSet><options><maxObjects>{_PAGE}</maxObjects></options>"
        "</RetrievePropertiesEx>"
    )


def _properties(
    session: Session, content: Mapping[str, Ref], ref: Ref, paths: tuple[str, ...]
) -> dict[str, ET.Element]:
    collector = content["propertyCollector"].xml("_this")
    reply = soap_call(session, _retrieve(collector, ref.type, paths, ref.xml("obj")))
    for returnval in _returnvals(reply):
        for objects in _children(returnval, "objects", 1, "objects"):
            sets = _children(objects, "missingSet", len(paths), "missing properties")
            missing = ", ".join(str(_text(m, "path", truncate=True)) for m in sets)
            if missing:
                raise BadInput(
                    Reason.UNSUPPORTED,
                    f"{ref.value}: vSphere gave no {missing}; may the user read them?",
                )
    return property_values(reply)


def _datacenter_path(session: Session, content: Mapping[str, Ref], vm: Vm) -> str:
    """The inventory path of the VM's datacenter: its name under the folders above it, the
    root folder left out."""
    ref, above, datacenter = vm.parent, [], False
    for _ in range(_MAX_DEPTH):
        if ref is None:
            break
        step = _properties(session, content, ref, ("name", "parent"))
        parent = _ref(step.get("parent"))
        datacenter = datacenter or ref.type == "Datacenter"
        if datacenter and parent is not None:
            above.append(_value(step.get("name")) or "")
        ref = parent
    if ref is not None or not datacenter:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"VM {vm.name} is in no datacenter")
    return "/".join(reversed(above))


def _call_quietly(session: Session, body: str) -> None:
    # Cleaning up: the answer the caller waits for does not depend on it.
    with contextlib.suppress(BadInput, TransientFailure):
        soap_call(session, body)


# ---------------------------------------------------------------------------- XML, bounded


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(parent: ET.Element | None, tag: str) -> ET.Element | None:
    if parent is None:
        return None
    return next((c for c in parent if _local(c.tag) == tag), None)


def _children(
    parent: ET.Element | None, tag: str | None, limit: int, what: str
) -> list[ET.Element]:
    """The children of `parent` (those called `tag`, when given); at most `limit`."""
    found = [] if parent is None else [c for c in parent if tag is None or _local(c.tag) == tag]
    if len(found) > limit:
        raise BadInput(Reason.UNSUPPORTED, f"vSphere gave more than {limit} {what}")
    return found


def _text(
    parent: ET.Element | None, tag: str, limit: int = MAX_NAME, truncate: bool = False
) -> str | None:
    return _bounded(_child(parent, tag), tag, limit, truncate)


def _value(element: ET.Element | None) -> str | None:
    return _bounded(element, "value", MAX_NAME, False)


def _bounded(element: ET.Element | None, what: str, limit: int, truncate: bool) -> str | None:
    text = element.text if element is not None else None
    if text is None or len(text) <= limit:
        return text
    if truncate:  # shown only: a label or a snapshot's name
        return text[:limit] + "..."
    raise BadInput(Reason.UNSUPPORTED, f"vSphere gave a {what} of more than {limit} characters")


def _int(parent: ET.Element, tag: str) -> int | None:
    return _number(_child(parent, tag))


def _number(element: ET.Element | None) -> int | None:
    text = (element.text or "").strip() if element is not None else ""
    if not text or len(text) > 20 or not text.lstrip("-").isdigit():
        return None
    return int(text)


def _xsi_type(element: ET.Element) -> str:
    return element.get(_XSI_TYPE, "").rsplit(":", 1)[-1][:MAX_NAME]


def _ref(element: ET.Element | None) -> Ref | None:
    if element is None or not element.text or not element.get("type"):
        return None
    return Ref(element.get("type", "")[:MAX_NAME], element.text[:MAX_NAME])


def _returnvals(reply: ET.Element) -> list[ET.Element]:
    """The `returnval`s of a reply's one response (none when the call returned nothing)."""
    body = next((c for c in reply if _local(c.tag) == "Body"), None)
    response = next(iter(body), None) if body is not None else None
    return _children(response, "returnval", _MAX_VMS, "results")


def _objects(reply: ET.Element) -> Iterator[tuple[Ref, dict[str, ET.Element]]]:
    """(object, property path -> `val`) of every object in a RetrieveProperties(Ex) reply."""
    for returnval in _returnvals(reply):
        for content in _children(returnval, "objects", _MAX_VMS, "objects"):
            ref = _ref(_child(content, "obj"))
            if ref is None:
                continue
            props: dict[str, ET.Element] = {}
            for prop in _children(content, "propSet", 64, "properties"):
                name, value = _text(prop, "name", truncate=True), _child(prop, "val")
                if name is not None and value is not None:
                    props[name] = value
            yield ref, props
