"""Reading a VMDK's layout from disk (or from its first bytes) and refusing unsafe ones.

Everything qemu will open is listed, opened and checked here first: the descriptor, every
extent file, and every parent in a snapshot chain, each confined to the descriptor's own
directory with symlinks resolved, and pinned (pinned.py): qemu is then given exactly these
open files (qemu_spec.py), so what it reads is what was checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.pinned import PinnedFiles

HEAD_BYTES = 64 * 1024
_MAX_CHAIN = 32
DEVICE_CREATE_TYPES = frozenset(
    {"fullDevice", "partitionedDevice", "vmfsRaw", "vmfsRDM", "vmfsPassthroughRawDeviceMap"}
)


@dataclass(frozen=True)
class VmdkLayout:
    descriptor: vd.Descriptor
    header: vd.SparseHeader | None  # the top file's own header, for single-file disks
    files: tuple[Path, ...] = ()  # every local file qemu will open, top first, parents too
    # Local disks: the pinned descriptors, top file first then each file extent's (None for
    # a ZERO extent), and the parent's layout in a snapshot chain.
    fds: tuple[int | None, ...] = ()
    parent: VmdkLayout | None = None

    @property
    def single_file(self) -> bool:
        return self.header is not None


def parse_head(
    head: bytes, read_at: Callable[[int, int], bytes], name: str, size: int | None
) -> VmdkLayout:
    """The layout of a VMDK from its first bytes; `read_at(offset, length)` reads further,
    `size` is the file's (None when unknown)."""
    if vd.looks_like_descriptor(head):
        text = head.split(b"\x00", 1)[0]
        if len(text) >= HEAD_BYTES:
            text = read_at(0, vd.DESCRIPTOR_MAX_BYTES).split(b"\x00", 1)[0]
        return VmdkLayout(descriptor=_parse(text, name), header=None)
    header = vd.parse_sparse_header(head)
    if header is not None:
        problem = vd.sparse_header_problem(header, size)
        if problem:
            raise BadInput(Reason.INVALID_IMAGE, f"{name} is damaged: {problem}")
        if header.descriptor_sectors == 0:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"{name} is a bare sparse extent with no descriptor; give the descriptor file",
            )
        start = header.descriptor_offset_sectors * vd.SECTOR
        length = min(header.descriptor_sectors * vd.SECTOR, vd.DESCRIPTOR_MAX_BYTES)
        text = read_at(start, length).split(b"\x00", 1)[0]
        return VmdkLayout(descriptor=_parse(text, name), header=header)
    if vd.is_cowd(head):
        raise BadInput(Reason.UNSUPPORTED, f"{name} is an ESX 2 (COWD) sparse disk; unsupported")
    raise BadInput(
        Reason.INVALID_IMAGE,
        f"{name} is not a VMDK (no descriptor and no KDMV sparse header)",
    )


def _parse(text: bytes, name: str) -> vd.Descriptor:
    try:
        descriptor = vd.parse_descriptor(text.decode("utf-8", errors="strict"))
    except (vd.DescriptorError, UnicodeDecodeError) as error:
        raise BadInput(Reason.INVALID_IMAGE, f"{name}: bad VMDK descriptor: {error}") from None
    if descriptor.create_type in DEVICE_CREATE_TYPES:
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{name} maps a raw device (createType {descriptor.create_type}); "
            "copy the device to a file first",
        )
    problems = vd.unsafe_references(descriptor)
    if problems:
        raise BadInput(Reason.UNSAFE_PATH, f"{name}: refusing a descriptor with {problems[0]}")
    return descriptor


def load_local(path: Path, root: Path, pins: PinnedFiles) -> VmdkLayout:
    """The layout of a local VMDK (already confined to `root`), with every file it names
    confined too, pinned and checked through its descriptor."""
    return _load_local(path, root, pins, depth=0)


def _load_local(path: Path, root: Path, pins: PinnedFiles, depth: int) -> VmdkLayout:
    if depth > _MAX_CHAIN:
        raise BadInput(Reason.INVALID_IMAGE, f"{path}: snapshot chain deeper than {_MAX_CHAIN}")
    if path.is_dir():
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is a directory, not a VMDK")
    top = pins.open(path, root, "source")
    size = os.fstat(top).st_size

    def read_at(offset: int, length: int) -> bytes:
        return os.pread(top, max(0, min(length, size - offset)), offset)

    layout = parse_head(read_at(0, HEAD_BYTES), read_at, str(path), size)
    directory = path.parent
    files: list[Path] = [path]
    fds: list[int | None] = [top]
    if layout.header is not None:
        _check_grain_directory(path, top, layout.header)
    else:
        for extent in layout.descriptor.extents:
            if extent.file is None:
                fds.append(None)
                continue
            extent_path = confine(directory, extent.file, f"extent of {path.name}")
            fd = pins.open(extent_path, root, f"extent of {path.name}")
            files.append(extent_path)
            fds.append(fd)
            if extent.type == "SPARSE":
                _check_sparse_extent(extent_path, fd)
    parent = None
    if layout.descriptor.has_parent:
        if not layout.descriptor.parent_file:
            raise BadInput(Reason.INVALID_IMAGE, f"{path} has a parent but no parentFileNameHint")
        parent_path = confine(directory, layout.descriptor.parent_file, f"parent of {path.name}")
        parent = _load_local(parent_path, root, pins, depth + 1)
        files.extend(parent.files)
    return VmdkLayout(
        descriptor=layout.descriptor,
        header=layout.header,
        files=tuple(files),
        fds=tuple(fds),
        parent=parent,
    )


def _check_sparse_extent(path: Path, fd: int) -> None:
    header = vd.parse_sparse_header(os.pread(fd, 512, 0))
    if header is None:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is listed as SPARSE but has no KDMV header")
    problem = vd.sparse_header_problem(header, os.fstat(fd).st_size)
    if problem:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is damaged: {problem}")
    _check_grain_directory(path, fd, header)


def _check_grain_directory(path: Path, fd: int, header: vd.SparseHeader) -> None:
    if header.grain_directory_at_end:
        return  # streamOptimized: qemu-img check validates what the footer points to
    size = os.fstat(fd).st_size
    # Bounded by the file: sparse_header_problem refused a directory past its end.
    directory = os.pread(
        fd, header.grain_directory_entries * 4, header.gd_offset_sectors * vd.SECTOR
    )
    problem = vd.grain_directory_problem(header, directory, size)
    if problem:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is damaged: {problem}")
