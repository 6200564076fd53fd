"""A job's result says what describes the VM, when something beside its disks does: the OVF
of the OVA a disk comes from, or the one .vmx in the folder of the disk files."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from tests.worker.conftest import run_one_disk_job
from tests.worker.images import to_vmdk

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "golden"


def test_a_vmx_beside_the_disk_describes_the_vm(small_raw: Path, tmp_path: Path) -> None:
    folder = tmp_path / "db01"
    folder.mkdir()
    to_vmdk(small_raw, folder / "db01.vmdk", "monolithicSparse")
    shutil.copy(GOLDEN / "db01.vmx", folder / "db01.vmx")
    outcome = run_one_disk_job(tmp_path, {"kind": "file", "root": str(tmp_path),
                                          "path": "db01/db01.vmdk"})  # fmt: skip
    assert outcome.returncode == 0, outcome.stderr
    hardware = outcome.result()["hardware"]
    assert (hardware["described_by"], hardware["cpus"], hardware["memory_bytes"]) == (
        "vmx", 2, 3072 << 20,
    )  # fmt: skip
    assert [d["file"] for d in hardware["disks"]] == ["db01.vmdk", "db01_1.vmdk"]
    assert hardware["nics"][0]["mac"] == "00:0c:29:3e:5f:01"


def test_two_vmx_files_describe_nothing_and_a_broken_one_is_said(
    small_raw: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "vm"
    folder.mkdir()
    to_vmdk(small_raw, folder / "disk.vmdk", "monolithicSparse")
    for name in ("a.vmx", "b.vmx"):
        shutil.copy(GOLDEN / "db01.vmx", folder / name)
    source = {"kind": "file", "root": str(tmp_path), "path": "vm/disk.vmdk"}
    outcome = run_one_disk_job(tmp_path / "two", source)
    assert outcome.returncode == 0, outcome.stderr
    assert "hardware" not in outcome.result()  # which one? neither is guessed

    (folder / "b.vmx").unlink()
    (folder / "a.vmx").write_bytes(b"\xff" * (2 << 20))  # beyond what a .vmx may be
    outcome = run_one_disk_job(tmp_path / "broken", source)
    assert outcome.returncode == 0, outcome.stderr  # the migration goes on
    assert "hardware" not in outcome.result()
    notes = [e["message"] for e in outcome.events() if e.get("type") == "log"]
    assert any("the VM's description was not read" in note for note in notes), notes


def test_the_ovf_of_an_ova_describes_the_vm(small_raw: Path, tmp_path: Path) -> None:
    stream = to_vmdk(small_raw, tmp_path / "disk1.vmdk", "streamOptimized")
    # The golden OVF (EFI, two disks, two NICs), declaring this disk's real sizes.
    descriptor = (GOLDEN / "web01.ovf").read_text()
    descriptor = descriptor.replace('ovf:size="1310720"', f'ovf:size="{stream.stat().st_size}"')
    descriptor = descriptor.replace(
        'ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30"',
        'ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20"',
    )
    with tarfile.open(tmp_path / "web01.ova", "w", format=tarfile.USTAR_FORMAT) as tar:
        data = descriptor.encode()
        info = tarfile.TarInfo("web01.ovf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(stream, arcname="web01-disk1.vmdk")
    source = {"kind": "ova", "root": str(tmp_path), "path": "web01.ova",
              "disk": "web01-disk1.vmdk"}  # fmt: skip
    outcome = run_one_disk_job(tmp_path, source)
    assert outcome.returncode == 0, outcome.stderr
    hardware = outcome.result()["hardware"]
    assert (hardware["described_by"], hardware["firmware"], hardware["secure_boot"]) == (
        "ovf", "efi", True,
    )  # fmt: skip
    assert [d["file"] for d in hardware["disks"]] == ["web01-disk1.vmdk", "web01-disk2.vmdk"]
    assert [n["mac"] for n in hardware["nics"]] == ["00:50:56:ab:12:34", "00:50:56:ab:56:78"]
