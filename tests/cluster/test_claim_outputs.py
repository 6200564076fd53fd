"""Disks written into claims on the real nodes, provisioned by the test cluster's own
provisioner (local volumes: a folder, or a loop device for Block): a Filesystem claim holds
the disk as KubeVirt's disk.img, a Block claim is the raw disk itself; each claim says
whether its disk is verified, and with which digest."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import Cluster, host_folder
from tests.cluster.harness.processes import wait_until
from tests.cluster.harness.provisioner import BACKING_ANNOTATION, STORAGE_CLASS
from tests.cluster.kubevirt import kubevirt_check
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_operator import (
    TERMINAL,
    migration,
    running_operator,
    submit,
    wait_phase,
)
from tests.worker.images import MiB, make_raw, raw_digest, same_content, to_vmdk

VERIFIED, DIGEST = "hyper2kvm.io/verified", "hyper2kvm.io/digest"
GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "golden"


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator") / "log") as process:
        yield process


def claim(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.kube.get(
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
    )
    return found


def source_disk(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A 64 MiB disk as a monolithicSparse VMDK on a host folder, and its source."""
    raw = make_raw(tmp_path / "web.raw", 64 * MiB, [(0, MiB), (40 * MiB, 3 * MiB)])
    disks = host_folder(tmp_path / "disks", writable=False)
    to_vmdk(raw, disks / "web.vmdk", "monolithicSparse")
    return raw, {"hostPath": {"path": str(disks / "web.vmdk")}}


