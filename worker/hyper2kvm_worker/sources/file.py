"""A VMDK on a mounted volume (hostPath or PVC): every file it names confined, pinned and
checked, and qemu given only those open files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from hyper2kvm_worker import qemu_spec
from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.pinned import PinnedFiles, fd_path
from hyper2kvm_worker.protocol import FileSource, Limits
from hyper2kvm_worker.sources.base import VMDK, OpenedSource, all_fds
from hyper2kvm_worker.tools import ToolRunner
from hyper2kvm_worker.vmdk_file import VmdkLayout, load_local


class FileDriver:
    kind: ClassVar[str] = "file"

    @contextlib.contextmanager
    def open(
        self, source: FileSource, runner: ToolRunner, limits: Limits
    ) -> Iterator[OpenedSource]:
        root = Path(source.root)
        path = confine(root, source.path, "source")
        with PinnedFiles() as pins, tempfile.TemporaryDirectory(prefix="hyper2kvm-src-") as tmp:
            layout = load_local(path, root, pins)
            stored = sum(os.fstat(fd).st_blocks * 512 for fd in all_fds(layout))
            image = qemu_spec.as_filename(_local_node(layout, Path(tmp)))
            yield OpenedSource(
                image, VMDK, layout, str(path), True, stored_bytes=stored,
                files=layout.files, data_file=_data_file(layout),
            )  # fmt: skip


def _local_node(layout: VmdkLayout, scratch: Path) -> qemu_spec.Node:
    """qemu's options for a local VMDK: its pinned files, its pinned parents, nothing else.

    A single-file disk with no parent is read from its descriptor as it is. Otherwise every
    level of the disk is described anew into `scratch` (private to the job): each extent
    names its pinned file, and the only parent named is the next level's new description.
    """
    top = layout.fds[0]
    assert top is not None
    if layout.single_file and layout.parent is None:
        return qemu_spec.vmdk(qemu_spec.local_file(fd_path(top)))
    written = _describe(layout, scratch)
    return qemu_spec.vmdk(qemu_spec.local_file(str(written)), parent_in_descriptor=True)


def _describe(layout: VmdkLayout, scratch: Path) -> Path:
    parent = str(_describe(layout.parent, scratch)) if layout.parent else None
    descriptor, create_type = layout.descriptor, None
    if layout.header is not None:
        # One sparse extent, the file itself, as large as its header says (qemu reads no
        # extent list from an embedded descriptor); in a descriptor file of its own, qemu
        # takes that as twoGbMaxExtentSparse.
        whole = vd.Extent("RW", layout.header.capacity_sectors, "SPARSE", "self")
        descriptor = dataclasses.replace(descriptor, extents=(whole,))
        create_type = "twoGbMaxExtentSparse"
        names: list[str | None] = [fd_path(layout.fds[0]) if layout.fds[0] is not None else None]
    else:
        names = [fd_path(fd) if fd is not None else None for fd in layout.fds[1:]]
    text = vd.render_descriptor(descriptor, names, create_type=create_type, parent=parent)
    written = scratch / f"level-{layout.fds[0]}.vmdk"
    written.write_text(text, encoding="utf-8")
    return written


def _data_file(layout: VmdkLayout) -> str | None:
    """The one pinned file holding all of the source's data, when there is one."""
    if layout.parent is not None:
        return None
    if layout.single_file:
        return fd_path(layout.fds[0]) if layout.fds[0] is not None else None
    file_extents = [fd for fd in layout.fds[1:] if fd is not None]
    if len(layout.descriptor.extents) == 1 and len(file_extents) == 1:
        return fd_path(file_extents[0])
    return None
