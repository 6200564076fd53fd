"""The KubeVirt VirtualMachine (`kubevirt.io/v1`) for a migrated VM, built from its hardware.

Pure: a `Hardware` (from vSphere, an OVF or a `.vmx`), the claims holding the converted
disks and the job's choices in; a manifest ready for YAML out, with the provenance of each
field (the source, the job, or this module's default) for the job's status, and notes a
person should read (why a disk is on SATA, which NIC model replaced VMware's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import Firmware, Hardware, HardwareNic

API_VERSION = "kubevirt.io/v1"
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")
JOB = "job"  # provenance: the job's explicit value
DEFAULT = "default"  # provenance: neither the source nor the job said; this module chose

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_GiB, _MiB = 1 << 30, 1 << 20


@dataclass(frozen=True)
class NetworkTarget:
    """Where a source network goes: the pod network, or a Multus NetworkAttachmentDefinition
    (`name` or `namespace/name`)."""

    multus: str | None = None

    def __str__(self) -> str:
        return f"multus:{self.multus}" if self.multus else "pod"


POD = NetworkTarget()


def parse_network_target(text: str) -> NetworkTarget:
    """`pod`, or `multus:NAME` / `multus:NAMESPACE/NAME`."""
    if text == "pod":
        return POD
    kind, _, name = text.partition(":")
    parts = name.split("/")
    if kind != "multus" or not 1 <= len(parts) <= 2 or not all(map(_is_label, parts)):
        raise BadInput(
            Reason.INVALID_JOB,
            f"network target {text!r}: use pod, multus:NAME or multus:NAMESPACE/NAME "
            "(DNS-1123 names)",
        )
    return NetworkTarget(multus=name)


@dataclass(frozen=True)
class VmOptions:
    """The job's explicit choices; None means: take the source's value."""

    name: str | None = None
    namespace: str | None = None
    run_strategy: str = "Halted"
    labels: Mapping[str, str] = field(default_factory=dict)
    instancetype: str | None = None
    preference: str | None = None
    cpus: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class BuiltVm:
    manifest: dict[str, Any]
    # Field path -> where its value came from: the source (vsphere, ovf, vmx), job, default.
    provenance: dict[str, str]
    notes: tuple[str, ...]


def build_vm(
    hardware: Hardware,
    claims: Sequence[str],
    *,
    virtio: bool,
    networks: Mapping[str, NetworkTarget],
    options: VmOptions,
) -> BuiltVm:
    """The VirtualMachine; `claims` hold the converted disks, one per source disk, in order.

    `virtio`: the guest is known to have virtio drivers (offline_fix added them), so disks
    and NICs can be virtio; without it they are SATA and e1000e, which every guest drives.
    """
    built = _Builder(hardware, virtio)
    name = built.name(options.name)
    domain: dict[str, Any] = {}
    if options.instancetype is not None:
        if options.cpus is not None or options.memory_bytes is not None:
            raise BadInput(
                Reason.INVALID_JOB, "give an instancetype or explicit CPUs and memory, not both"
            )
        # From the instancetype the job names.
        built.origin("domain.cpu", JOB)
        built.origin("domain.memory.guest", JOB)
    else:
        domain["cpu"] = built.cpu(options.cpus)
        domain["memory"] = {"guest": built.memory(options.memory_bytes)}
    domain["machine"] = {"type": "q35"}
    built.origin("domain.machine", DEFAULT)
    domain.update(built.firmware())
    disks, volumes = built.disks(claims)
    interfaces, vm_networks = built.interfaces(networks)
    devices: dict[str, Any] = {"disks": disks, "interfaces": interfaces}
    if not interfaces:  # a VM with no NIC stays without one, as it was
        devices["autoattachPodInterface"] = False
    domain["devices"] = devices
    spec: dict[str, Any] = {"runStrategy": _run_strategy(options.run_strategy)}
    if options.instancetype is not None:
        _check_subdomain(options.instancetype, "instancetype")
        spec["instancetype"] = {
            "kind": "VirtualMachineClusterInstancetype",
            "name": options.instancetype,
        }
    if options.preference is not None:
        _check_subdomain(options.preference, "preference")
        spec["preference"] = {"kind": "VirtualMachineClusterPreference", "name": options.preference}
    labels = _labels(options.labels)
    spec["template"] = {
        "metadata": {"labels": {**labels, "kubevirt.io/vm": name}},
        "spec": {"domain": domain, "networks": vm_networks, "volumes": volumes},
    }
    metadata: dict[str, Any] = {"name": name}
    if options.namespace is not None:
        _check_label(options.namespace, "namespace")
        metadata["namespace"] = options.namespace
    if labels:
        metadata["labels"] = labels
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": metadata,
        "spec": spec,
    }
    return BuiltVm(manifest, dict(built.provenance), tuple(built.notes))


def vm_name(hardware: Hardware, explicit: str | None) -> str:
    """`explicit`, checked, or the source's VM name made a DNS-1123 label."""
    if explicit is not None:
        _check_label(explicit, "VM name")
        return explicit
    source = hardware.name or ""
    derived = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:63].rstrip("-")
    if not derived:
        raise BadInput(
            Reason.INVALID_JOB,
            f"the source gives no VM name usable in Kubernetes ({source!r}); give a name",
        )
    return derived


