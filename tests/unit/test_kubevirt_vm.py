"""The KubeVirt VirtualMachine built from a source's hardware, against golden manifests.

The golden files are also decoded strictly into KubeVirt's own Go types by
tests/worker/test_kubevirt_command.py. HYPER2KVM_UPDATE_GOLDEN=1 rewrites them; read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import (
    DescribedBy,
    Firmware,
    Hardware,
    HardwareDisk,
    HardwareNic,
)
from hyper2kvm_worker.kubevirt import (
    DEFAULT,
    JOB,
    POD,
    NetworkTarget,
    VmOptions,
    build_vm,
    parse_network_target,
)
from hyper2kvm_worker.kubevirt_command import to_yaml
from hyper2kvm_worker.ovf import parse_ovf
from hyper2kvm_worker.vmx import parse_vmx

GOLDEN = Path(__file__).parent / "golden"
WEB01_NETWORKS = {"VM Network": POD, "backend-vlan20": NetworkTarget(multus="net/vlan20")}
GOLDEN_CASES = {
    # name: (source file, virtio)
    "web01-ovf-virtio": ("web01.ovf", True),
    "web01-ovf-sata": ("web01.ovf", False),
    "db01-vmx-virtio": ("db01.vmx", True),
    "db01-vmx-sata": ("db01.vmx", False),
}


def source_hardware(file: str) -> Hardware:
    path = GOLDEN / file
    return parse_ovf(path.read_bytes()) if file.endswith(".ovf") else parse_vmx(path.read_text())


def build_golden(case: str) -> tuple[str, Any]:
    file, virtio = GOLDEN_CASES[case]
    hardware = source_hardware(file)
    networks = WEB01_NETWORKS if file == "web01.ovf" else {"VM Network": POD}
    claims = [f"{case}-disk{i}" for i in range(len(hardware.disks))]
    built = build_vm(hardware, claims, virtio=virtio, networks=networks, options=VmOptions())
    return to_yaml(built.manifest), built


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_matches_the_golden_manifest(case: str) -> None:
    text, built = build_golden(case)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("HYPER2KVM_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; HYPER2KVM_UPDATE_GOLDEN=1 rewrites it"
    assert yaml.safe_load(text) == built.manifest  # the YAML says what the manifest says


def spec_of(manifest: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return template


def test_efi_secure_boot_turns_on_smm() -> None:
    _, built = build_golden("web01-ovf-virtio")
    domain = spec_of(built.manifest)["domain"]
    assert domain["firmware"] == {"bootloader": {"efi": {"secureBoot": True}}}
    assert domain["features"] == {"smm": {"enabled": True}}
    assert domain["cpu"] == {"sockets": 2, "cores": 2, "threads": 1}
    assert domain["memory"] == {"guest": "8Gi"}
    assert domain["machine"] == {"type": "q35"}


def test_efi_without_secure_boot_says_so_explicitly() -> None:
    # KubeVirt's default for an efi bootloader is secureBoot: true.
    hardware = disk_vm(firmware=Firmware.EFI)
    domain = spec_of(build(hardware).manifest)["domain"]
    assert domain["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert "features" not in domain


def test_provenance_names_source_job_and_default() -> None:
    _, built = build_golden("web01-ovf-sata")
    assert built.provenance["domain.cpu"] == "ovf"
    assert built.provenance["domain.memory.guest"] == "ovf"
    assert built.provenance["domain.firmware"] == "ovf"
    assert built.provenance["metadata.name"] == "ovf"
    assert built.provenance["domain.machine"] == DEFAULT
    assert built.provenance["domain.devices.disks.bus"] == JOB
    assert built.provenance["networks"] == JOB


def test_without_virtio_the_buses_and_models_are_said() -> None:
    _, built = build_golden("web01-ovf-sata")
    devices = spec_of(built.manifest)["domain"]["devices"]
    assert {d["disk"]["bus"] for d in devices["disks"]} == {"sata"}
    assert {i["model"] for i in devices["interfaces"]} == {"e1000e"}
    assert any("sata bus: virtio drivers are not known" in note for note in built.notes)
    assert (
        "Network adapter 1 (VM Network, vmxnet3) -> e1000e on pod: no virtio drivers known"
        in built.notes
    )


def test_interfaces_keep_the_source_macs_and_map_networks() -> None:
    _, built = build_golden("web01-ovf-virtio")
    spec = spec_of(built.manifest)
    assert spec["domain"]["devices"]["interfaces"] == [
        {"name": "net0", "model": "virtio", "macAddress": "00:50:56:ab:12:34", "masquerade": {}},
        {"name": "net1", "model": "virtio", "macAddress": "00:50:56:ab:56:78", "bridge": {}},
    ]
    assert spec["networks"] == [
        {"name": "net0", "pod": {}},
        {"name": "net1", "multus": {"networkName": "net/vlan20"}},
    ]


def disk_vm(**changes: Any) -> Hardware:
    base: dict[str, Any] = {
        "described_by": DescribedBy.VSPHERE,
        "name": "app",
        "cpus": 2,
        "memory_bytes": 2 << 30,
        "disks": [HardwareDisk(label="Hard disk 1", capacity_bytes=1 << 30)],
    }
    return Hardware(**{**base, **changes})


def build(
    hardware: Hardware,
    networks: dict[str, NetworkTarget] | None = None,
    virtio: bool = True,
    **options: Any,
) -> Any:
    claims = [f"c{i}" for i in range(len(hardware.disks))]
    return build_vm(
        hardware, claims, virtio=virtio, networks=networks or {}, options=VmOptions(**options)
    )


def refused(hardware: Hardware, **kwargs: Any) -> BadInput:
    with pytest.raises(BadInput) as caught:
        build(hardware, **kwargs)
    assert caught.value.reason is Reason.INVALID_JOB
    return caught.value


def test_an_unmapped_network_is_refused_by_name() -> None:
    hardware = source_hardware("web01.ovf")
    error = refused(hardware, networks={"VM Network": POD})
    assert "source network(s) 'backend-vlan20' not in the network map" in error.message


def test_two_nics_on_the_pod_network_are_refused() -> None:
    hardware = source_hardware("web01.ovf")
    error = refused(hardware, networks={"VM Network": POD, "backend-vlan20": POD})
    assert "KubeVirt allows once" in error.message


def test_a_nic_on_no_named_network_is_refused() -> None:
    hardware = disk_vm(nics=[HardwareNic(label="Network adapter 1", model="e1000")])
    assert "Network adapter 1 is connected to no named network" in refused(hardware).message


def test_no_nic_means_no_automatic_pod_interface() -> None:
    devices = spec_of(build(disk_vm()).manifest)["domain"]["devices"]
    assert devices["interfaces"] == []
    assert devices["autoattachPodInterface"] is False


def test_the_boot_disk_comes_first_with_boot_order_one() -> None:
    disks = [
        HardwareDisk(label="Hard disk 1", capacity_bytes=1),
        HardwareDisk(label="Hard disk 2", capacity_bytes=1, boot_order=1),
    ]
    spec = spec_of(build(disk_vm(disks=disks)).manifest)
    assert spec["domain"]["devices"]["disks"] == [
        {"name": "disk1", "disk": {"bus": "virtio"}, "bootOrder": 1},
        {"name": "disk0", "disk": {"bus": "virtio"}},
    ]
    assert spec["volumes"][0] == {"name": "disk1", "persistentVolumeClaim": {"claimName": "c1"}}


def test_a_4k_native_disk_keeps_its_sector_size() -> None:
    disks = [HardwareDisk(label="Hard disk 1", capacity_bytes=1, logical_sector_size=4096)]
    disk = spec_of(build(disk_vm(disks=disks)).manifest)["domain"]["devices"]["disks"][0]
    assert disk["blockSize"] == {"custom": {"logical": 4096, "physical": 4096}}
    plain = spec_of(build(disk_vm()).manifest)["domain"]["devices"]["disks"][0]
    assert "blockSize" not in plain


def test_an_instancetype_replaces_cpu_and_memory() -> None:
    built = build(disk_vm(), instancetype="u1.medium", preference="centos.stream9")
    assert built.manifest["spec"]["instancetype"] == {
        "kind": "VirtualMachineClusterInstancetype",
        "name": "u1.medium",
    }
    domain = spec_of(built.manifest)["domain"]
    assert "cpu" not in domain
    assert "memory" not in domain
    assert built.manifest["spec"]["preference"]["name"] == "centos.stream9"
    assert built.provenance["domain.cpu"] == JOB
    assert "not a DNS-1123 subdomain" in refused(disk_vm(), instancetype="U1.medium").message


def test_an_instancetype_with_explicit_cpus_is_refused() -> None:
    error = refused(disk_vm(), instancetype="u1-medium", cpus=4)
    assert "not both" in error.message


def test_explicit_cpus_and_memory_win_and_say_so() -> None:
    built = build(disk_vm(cores_per_socket=2), cpus=6, memory_bytes=3 << 29)
    domain = spec_of(built.manifest)["domain"]
    assert domain["cpu"] == {"sockets": 3, "cores": 2, "threads": 1}
    assert domain["memory"] == {"guest": "1536Mi"}
    assert built.provenance["domain.cpu"] == built.provenance["domain.memory.guest"] == JOB


def test_cores_that_do_not_divide_fall_back_to_one_per_socket() -> None:
    built = build(disk_vm(cpus=3, cores_per_socket=2))
    assert spec_of(built.manifest)["domain"]["cpu"] == {"sockets": 3, "cores": 1, "threads": 1}
    assert any("do not divide" in note for note in built.notes)


def test_unknown_memory_needs_the_job_to_say() -> None:
    assert "does not say how much memory" in refused(disk_vm(memory_bytes=None)).message


def test_unknown_firmware_is_bios_by_default() -> None:
    built = build(disk_vm())
    assert spec_of(built.manifest)["domain"]["firmware"] == {"bootloader": {"bios": {}}}
    assert built.provenance["domain.firmware"] == DEFAULT


def test_the_name_is_derived_or_checked() -> None:
    built = build(disk_vm(name="Web 01_prod"))
    assert built.manifest["metadata"]["name"] == "web-01-prod"
    assert "VM name 'web-01-prod' derived from the source's 'Web 01_prod'" in built.notes
    assert "is not a DNS-1123 label" in refused(disk_vm(), name="Web01").message
    assert "no VM name usable" in refused(disk_vm(name="!!!")).message


def test_claims_must_match_the_disks() -> None:
    with pytest.raises(BadInput, match="1 claims for the source's 2 disks"):
        build_vm(
            disk_vm(disks=[HardwareDisk(label=f"d{i}", capacity_bytes=1) for i in range(2)]),
            ["only-one"],
            virtio=True,
            networks={},
            options=VmOptions(),
        )


def test_run_strategy_labels_and_namespace() -> None:
    built = build(
        disk_vm(), run_strategy="Always", labels={"app.kubernetes.io/name": "app"}, namespace="vms"
    )
    assert built.manifest["spec"]["runStrategy"] == "Always"
    assert built.manifest["metadata"] == {
        "name": "app",
        "namespace": "vms",
        "labels": {"app.kubernetes.io/name": "app"},
    }
    template_labels = built.manifest["spec"]["template"]["metadata"]["labels"]
    assert template_labels == {"app.kubernetes.io/name": "app", "kubevirt.io/vm": "app"}
    assert "run strategy 'Sometimes'" in refused(disk_vm(), run_strategy="Sometimes").message
    assert "not a valid label value" in refused(disk_vm(), labels={"a": "b c"}).message
    assert "not a valid label key" in refused(disk_vm(), labels={"-a": "b"}).message


@pytest.mark.parametrize(
    ("text", "target"),
    [("pod", POD), ("multus:vlan20", NetworkTarget("vlan20")),
     ("multus:net/vlan20", NetworkTarget("net/vlan20"))],
)  # fmt: skip
def test_network_targets(text: str, target: NetworkTarget) -> None:
    assert parse_network_target(text) == target
    assert str(target) == text


@pytest.mark.parametrize("text", ["bridge", "multus:", "multus:a/b/c", "multus:Net/x", "Pod"])
def test_bad_network_targets(text: str) -> None:
    with pytest.raises(BadInput, match="use pod, multus:NAME or multus:NAMESPACE/NAME"):
        parse_network_target(text)


def test_yaml_quotes_what_yaml_would_misread() -> None:
    value = {
        "on": "yes",
        "plain": ["0x10", "1e3", "null", "", "a: b", "- x", "#c", "multi\nline"],
        "n": 3,
        "b": False,
        "nothing": None,
        "empty": {},
        "none": [],
        "nested": [[1, 2], {"k": {"deep": True}}],
    }
    text = to_yaml(value)
    assert yaml.safe_load(text) == value
    assert text.startswith('"on": "yes"\n')
