"""Skipping the guest's free space (opt-in): blocks its filesystems do not use are taken as
zero and never read, as virt-v2v does.

A thin datastore disk read over HTTPS returns every byte, free or not. libguestfs mounts
the guest's filesystems on a copy-on-write overlay of the source and runs fstrim: the
overlay then marks as zero the clusters every filesystem discarded. Mounting writes too
(a journal, a superblock's mount count), so that overlay is not what is converted: a
second, empty overlay of the source gets only those zero clusters, written with qemu-io.
What the conversion reads is the source byte for byte, except clusters that were free in
every filesystem holding them, which read as zero; the digest is of that content, and the
result says how many bytes were taken as zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from hyper2kvm_worker import nbdkit
from hyper2kvm_worker.errors import Reason, TransientFailure
from hyper2kvm_worker.libguestfs import Drive, GuestFish, GuestFishError, choose_accelerator
from hyper2kvm_worker.qemu_img import MapEntry, QemuImg
from hyper2kvm_worker.sources import OpenedSource
from hyper2kvm_worker.tools import ToolRunner, require

# Filesystems whose free space fstrim can report through a discard.
TRIMMABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "ntfs", "f2fs"})


@dataclass(frozen=True)
class FreeSpace:
    source: OpenedSource  # the source with its free clusters reading as zero
    zeroed: int  # bytes taken as zero
    trimmed: tuple[str, ...]  # the filesystems that said what they do not use


def zero_ranges(entries: list[MapEntry]) -> list[tuple[int, int]]:
    """The (start, length) ranges the trimmed overlay itself marks as zero."""
    return [(e.start, e.length) for e in entries if e.depth == 0 and e.zero and not e.data]


@contextlib.contextmanager
def skipping_free_space(
    opened: OpenedSource, runner: ToolRunner, scratch: Path
) -> Iterator[FreeSpace]:
    require("qemu-io", "qemu-utils")
    qemu_img = QemuImg(runner)
    with contextlib.ExitStack() as stack:
        backing = opened.served_raw
        if backing is None:
            # The appliance's qemu inherits no descriptors, and decodes no VMDK it was not
            # checked to read: it reads through a qemu-nbd that opens the source as qemu-img
            # does. A raw source already on an NBD server is read there, by each reader on
            # a connection of its own (the range reader then fetches each block once).
            served = nbdkit.qemu_nbd_server(runner, opened.image, opened.format, opened.label)
            backing = stack.enter_context(served).uri
        probe = scratch / "trim.qcow2"
        qemu_img.create_overlay(backing, "raw", probe)
        trimmed = _trim(runner, probe)
        ranges = zero_ranges(qemu_img.map(str(probe), "qcow2"))
        probe.unlink()
        source = scratch / "source.qcow2"
        qemu_img.create_overlay(backing, "raw", source)
        _write_zeros(runner, source, ranges)
        yield FreeSpace(
            source=replace(
                opened, image=str(source), format="qcow2", data_file=None, served_raw=None
            ),
            zeroed=sum(length for _, length in ranges),
            trimmed=tuple(trimmed),
        )


def _trim(runner: ToolRunner, overlay: Path) -> list[str]:
    """fstrim every filesystem it can on `overlay`; the ones it trimmed."""
    trimmed = []
    drive = Drive(str(overlay), "qcow2", discard=True)
    with GuestFish.open(runner, choose_accelerator(), [drive]) as fish:
        for line in fish.lines("list-filesystems"):
            device, _, kind = line.partition(": ")
            if kind.strip() not in TRIMMABLE:
                continue
            try:
                fish.call("mount", device, "/")
                fish.call("fstrim", "/")
                trimmed.append(f"{device} ({kind.strip()})")
            except GuestFishError:
                pass  # a filesystem that cannot be mounted keeps every block: nothing skipped
            finally:
                with contextlib.suppress(GuestFishError):
                    fish.call("umount-all")
    return trimmed


def _write_zeros(runner: ToolRunner, image: Path, ranges: list[tuple[int, int]]) -> None:
    """Mark `ranges` of `image` as zero clusters (metadata only: nothing is written out)."""
    script = "".join(f"write -z -u {start} {length}\n" for start, length in ranges)
    if not script:
        return
    commands = image.with_suffix(".qemu-io")
    commands.write_text(script)
    done = runner.run(["sh", "-c", 'exec qemu-io -f qcow2 "$1" < "$2"', "qemu-io",
                       str(image), str(commands)])  # fmt: skip
    said = f"{done.stdout}\n{done.stderr}"
    if done.returncode != 0 or "failed" in said:
        raise TransientFailure(
            Reason.TOOL_FAILED, f"qemu-io could not mark free space as zero: {said[-300:]}"
        )
