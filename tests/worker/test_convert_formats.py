"""Every VMDK layout users bring converts with identical content and the expected digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import requirements
from tests.worker.conftest import RunWorker, leftovers
from tests.worker.http_server import serve
from tests.worker.images import (
    GiB,
    MiB,
    make_ova,
    make_raw,
    make_vmfs,
    raw_digest,
    run,
    same_content,
    to_vmdk,
)

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

SUBFORMATS = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
]


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Just over 2 GiB, so twoGbMaxExtent* layouts get two extents; data straddles the split."""
    directory = tmp_path_factory.mktemp("big")
    chunks = [(0, MiB), (700 * MiB, 3 * MiB), (2 * GiB - MiB, 2 * MiB), (2 * GiB + 60 * MiB, MiB)]
    return make_raw(directory / "disk.raw", 2 * GiB + 64 * MiB, chunks)


def convert_ok(
    run_worker: RunWorker, source: Path | str, output: Path, *extra: str
) -> dict[str, Any]:
    outcome = run_worker("convert", source, output, "--json", *extra)
    assert outcome.returncode == 0, outcome.stderr
    result: dict[str, Any] = outcome.result()
    assert result["state"] == "succeeded"
    return result


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_every_subformat_converts_to_identical_qcow2(
    subformat: str, big_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(big_raw, tmp_path / "disk.vmdk", subformat)
    if subformat.startswith("twoGb"):
        assert (
            len(
                json.loads(run("qemu-img", "info", "--output=json", vmdk))["format-specific"][
                    "data"
                ]["extents"]
            )
            == 2
        )
    output = tmp_path / "out" / "disk.qcow2"
    output.parent.mkdir()

    result = convert_ok(run_worker, vmdk, output)

    assert same_content(big_raw, output, "raw", "qcow2")
    disk = result["disks"][0]
    assert disk["digest"] == raw_digest(big_raw)
    assert disk["verified"] is True
    info = json.loads(run("qemu-img", "info", "--output=json", output))
    assert info["format-specific"]["data"]["compat"] == "1.1"
    assert leftovers(output.parent) == ["disk.qcow2"]


def test_esxi_datastore_disk_converts(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    descriptor = make_vmfs(small_raw, tmp_path, "esxi")
    output = tmp_path / "esxi.raw.out"

    result = convert_ok(run_worker, descriptor, output, "--format", "raw")

    assert same_content(small_raw, output, "raw", "raw")
    assert result["disks"][0]["digest"] == raw_digest(small_raw)


def test_ova_disk_is_read_in_place(small_raw: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    stream = to_vmdk(small_raw, tmp_path / "disk1.vmdk", "streamOptimized")
    ova = make_ova({"vm-disk1.vmdk": stream}, tmp_path / "vm.ova")
    stream.unlink()
    output = tmp_path / "out.qcow2"

    result = convert_ok(run_worker, ova, output)

    assert same_content(small_raw, output, "raw", "qcow2")
    assert result["disks"][0]["digest"] == raw_digest(small_raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qcow2", "small.raw", "vm.ova"]


def test_ova_with_several_disks_needs_a_name(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    first = to_vmdk(small_raw, tmp_path / "a.vmdk", "streamOptimized")
    second = make_raw(tmp_path / "b.raw", 8 * MiB, [(0, MiB)], seed=7)
    second_vmdk = to_vmdk(second, tmp_path / "b.vmdk", "streamOptimized")
    ova = make_ova({"a.vmdk": first, "b.vmdk": second_vmdk}, tmp_path / "two.ova")

    refused = run_worker("convert", ova, tmp_path / "x.qcow2")
    assert refused.returncode == 3
    assert "name one" in refused.stderr

    result = convert_ok(run_worker, ova, tmp_path / "b.qcow2", "--ova-disk", "b.vmdk")
    assert result["disks"][0]["digest"] == raw_digest(second)


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_http_source_converts(
    subformat: str, small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    served = tmp_path / "www"
    served.mkdir()
    to_vmdk(small_raw, served / "disk.vmdk", subformat)
    output = tmp_path / "http.qcow2"

    with serve(served) as url:
        result = convert_ok(run_worker, f"{url}/disk.vmdk", output)

    assert same_content(small_raw, output, "raw", "qcow2")
    assert result["disks"][0]["digest"] == raw_digest(small_raw)


def test_http_missing_file_is_reported(tmp_path: Path, run_worker: RunWorker) -> None:
    with serve(tmp_path) as url:
        outcome = run_worker("convert", f"{url}/nope.vmdk", tmp_path / "x.qcow2")
    assert outcome.returncode in (3, 75)
    assert "Traceback" not in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.qcow2").exists()


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [
        ("qcow2", ["--compression", "zstd"]),
        ("qcow2", ["--compression", "zlib"]),
        ("qcow2", ["--preallocation", "metadata"]),
        ("qcow2", ["--preallocation", "falloc"]),
        ("raw", ["--preallocation", "falloc"]),
        ("raw", []),
    ],
)
def test_output_options(
    fmt: str, extra: list[str], small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    output = tmp_path / f"out.{fmt}"

    result = convert_ok(run_worker, vmdk, output, "--format", fmt, *extra)

    assert same_content(small_raw, output, "raw", fmt)
    assert result["disks"][0]["digest"] == raw_digest(small_raw)
    if "zstd" in extra:
        info = json.loads(run("qemu-img", "info", "--output=json", output))
        assert info["format-specific"]["data"]["compression-type"] == "zstd"


def test_snapshot_chain_is_flattened(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    to_vmdk(small_raw, tmp_path / "base.vmdk", "monolithicSparse")
    child = tmp_path / "child.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
    run("qemu-io", "-c", "write -P 0x5a 1M 1M", child)
    expected = tmp_path / "expected.raw"
    run("qemu-img", "convert", "-O", "raw", child, expected)

    result = convert_ok(run_worker, child, tmp_path / "flat.qcow2")

    assert same_content(expected, tmp_path / "flat.qcow2", "raw", "qcow2")
    assert result["disks"][0]["digest"] == raw_digest(expected)


def test_unverified_convert_has_no_digest(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    result = convert_ok(run_worker, vmdk, tmp_path / "fast.qcow2", "--no-verify")
    assert result["disks"][0]["verified"] is False
    assert "digest" not in result["disks"][0]
    assert same_content(small_raw, tmp_path / "fast.qcow2", "raw", "qcow2")


def test_human_output_names_the_result(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    outcome = run_worker("convert", vmdk, tmp_path / "h.qcow2")
    assert outcome.returncode == 0
    assert outcome.stdout.startswith(f"{tmp_path / 'h.qcow2'}: qcow2, 64.0 MiB virtual")
    assert raw_digest(small_raw) in outcome.stdout
