"""Bad input gets one clear line, a non-zero exit, and leaves nothing at the output path."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import requirements
from tests.worker.conftest import RunWorker, assert_one_line_error, leftovers
from tests.worker.images import run, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

PERMANENT = 3


def flat_descriptor(directory: Path, extent_name: str, sectors: int = 2048) -> Path:
    descriptor = directory / "evil.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW {sectors} FLAT "{extent_name}" 0\n'
    )
    return descriptor


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def test_missing_source(tmp_path: Path, out_dir: Path, run_worker: RunWorker) -> None:
    outcome = run_worker("convert", tmp_path / "absent.vmdk", out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "SourceNotFound")
    assert leftovers(out_dir) == []


def test_not_a_vmdk(tmp_path: Path, out_dir: Path, run_worker: RunWorker) -> None:
    junk = tmp_path / "junk.vmdk"
    junk.write_bytes(os.urandom(70000))
    outcome = run_worker("convert", junk, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "not a VMDK" in outcome.stderr
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_truncated_image(
    subformat: str, small_raw: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "cut.vmdk", subformat)
    os.truncate(vmdk, vmdk.stat().st_size // 2)
    outcome = run_worker("convert", vmdk, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert "damaged" in outcome.stderr
    assert leftovers(out_dir) == []


def test_corrupt_grain_directory(
    small_raw: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "bad.vmdk", "monolithicSparse")
    header = vmdk.read_bytes()[:512]
    gd_offset = int.from_bytes(header[56:64], "little") * 512  # gdOffset, in sectors
    with vmdk.open("r+b") as stream:
        stream.seek(gd_offset)
        stream.write(b"\xff" * 64)
    outcome = run_worker("convert", vmdk, out_dir / "x.qcow2")
    assert outcome.returncode == PERMANENT, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert leftovers(out_dir) == []


# A hostile or damaged KDMV header, field by field (offset in the header, value written):
# each is refused from the header alone, before anything is read where it points.
HOSTILE_HEADERS = {
    "unknown version": (4, 4, 99, "version 99"),
    "grain of zero sectors": (20, 8, 0, "grain size of 0"),
    "grain not a power of two": (20, 8, 3, "grain size of 3"),
    "huge grain tables": (44, 4, 100_000, "100000 entries"),
    "petabytes of capacity": (12, 8, 1 << 50, "more than any VMDK holds"),
    "directory far past the end": (56, 8, 1 << 40, "grain directory lies past the end"),
    "gigabytes of descriptor": (36, 8, 1 << 30, "descriptor would be"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_sparse_header_is_refused_as_bad_input(
    case: str, small_raw: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    offset, width, value, words = HOSTILE_HEADERS[case]
    vmdk = to_vmdk(small_raw, tmp_path / "hostile.vmdk", "monolithicSparse")
    with vmdk.open("r+b") as stream:
        stream.seek(offset)
        stream.write(value.to_bytes(width, "little"))
    for command in (("inspect",), ("convert",)):
        args = (vmdk, out_dir / "x.qcow2") if command == ("convert",) else (vmdk,)
        outcome = run_worker(*command, *args, timeout=60)
        assert_one_line_error(outcome, PERMANENT, "InvalidImage")  # never 1: not retried
        assert words in outcome.stderr
    assert leftovers(out_dir) == []


def test_missing_extent(tmp_path: Path, out_dir: Path, run_worker: RunWorker) -> None:
    descriptor = flat_descriptor(tmp_path, "gone-flat.vmdk")
    outcome = run_worker("convert", descriptor, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "SourceNotFound")
    assert "gone-flat.vmdk" in outcome.stderr


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside-flat.vmdk", "sub/../../x-flat.vmdk"])
def test_extent_path_that_leaves_the_directory(
    name: str, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    (tmp_path / "outside-flat.vmdk").write_bytes(b"secret" * 1000)
    source_dir = tmp_path / "vm"
    source_dir.mkdir()
    descriptor = flat_descriptor(source_dir, name)
    outcome = run_worker("convert", descriptor, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert leftovers(out_dir) == []


def test_extent_symlink_that_leaves_the_directory(
    tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 2048 * 512)
    source_dir = tmp_path / "vm"
    source_dir.mkdir()
    (source_dir / "disk-flat.vmdk").symlink_to(secret)
    descriptor = flat_descriptor(source_dir, "disk-flat.vmdk")
    outcome = run_worker("convert", descriptor, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert leftovers(out_dir) == []


def test_protocol_style_extent_name_is_refused(
    tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    descriptor = flat_descriptor(tmp_path, "nbd:127.0.0.1:10809")
    outcome = run_worker("convert", descriptor, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")


def test_absolute_parent_is_refused(
    small_raw: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    base = to_vmdk(small_raw, tmp_path / "base.vmdk", "monolithicSparse")
    child = tmp_path / "child.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", str(base), "-F", "vmdk", child)
    outcome = run_worker("convert", child, out_dir / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert "parent" in outcome.stderr


def test_existing_output_is_kept_without_overwrite(
    small_raw: Path, tmp_path: Path, out_dir: Path, run_worker: RunWorker
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    existing = out_dir / "x.qcow2"
    existing.write_bytes(b"precious")
    outcome = run_worker("convert", vmdk, existing)
    assert_one_line_error(outcome, PERMANENT, "OutputExists")
    assert existing.read_bytes() == b"precious"
    assert leftovers(out_dir) == ["x.qcow2"]

    replaced = run_worker("convert", vmdk, existing, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert existing.read_bytes()[:4] == b"QFI\xfb"


def test_output_directory_missing(small_raw: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    outcome = run_worker("convert", vmdk, tmp_path / "no" / "such" / "x.qcow2")
    assert_one_line_error(outcome, PERMANENT, "OutputNotWritable")


def test_incompatible_options(small_raw: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    outcome = run_worker(
        "convert", vmdk, tmp_path / "x.raw", "--format", "raw", "--compression", "zstd"
    )
    assert_one_line_error(outcome, PERMANENT, "InvalidJob")
    assert "compression needs format qcow2" in outcome.stderr


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_too_small_output_volume(small_raw: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    with tmpfs(tmp_path / "tiny", "size=4m") as tiny:
        outcome = run_worker("convert", vmdk, tiny / "x.qcow2")
        assert_one_line_error(outcome, PERMANENT, "InsufficientSpace")
        assert leftovers(tiny) == []


def test_read_only_output_volume(small_raw: Path, tmp_path: Path, run_worker: RunWorker) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    with tmpfs(tmp_path / "ro", "size=64m,ro") as read_only:
        outcome = run_worker("convert", vmdk, read_only / "x.qcow2")
        assert_one_line_error(outcome, PERMANENT, "OutputNotWritable")
        assert leftovers(read_only) == []


def test_bad_job_file_writes_a_result(tmp_path: Path, run_worker: RunWorker) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"name": "j", "operation": "convert", "disks": [], "colour": "red"}')
    result = tmp_path / "result.json"
    outcome = run_worker("run", "--job", job, "--result", result, "--no-listen")
    assert_one_line_error(outcome, PERMANENT, "InvalidJob")
    assert '"state":"failed"' in result.read_text()
    assert '"permanent":true' in result.read_text()
