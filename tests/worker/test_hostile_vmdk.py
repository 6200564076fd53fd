"""A hostile VMDK cannot make qemu read what the worker's checks refused.

qemu's vmdk driver follows names from inside an image by rules of its own: a
parentFileNameHint whatever parentCID says (found anywhere in the text, a comment
included), `json:` pseudo-names, absolute paths. The worker opens every file itself and
hands qemu those open files only; where its reading and qemu's would differ, it refuses.
Each test plants another disk's data (or a host file) where a trick would lead qemu, and
checks both the refusal and that none of it reached an output.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hyper2kvm_worker.protocol import FileSource
from hyper2kvm_worker.sources import open_source
from hyper2kvm_worker.tools import ToolRunner
from tests import requirements
from tests.worker.conftest import RunWorker, assert_one_line_error, leftovers
from tests.worker.images import MiB, make_raw, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

PERMANENT = 3
SECRET = b"ANOTHER-TENANTS-DISK-" * 40


def with_embedded_descriptor(vmdk: Path, edit: str) -> Path:
    """Rewrite the descriptor embedded in a monolithicSparse file in place (same area, NUL
    padded), with `edit` inserted after createType: the data offsets do not move."""
    data = bytearray(vmdk.read_bytes())
    offset = int.from_bytes(data[28:36], "little") * 512
    size = int.from_bytes(data[36:44], "little") * 512
    text = data[offset : offset + size].split(b"\x00", 1)[0].decode()
    text = text.replace(
        'createType="monolithicSparse"\n', f'createType="monolithicSparse"\n{edit}\n'
    )
    encoded = text.encode()
    assert len(encoded) <= size
    data[offset : offset + size] = encoded + bytes(size - len(encoded))
    vmdk.write_bytes(bytes(data))
    return vmdk


@pytest.fixture
def secret_disk(tmp_path: Path) -> Path:
    """A VMDK of someone else's, whose content no trick may copy into our output."""
    raw = tmp_path / "secret.raw"
    with raw.open("wb") as stream:
        stream.truncate(4 * MiB)
        stream.write(SECRET)
    return to_vmdk(raw, tmp_path / "secret.vmdk", "monolithicSparse")


@pytest.fixture
def empty_child(tmp_path: Path) -> Path:
    """Our own disk: 4 MiB of unallocated grains, so any parent qemu opened would show."""
    raw = make_raw(tmp_path / "empty.raw", 4 * MiB, [])
    volume = tmp_path / "volume"
    volume.mkdir()
    return to_vmdk(raw, volume / "disk.vmdk", "monolithicSparse")


@pytest.mark.parametrize(
    "hint",
    [
        'parentFileNameHint="{secret}"',  # an absolute name, with parentCID=ffffffff
        '# parentFileNameHint="{secret}"',  # in a comment: qemu finds it all the same
        "parentFileNameHint=\"json:{{'driver':'vmdk','file':{{'driver':'file',"
        "'filename':'{secret}'}}}}\"",  # a json: pseudo-name, in qemu's quoting
    ],
)
def test_a_parent_only_qemu_would_follow_is_refused(
    hint: str, secret_disk: Path, empty_child: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    with_embedded_descriptor(empty_child, hint.format(secret=secret_disk))
    out = tmp_path / "out"
    out.mkdir()

    outcome = run_worker("convert", empty_child, out / "x.raw", "--format", "raw")

    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert "parent" in outcome.stderr
    assert leftovers(out) == []


def test_a_fifo_as_extent_is_refused_without_hanging(tmp_path: Path, run_worker: RunWorker) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    os.mkfifo(volume / "disk-flat.vmdk")
    descriptor = volume / "disk.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\nRW 2048 FLAT "disk-flat.vmdk" 0\n'
    )
    out = tmp_path / "out"
    out.mkdir()
    # If the worker opened the FIFO blocking, this writer would be what releases it.
    unblock = threading.Timer(30, lambda: (volume / "disk-flat.vmdk").open("wb").close())
    unblock.start()
    try:
        outcome = run_worker("convert", descriptor, out / "x.qcow2", timeout=20)
    finally:
        unblock.cancel()
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert "is a FIFO" in outcome.stderr
    assert leftovers(out) == []


def test_qemu_reads_only_the_files_the_worker_opened(tmp_path: Path) -> None:
    """A flat extent checked, then swapped for a symlink to a host file before qemu reads:
    qemu reads the file the worker opened, by its descriptor, not what the name leads to."""
    volume = tmp_path / "volume"
    volume.mkdir()
    flat = volume / "disk-flat.vmdk"
    flat.write_bytes(b"OURS" * (MiB // 4))
    (volume / "disk.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW {MiB // 512} FLAT "disk-flat.vmdk" 0\n'
    )
    outside = tmp_path / "host-file"
    outside.write_bytes(SECRET + bytes(MiB - len(SECRET)))
    source = FileSource(root=str(volume), path="disk.vmdk")
    copy = tmp_path / "copy.raw"
    runner = ToolRunner()

    with open_source(source, runner) as opened:
        flat.rename(volume / ".kept")
        flat.symlink_to(outside)  # where a path-following qemu would now read
        done = runner.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", opened.image,
                           str(copy)])  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == b"OURS" * (MiB // 4)