def test_a_disk_written_into_a_filesystem_claim_the_operator_makes(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    cluster.require_local()
    raw, source = source_disk(tmp_path)
    output = {"claim": {"create": {"storageClassName": STORAGE_CLASS, "size": "512Mi"}}}
    disk = {"name": "root", "source": source, "output": output}
    submit(cluster, namespace, migration("web", cluster, [disk]))
    final = wait_phase(cluster, namespace, "web", TERMINAL, timeout=240)
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    made = claim(cluster, namespace, "web-root")
    assert "ownerReferences" not in made["metadata"]  # it outlives the job
    assert made["metadata"]["labels"]["hyper2kvm.io/job"] == "web"
    annotations = made["metadata"]["annotations"]
    assert annotations[VERIFIED] == "true"
    assert annotations["hyper2kvm.io/written-by"] == "web/1"
    assert annotations[DIGEST] == raw_digest(raw) == final["disks"][0]["digest"]
    assert final["disks"][0]["output"] == "claim:web-root"
    folder = Path(volume_of(cluster, made)["spec"]["local"]["path"])
    assert same_content(raw, folder / "disk.img", "raw", "qcow2")  # KubeVirt's layout


def test_a_disk_written_onto_a_block_claim_is_the_device_itself(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A claim the provisioner makes (a fresh device, reading as zero), and an existing one
    on a device full of old data the job writes into: both hold the disk byte for byte."""
    cluster.require_local()
    raw, source = source_disk(tmp_path)
    block = {"storageClassName": STORAGE_CLASS, "volumeMode": "Block", "size": "64Mi"}
    existing = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "old-device"},
        "spec": {**{k: v for k, v in block.items() if k != "size"},
                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "80Mi"}}},
    }  # fmt: skip
    cluster.kube.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", existing)
    old = device_of(cluster, namespace, "old-device")
    make_raw(old, 80 * MiB, [(0, 80 * MiB)], seed=99)  # old data, where the disk's zeros go
    disks = [
        {"name": "fresh", "source": source,
         "output": {"claim": {"create": block}, "format": "raw"}},
        {"name": "reused", "source": source,
         "output": {"claim": {"name": "old-device"}, "format": "raw"}},
    ]  # fmt: skip
    submit(cluster, namespace, migration("web", cluster, disks))
    final = wait_phase(cluster, namespace, "web", TERMINAL, timeout=240)
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    expected = raw.read_bytes()
    for name in ("web-fresh", "old-device"):
        annotations = claim(cluster, namespace, name)["metadata"]["annotations"]
        assert (annotations[VERIFIED], annotations[DIGEST]) == ("true", raw_digest(raw)), name
        with device_of(cluster, namespace, name).open("rb") as device:
            assert device.read(64 * MiB) == expected, name


def volume_of(cluster: Cluster, made: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = cluster.kube.get(
        f"/api/v1/persistentvolumes/{made['spec']['volumeName']}"
    )
    return found


def device_of(cluster: Cluster, namespace: str, name: str) -> Path:
    """The file behind a Block claim's loop device (the provisioner's volume)."""

    def bound() -> dict[str, Any] | None:
        found = claim(cluster, namespace, name)
        return found if found.get("spec", {}).get("volumeName") else None

    made = wait_until(bound, timeout=60, what=f"claim {name} bound")
    return Path(volume_of(cluster, made)["metadata"]["annotations"][BACKING_ANNOTATION])


def test_an_ova_ends_as_the_kubevirt_vm_its_ovf_describes(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    kubevirt_vms: None,
    tmp_path: Path,
) -> None:
    """The worker reads the OVA's OVF; the operator makes the VirtualMachine it describes
    (EFI with secure boot, the OVF's MACs) over the claims of the job's disks."""
    cluster.require_local()
    raw = make_raw(tmp_path / "web.raw", 64 * MiB, [(0, MiB), (40 * MiB, 3 * MiB)])
    disks = host_folder(tmp_path / "disks", writable=False)
    streams = {
        name: to_vmdk(raw, tmp_path / name, "streamOptimized")
        for name in ("web01-disk1.vmdk", "web01-disk2.vmdk")
    }
    descriptor = (GOLDEN / "web01.ovf").read_text()
    for index, stream in enumerate(streams.values(), start=1):
        declared = re.search(rf'ovf:id="file{index}" ovf:size="\d+"', descriptor)
        assert declared is not None
        descriptor = descriptor.replace(
            declared[0], f'ovf:id="file{index}" ovf:size="{stream.stat().st_size}"'
        )
    descriptor = re.sub(r'ovf:capacity="\d+" ovf:capacityAllocationUnits="[^"]+"',
                        'ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20"',
                        descriptor)  # fmt: skip
    descriptor = re.sub(r'ovf:populatedSize="\d+"', "", descriptor)
    with tarfile.open(disks / "web01.ova", "w", format=tarfile.USTAR_FORMAT) as tar:
        data = descriptor.encode()
        info = tarfile.TarInfo("web01.ovf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, stream in streams.items():
            tar.add(stream, arcname=name)
    (disks / "web01.ova").chmod(0o644)
    job_disks = [
        {"name": f"d{index}",
         "source": {"ova": {"hostPath": {"path": str(disks / "web01.ova")}, "disk": member}},
         "output": {"claim": {"create": {"storageClassName": STORAGE_CLASS, "size": "256Mi"}}}}
        for index, member in ((2, "web01-disk2.vmdk"), (1, "web01-disk1.vmdk"))
    ]  # fmt: skip
    networks = [{"source": "VM Network", "target": "pod"},
                {"source": "backend-vlan20", "target": "multus:net/vlan20"}]  # fmt: skip
    body = migration("web", cluster, job_disks, target={"kubevirt": {"networks": networks}})
    submit(cluster, namespace, body)
    final = wait_phase(cluster, namespace, "web", TERMINAL, timeout=240)
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert final["kubevirt"]["origins"]["domain.firmware"] == "ovf"
    found = cluster.kube.get(
        f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{final['kubevirt']['name']}"
    )
    checked = kubevirt_check({k: found[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    assert checked.returncode == 0, checked.stderr
    template = found["spec"]["template"]["spec"]
    assert template["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    # The OVF's disk order, whatever order the job listed them in.
    claims = [v["persistentVolumeClaim"]["claimName"] for v in template["volumes"]]
    assert claims == ["web-d1", "web-d2"]
    macs = [i["macAddress"] for i in template["domain"]["devices"]["interfaces"]]
    assert macs == ["00:50:56:ab:12:34", "00:50:56:ab:56:78"]
