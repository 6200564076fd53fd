"""Block devices as outputs (a KubeVirt Block PVC in a Pod): checked, scanned, read back.

A disk is written onto its device in place, raw: there is no hidden name to rename and no
second copy to fall back on, so every check is made before the first write, and a failed
or cancelled job leaves the device partly written (the job's retry writes it whole again).
Only the first `virtual size` bytes belong to the disk; the rest of the device is left as
it was, and every read of it (the zero scan, the digest) stops there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hyper2kvm_worker import qemu_spec
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.protocol import DeviceOutput
from hyper2kvm_worker.tools import CancelToken

CHUNK = 4 << 20
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class BlockDevice:
    """A device that passed every check for a disk of `needed` bytes to be written onto it."""

    path: Path  # the device node itself, every symlink resolved
    size: int
    rdev: int  # the device's number: two names of one device, or a filesystem on it

    def commit(self) -> None:
        """Nothing to do: the disk was written in place."""

    def discard(self) -> None:
        """Nothing to do: what was written cannot be taken back, and nothing else was made."""

    def check_not_a_source(self, source_files: tuple[Path, ...]) -> None:
        """Refuse a device that holds a source: writing it would destroy what it reads."""
        for source in source_files:
            info = source.stat()
            if source.resolve() == self.path or info.st_dev == self.rdev:
                raise BadInput(
                    Reason.INVALID_JOB,
                    f"device {self.path} holds source file {source}; a source is never "
                    "overwritten, choose another device",
                )


def check_device(output: DeviceOutput, needed: int) -> BlockDevice:
    """The output's device, after every check that can be made before writing it."""
    given = Path(output.device)
    try:
        path = given.resolve(strict=True)
        info = path.stat()
    except OSError as error:
        raise BadInput(
            Reason.OUTPUT_NOT_WRITABLE, f"device {given}: {error.strerror}; check the volume"
        ) from None
    if not stat.S_ISBLK(info.st_mode):
        named = given if path == given else f"{given} ({path})"
        raise BadInput(
            Reason.INVALID_JOB,
            f"device {named} is not a block device; give a Block volume's device "
            "(volumeMode: Block), or a file output for a file",
        )
    size = _writable_size(path)
    if size < needed:
        raise BadInput(
            Reason.INSUFFICIENT_SPACE,
            f"device {given} has {size} bytes ({size / (1 << 30):.2f} GiB) but the disk "
            f"needs {needed} bytes ({needed / (1 << 30):.2f} GiB); give a larger device",
        )
    return BlockDevice(path=path, size=size, rdev=info.st_rdev)


def _writable_size(path: Path) -> int:
    # O_EXCL on a block device fails with EBUSY while it is mounted or claimed: a disk
    # written under a mounted filesystem would be corrupted by both.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as error:
        busy = error.errno == errno.EBUSY
        why = "it is in use (mounted, or held by another program)" if busy else error.strerror
        raise BadInput(
            Reason.OUTPUT_NOT_WRITABLE, f"device {path} cannot be written: {why}"
        ) from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def reads_as_zero(device: Path, length: int, cancel: CancelToken) -> bool:
    """True when the device's first `length` bytes are all zero; reading stops at the first
    byte that is not. A fresh volume is often zero, but storage does not promise it."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        position = 0
        while position < length:
            cancel.raise_if_cancelled()
            data = os.pread(fd, min(CHUNK, length - position), position)
            if not data:
                return False  # shorter than checked: the write will fail and say so
            if data != (_ZEROS if len(data) == CHUNK else bytes(len(data))):
                return False
            position += len(data)
        # The scan's pages would only push useful ones out of the cache.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


def readback_image(device: Path, length: int) -> str:
    """qemu's options for the disk on `device`: its first `length` bytes, raw."""
    node = {
        "driver": "raw",
        "size": length,
        "file": {"driver": "host_device", "filename": str(device)},
    }
    return qemu_spec.as_filename(node)
