"""--skip-free-space: blocks no filesystem uses are taken as zero and not read; every file
the guest keeps is intact, and the result says how much was skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyper2kvm_worker.range_reader import AHEAD, BLOCK
from tests import requirements
from tests.worker.conftest import RunWorker
from tests.worker.http_server import serve
from tests.worker.images import MiB, raw_digest, run
from tests.worker.test_convert_formats import convert_ok

pytestmark = pytest.mark.needs(
    *requirements.WORKER_TOOLS, "guestfish", "kernel", "qemu-system-x86_64", "mkfs.ext4",
    "debugfs", "e2fsck",
)  # fmt: skip

SIZE = 128 * MiB


@pytest.fixture(scope="module")
def half_empty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 128 MiB ext4 disk holding a 24 MiB file, from which a 64 MiB file was deleted:
    its blocks are free but still hold its bytes, as on any disk that ever held more."""
    directory = tmp_path_factory.mktemp("guest")
    content = os.urandom(24 * MiB)
    files = directory / "files"
    files.mkdir()
    (files / "data.bin").write_bytes(content)
    (files / "deleted.bin").write_bytes(os.urandom(64 * MiB))
    disk = directory / "guest-flat.vmdk"
    with disk.open("wb") as stream:
        stream.truncate(SIZE)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", "-d", files, disk)
    run("debugfs", "-w", "-R", "rm /deleted.bin", disk)
    return disk, content


def file_in(image: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / "dumped"
    run("debugfs", "-R", f"dump /{name} {out}", image)
    return out.read_bytes()


def test_free_space_is_not_read_and_the_files_are_intact(
    half_empty: tuple[Path, bytes], tmp_path: Path, run_worker: RunWorker
) -> None:
    disk, content = half_empty
    output = tmp_path / "out.raw"
    served: list[int] = []
    with serve(disk.parent, served=served) as url:
        result = convert_ok(
            run_worker, f"{url}/{disk.name}", output, "--format", "raw", "--skip-free-space"
        )

    converted = result["disks"][0]
    assert converted["verified"]
    assert converted["digest"] == raw_digest(output)  # the digest is of what was written
    zeroed = converted["free_space_zeroed"]
    assert zeroed >= 64 * MiB, zeroed  # the deleted file's blocks, at least
    # What is not free, and what the reader fetched ahead of the end of the data.
    assert sum(served) <= SIZE - zeroed + (AHEAD + 2) * BLOCK, (sum(served), zeroed)
    assert file_in(output, "data.bin", tmp_path) == content
    run("e2fsck", "-fn", output)  # the filesystem is whole


def test_without_the_option_every_byte_is_read(
    half_empty: tuple[Path, bytes], tmp_path: Path, run_worker: RunWorker
) -> None:
    disk, _ = half_empty
    output = tmp_path / "out.raw"
    with serve(disk.parent) as url:
        result = convert_ok(run_worker, f"{url}/{disk.name}", output, "--format", "raw")
    assert "free_space_zeroed" not in result["disks"][0]
    assert result["disks"][0]["digest"] == raw_digest(disk)
