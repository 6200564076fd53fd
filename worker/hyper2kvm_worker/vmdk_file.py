"""Reading a VMDK's layout from disk (or from its first bytes) and refusing unsafe ones.

Everything qemu-img will open is listed and checked here first: the descriptor, every
extent file, and every parent in a snapshot chain, each confined to the descriptor's own
directory with symlinks resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.paths import confine

HEAD_BYTES = 64 * 1024
_MAX_CHAIN = 32
DEVICE_CREATE_TYPES = frozenset(
    {"fullDevice", "partitionedDevice", "vmfsRaw", "vmfsRDM", "vmfsPassthroughRawDeviceMap"}
)


@dataclass(frozen=True)
class VmdkLayout:
    descriptor: vd.Descriptor
    header: vd.SparseHeader | None  # the top file's own header, for single-file disks
    files: tuple[Path, ...] = ()  # every local file qemu will open, top first

    @property
    def single_file(self) -> bool:
        return self.header is not None


def parse_head(head: bytes, read_at: Callable[[int, int], bytes], name: str) -> VmdkLayout:
    """The layout of a VMDK from its first bytes; `read_at(offset, length)` reads further."""
    if vd.looks_like_descriptor(head):
        text = head.split(b"\x00", 1)[0]
        if len(text) >= HEAD_BYTES:
            text = read_at(0, vd.DESCRIPTOR_MAX_BYTES).split(b"\x00", 1)[0]
        return VmdkLayout(descriptor=_parse(text, name), header=None)
    header = vd.parse_sparse_header(head)
    if header is not None:
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


def load_local(path: Path) -> VmdkLayout:
    """The layout of a local VMDK (already confined), with all its files checked on disk."""
    return _load_local(path, depth=0)


def _load_local(path: Path, depth: int) -> VmdkLayout:
    if depth > _MAX_CHAIN:
        raise BadInput(Reason.INVALID_IMAGE, f"{path}: snapshot chain deeper than {_MAX_CHAIN}")
    try:
        with path.open("rb") as stream:
            head = stream.read(HEAD_BYTES)

            def read_at(offset: int, length: int) -> bytes:
                stream.seek(offset)
                return stream.read(length)

            layout = parse_head(head, read_at, str(path))
    except IsADirectoryError:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is a directory, not a VMDK") from None
    except PermissionError:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"{path} is not readable (permission)") from None
    directory = path.parent
    files = [path]
    if layout.header is not None:
        _check_grain_directory(path, layout.header)
    else:
        for extent in layout.descriptor.extents:
            if extent.file is not None:
                extent_path = confine(directory, extent.file, f"extent of {path.name}")
                files.append(extent_path)
                if extent.type == "SPARSE":
                    _check_sparse_extent(extent_path)
    if layout.descriptor.has_parent:
        if not layout.descriptor.parent_file:
            raise BadInput(Reason.INVALID_IMAGE, f"{path} has a parent but no parentFileNameHint")
        parent_path = confine(directory, layout.descriptor.parent_file, f"parent of {path.name}")
        files.extend(_load_local(parent_path, depth + 1).files)
    return VmdkLayout(descriptor=layout.descriptor, header=layout.header, files=tuple(files))


def _check_sparse_extent(path: Path) -> None:
    with path.open("rb") as stream:
        header = vd.parse_sparse_header(stream.read(512))
    if header is None:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is listed as SPARSE but has no KDMV header")
    _check_grain_directory(path, header)


def _check_grain_directory(path: Path, header: vd.SparseHeader) -> None:
    if header.grain_directory_at_end:
        return  # streamOptimized: qemu-img check validates what the footer points to
    size = path.stat().st_size
    with path.open("rb") as stream:
        stream.seek(header.gd_offset_sectors * vd.SECTOR)
        directory = stream.read(header.grain_directory_entries * 4)
    problem = vd.grain_directory_problem(header, directory, size)
    if problem:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is damaged: {problem}")
