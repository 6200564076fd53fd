"""An OVA is read for what it says of itself: its manifest's digests, its OVF's sizes."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from hyper2kvm_worker import inspection
from hyper2kvm_worker.protocol import OvaSource
from hyper2kvm_worker.tools import ToolRunner
from tests import requirements
from tests.worker.conftest import (
    RunWorker,
    assert_one_line_error,
    leftovers,
    run_one_disk_job,
)
from tests.worker.images import (
    MiB,
    make_exported_ova,
    make_vmfs,
    manifest_line,
    raw_digest,
    same_content,
    to_vmdk,
)

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

PERMANENT = 3


@pytest.fixture
def stream(small_raw: Path, tmp_path: Path) -> Path:
    """A streamOptimized VMDK as VMware exports it: the disk an OVA holds."""
    return to_vmdk(small_raw, tmp_path / "disk1.vmdk", "streamOptimized")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_an_ova_matching_its_manifest_converts(
    algorithm: str,
    small_raw: Path,
    stream: Path,
    tmp_path: Path,
    out_dir: Path,
    run_worker: RunWorker,
) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream}, algorithm=algorithm)

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2", "--json")

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.result()["disks"][0]["digest"] == raw_digest(small_raw)
    assert same_content(out_dir / "web01.qcow2", small_raw, "qcow2", "raw")


@pytest.mark.parametrize("verify", [True, False])
def test_a_disk_differing_from_its_manifest_fails_and_writes_nothing(
    verify: bool, stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    # The manifest records other bytes than the disk holds: one digit of its digest altered.
    good = manifest_line("sha256", "web01-disk1.vmdk", stream.read_bytes())
    recorded = good.split("= ")[1].strip()
    altered = recorded[:-1] + ("0" if recorded[-1] != "0" else "1")
    untouched = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    ova = make_exported_ova(
        tmp_path / "vm.ova",
        {"web01-disk1.vmdk": stream},
        manifest=_descriptor_line(untouched) + good.replace(recorded, altered),
    )

    outcome = run_worker(
        "convert", ova, out_dir / "web01.qcow2", *([] if verify else ["--no-verify"])
    )

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "web01-disk1.vmdk" in outcome.stderr
    assert recorded in outcome.stderr and altered in outcome.stderr
    assert leftovers(out_dir) == []


def test_a_byte_changed_where_qemu_never_looks_is_caught(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    with tarfile.open(ova) as tar:
        start = tar.getmember("web01-disk1.vmdk").offset_data
    # The padding after the embedded descriptor's text (sectors 1-20): qemu reads the text
    # up to its first NUL, so this disk converts to the same bytes; only the manifest knows.
    with ova.open("r+b") as image:
        image.seek(start + 4608)
        assert image.read(1) == b"\0"
        image.seek(start + 4608)
        image.write(b"x")

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert f"web01-disk1.vmdk in {ova} is damaged: its SHA256 is" in outcome.stderr
    assert leftovers(out_dir) == []


def test_a_protocol_job_fails_on_a_manifest_mismatch(stream: Path, tmp_path: Path) -> None:
    untouched = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    wrong = manifest_line("sha512", "web01-disk1.vmdk", b"other bytes")
    make_exported_ova(
        tmp_path / "bad.ova",
        {"web01-disk1.vmdk": stream},
        manifest=_descriptor_line(untouched) + wrong,
    )

    outcome = run_one_disk_job(tmp_path, {"kind": "ova", "root": str(tmp_path), "path": "bad.ova"})

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "the manifest records" in outcome.stderr
    assert leftovers(tmp_path / "out") == []


def test_a_disk_named_twice_in_an_ova_is_refused(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    with tarfile.open(ova, "a") as tar:
        tar.add(stream, arcname="web01-disk1.vmdk")

    outcome = run_worker("convert", ova, out_dir / "w.qcow2", "--ova-disk", "web01-disk1.vmdk")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "2 files named 'web01-disk1.vmdk'" in outcome.stderr


def _descriptor_line(ova: Path) -> str:
    """The manifest line of the OVA's descriptor, as make_exported_ova wrote it."""
    with tarfile.open(ova) as tar:
        manifest = tar.extractfile("vm.mf")
        assert manifest is not None
        return manifest.read().decode().splitlines(keepends=True)[0]