class _Builder:
    """One VM's parts, each recording where its value came from."""

    def __init__(self, hardware: Hardware, virtio: bool) -> None:
        self.hardware = hardware
        self.source = hardware.described_by.value
        self.virtio = virtio
        self.provenance: dict[str, str] = {}
        self.notes: list[str] = []

    def origin(self, path: str, origin: str) -> None:
        self.provenance[path] = origin

    def name(self, explicit: str | None) -> str:
        name = vm_name(self.hardware, explicit)
        self.origin("metadata.name", JOB if explicit is not None else self.source)
        if explicit is None and name != self.hardware.name:
            self.notes.append(f"VM name {name!r} derived from the source's {self.hardware.name!r}")
        return name

    def cpu(self, explicit: int | None) -> dict[str, int]:
        cpus, origin = _pick(explicit, self.hardware.cpus, 1, self.source)
        if not 1 <= cpus <= 4096:
            raise BadInput(Reason.INVALID_JOB, f"{cpus} CPUs: give between 1 and 4096")
        self.origin("domain.cpu", origin)
        per_socket = self.hardware.cores_per_socket or 1
        if cpus % per_socket:
            self.notes.append(
                f"{cpus} CPUs do not divide into sockets of {per_socket} cores; "
                "one core per socket instead"
            )
            per_socket = 1
        return {"sockets": cpus // per_socket, "cores": per_socket, "threads": 1}

    def memory(self, explicit: int | None) -> str:
        if explicit is None and self.hardware.memory_bytes is None:
            raise BadInput(
                Reason.INVALID_JOB,
                "the source does not say how much memory the VM has; give the memory "
                "or an instancetype",
            )
        memory, origin = _pick(explicit, self.hardware.memory_bytes, 0, self.source)
        if memory < _MiB:
            raise BadInput(Reason.INVALID_JOB, f"{memory} bytes of memory is less than 1 MiB")
        self.origin("domain.memory.guest", origin)
        return _quantity(memory)

    def firmware(self) -> dict[str, Any]:
        firmware = self.hardware.firmware
        if firmware is None:
            self.notes.append("the source does not name its firmware; BIOS, VMware's default")
            firmware = Firmware.BIOS
        self.origin("domain.firmware", DEFAULT if self.hardware.firmware is None else self.source)
        if firmware is Firmware.BIOS:
            return {"firmware": {"bootloader": {"bios": {}}}}
        secure = self.hardware.secure_boot
        # KubeVirt defaults secureBoot to true: it is always written out.
        parts: dict[str, Any] = {"firmware": {"bootloader": {"efi": {"secureBoot": secure}}}}
        if secure:  # KubeVirt refuses secure boot without SMM
            parts["features"] = {"smm": {"enabled": True}}
        return parts

    def disks(self, claims: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        source_disks = self.hardware.disks
        if not source_disks:
            raise BadInput(Reason.INVALID_JOB, "the source describes no disks")
        if len(claims) != len(source_disks):
            raise BadInput(
                Reason.INVALID_JOB,
                f"{len(claims)} claims for the source's {len(source_disks)} disks",
            )
        for claim in claims:
            _check_subdomain(claim, "claim name")
        ranked = [(d.boot_order, i) for i, d in enumerate(source_disks) if d.boot_order]
        boot = min(ranked)[1] if ranked else 0
        bus = "virtio" if self.virtio else "sata"
        if not self.virtio:
            self.notes.append(
                "disks on the sata bus: virtio drivers are not known to be in the guest "
                "(offline_fix adds them; then virtio)"
            )
        disks, volumes = [], []
        for index in [boot, *(i for i in range(len(source_disks)) if i != boot)]:
            disk: dict[str, Any] = {"name": f"disk{index}", "disk": {"bus": bus}}
            if index == boot:
                disk["bootOrder"] = 1
            if source_disks[index].logical_sector_size == 4096:
                disk["blockSize"] = {"custom": {"logical": 4096, "physical": 4096}}
            disks.append(disk)
            volumes.append(
                {"name": f"disk{index}", "persistentVolumeClaim": {"claimName": claims[index]}}
            )
        self.origin("domain.devices.disks", self.source)
        self.origin("domain.devices.disks.bus", JOB)
        self.origin("domain.devices.disks.bootOrder", self.source if ranked else DEFAULT)
        self.origin("volumes", JOB)
        return disks, volumes

    def interfaces(
        self, networks: Mapping[str, NetworkTarget]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        nics = self.hardware.nics
        unmapped = sorted({_network_of(nic) for nic in nics} - set(networks))
        if unmapped:
            raise BadInput(
                Reason.INVALID_JOB,
                "source network(s) "
                + ", ".join(repr(name) for name in unmapped)
                + " not in the network map; map each to pod or multus:NAMESPACE/NAME",
            )
        if sum(networks[_network_of(nic)] == POD for nic in nics) > 1:
            raise BadInput(
                Reason.INVALID_JOB,
                "more than one NIC maps to the pod network, which KubeVirt allows once; "
                "map the others to multus",
            )
        model = "virtio" if self.virtio else "e1000e"
        interfaces, vm_networks = [], []
        for index, nic in enumerate(nics):
            target = networks[_network_of(nic)]
            interface: dict[str, Any] = {"name": f"net{index}", "model": model}
            if nic.mac is not None:
                interface["macAddress"] = nic.mac
            # Masquerade is the pod network's binding; a Multus network is bridged.
            interface["masquerade" if target == POD else "bridge"] = {}
            interfaces.append(interface)
            network: dict[str, Any] = {"name": f"net{index}"}
            if target.multus is None:
                network["pod"] = {}
            else:
                network["multus"] = {"networkName": target.multus}
            vm_networks.append(network)
            why = "virtio drivers are in the guest" if self.virtio else "no virtio drivers known"
            self.notes.append(
                f"{nic.label} ({nic.network}, {nic.model}) -> {model} on {target}: {why}"
            )
        if nics:
            self.origin("domain.devices.interfaces", self.source)
            self.origin("domain.devices.interfaces.model", JOB)
            self.origin("networks", JOB)
        return interfaces, vm_networks


def _network_of(nic: HardwareNic) -> str:
    if nic.network is None:
        raise BadInput(
            Reason.INVALID_JOB,
            f"{nic.label} is connected to no named network, so it cannot be mapped",
        )
    return nic.network


def _pick(
    explicit: int | None, described: int | None, default: int, source: str
) -> tuple[int, str]:
    if explicit is not None:
        return explicit, JOB
    if described is not None:
        return described, source
    return default, DEFAULT


def _quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity, in the largest binary unit that divides them."""
    if size % _GiB == 0:
        return f"{size // _GiB}Gi"
    if size % _MiB == 0:
        return f"{size // _MiB}Mi"
    return str(size)


def _run_strategy(value: str) -> str:
    if value not in RUN_STRATEGIES:
        raise BadInput(
            Reason.INVALID_JOB, f"run strategy {value!r}: use one of {', '.join(RUN_STRATEGIES)}"
        )
    return value


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        prefix_ok = not prefix or (len(prefix) <= 253 and _SUBDOMAIN.match(prefix))
        if not prefix_ok or len(name) > 63 or not _LABEL_NAME.match(name):
            raise BadInput(Reason.INVALID_JOB, f"label key {key!r} is not a valid label key")
        if len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            raise BadInput(Reason.INVALID_JOB, f"label {key}={value!r}: not a valid label value")
    return dict(labels)


def _is_label(value: str) -> bool:
    return len(value) <= 63 and _LABEL.match(value) is not None


def _check_label(value: str, what: str) -> None:
    if not _is_label(value):
        raise BadInput(
            Reason.INVALID_JOB,
            f"{what} {value!r} is not a DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63, alphanumeric at both ends)",
        )


def _check_subdomain(value: str, what: str) -> None:
    # Object names (claims, cluster instancetypes like `u1.medium`) may hold dots.
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        raise BadInput(Reason.INVALID_JOB, f"{what} {value!r} is not a DNS-1123 subdomain name")