def test_a_descriptor_differing_from_its_manifest_fails(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    disk_line = manifest_line("sha1", "web01-disk1.vmdk", stream.read_bytes())
    wrong = manifest_line("sha1", "vm.ovf", b"<Envelope/>")
    ova = make_exported_ova(
        tmp_path / "vm.ova", {"web01-disk1.vmdk": stream}, manifest=wrong + disk_line
    )

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "vm.ovf in" in outcome.stderr and "SHA1" in outcome.stderr
    assert leftovers(out_dir) == []


def test_a_manifest_not_listing_the_disk_is_refused(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    only_descriptor = _descriptor_line(ova)
    ova = make_exported_ova(
        tmp_path / "vm.ova", {"web01-disk1.vmdk": stream}, manifest=only_descriptor
    )

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "does not list web01-disk1.vmdk" in outcome.stderr
    assert leftovers(out_dir) == []


def test_an_ova_without_a_manifest_converts(
    small_raw: Path, stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream}, algorithm=None)

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2", "--json")

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.result()["disks"][0]["digest"] == raw_digest(small_raw)


def test_a_disk_member_shorter_than_declared_is_truncated(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    whole = stream.stat().st_size
    capacity = 64 * MiB
    os.truncate(stream, whole // 2)
    ova = make_exported_ova(
        tmp_path / "web01.ova",
        {"web01-disk1.vmdk": stream},
        algorithm=None,
        declared={"web01-disk1.vmdk": (whole, capacity)},
    )

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert (
        f"web01-disk1.vmdk in {ova} is truncated: it has {whole // 2} bytes, "
        f"the OVF declares {whole}"
    ) in outcome.stderr
    assert "nbd" not in outcome.stderr.lower() and "footer" not in outcome.stderr
    assert leftovers(out_dir) == []


def test_a_cut_ova_is_truncated(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    ova = make_exported_ova(tmp_path / "web01.ova", {"web01-disk1.vmdk": stream})
    # The disk is the last member: cutting the OVA cuts it below its own tar header's size.
    os.truncate(ova, ova.stat().st_size - 3 * stream.stat().st_size // 4)

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert re.search(r"web01-disk1\.vmdk in .*web01\.ova is truncated", outcome.stderr)
    assert leftovers(out_dir) == []


def test_a_disk_of_another_capacity_than_declared_is_refused(
    stream: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    size = stream.stat().st_size
    ova = make_exported_ova(
        tmp_path / "vm.ova",
        {"web01-disk1.vmdk": stream},
        declared={"web01-disk1.vmdk": (size, 128 * MiB)},
    )

    outcome = run_worker("convert", ova, out_dir / "web01.qcow2")

    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert f"holds a disk of {64 * MiB} bytes, the OVF declares {128 * MiB}" in outcome.stderr
    assert leftovers(out_dir) == []


def test_inspect_checks_the_manifest(stream: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    ova = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})

    outcome = run_worker("inspect", "--json", ova)
    assert outcome.returncode == 0, outcome.stderr
    assert json.loads(outcome.stdout)["integrity"] == {"web01-disk1.vmdk": "verified"}
    human = run_worker("inspect", ova)
    assert "manifest:         web01-disk1.vmdk verified" in human.stdout

    wrong = manifest_line("sha256", "web01-disk1.vmdk", b"other bytes")
    damaged = make_exported_ova(
        tmp_path / "bad.ova", {"web01-disk1.vmdk": stream}, manifest=_descriptor_line(ova) + wrong
    )
    refused = run_worker("inspect", damaged)
    assert_one_line_error(refused, PERMANENT, "InvalidImage")
    assert "web01-disk1.vmdk" in refused.stderr


def test_inspect_leaves_a_large_member_to_the_conversion(
    stream: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its manifest is wrong, but inspect does not read a member that large: convert would.
    monkeypatch.setattr(inspection, "CHECK_MAX_BYTES", 1024)
    untouched = make_exported_ova(tmp_path / "vm.ova", {"web01-disk1.vmdk": stream})
    wrong = manifest_line("sha256", "web01-disk1.vmdk", b"other bytes")
    make_exported_ova(
        tmp_path / "big.ova",
        {"web01-disk1.vmdk": stream},
        manifest=_descriptor_line(untouched) + wrong,
    )

    report = inspection.Inspector(ToolRunner()).inspect(
        OvaSource(root=str(tmp_path), path="big.ova")
    )

    assert report["integrity"] == {"web01-disk1.vmdk": "checked on convert"}


def test_inspect_reports_a_4k_logical_sector_size(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    descriptor = make_vmfs(small_raw, tmp_path, "native4k")
    descriptor.write_text(descriptor.read_text() + 'ddb.logicalSectorSize = "4096"\n')
    plain = make_vmfs(small_raw, tmp_path, "plain")

    outcome = run_worker("inspect", "--json", descriptor)
    assert outcome.returncode == 0, outcome.stderr
    assert json.loads(outcome.stdout)["logical_sector_size"] == 4096
    assert "logical sector:   4096" in run_worker("inspect", descriptor).stdout

    undeclared = run_worker("inspect", "--json", plain)
    assert json.loads(undeclared.stdout)["logical_sector_size"] is None
    assert "logical sector:   512 (not declared)" in run_worker("inspect", plain).stdout
