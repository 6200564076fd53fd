"""VMDK descriptor and sparse-header parsing, and the path checks made before qemu sees a file.

Pure code over text and bytes. qemu-img follows every extent and parent path a descriptor
names, so a hostile descriptor could make it copy any host file into the output image:
`unsafe_references` is the first line of defence (the second, on disk, resolves symlinks).
"""

from __future__ import annotations

import array
import re
import struct
import sys
from dataclasses import dataclass, field

SECTOR = 512
DESCRIPTOR_MAX_BYTES = 1 << 20  # real descriptors are a few hundred bytes
_SPARSE_MAGIC = b"KDMV"
_COWD_MAGIC = b"COWD"
_SPARSE_HEADER = struct.Struct("<IIIQQQQIQQQ?ccccH")
_FLAG_COMPRESSED = 1 << 16
_FLAG_MARKERS = 1 << 17
_NO_PARENT = 0xFFFFFFFF
_SECTOR_SIZES = frozenset({"512", "4096"})  # the only logical sector sizes VMware makes
_GD_AT_END = 0xFFFFFFFFFFFFFFFF  # streamOptimized: the directory follows the grains

_EXTENT_LINE = re.compile(
    r"^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Z]+)"
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$'
)
_KEY_VALUE = re.compile(r'^(?P<key>[A-Za-z0-9_.]+)\s*=\s*"?(?P<value>[^"]*)"?\s*$')

FILE_EXTENT_TYPES = frozenset({"FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"})
DEVICE_EXTENT_TYPES = frozenset({"VMFSRDM", "VMFSRAW"})  # raw device mappings: never followed
KNOWN_EXTENT_TYPES = FILE_EXTENT_TYPES | DEVICE_EXTENT_TYPES | {"ZERO"}


class DescriptorError(ValueError):
    """The text is not a VMDK descriptor qemu could use."""


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    type: str
    file: str | None
    offset_sectors: int = 0

    @property
    def size_bytes(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    extents: tuple[Extent, ...]
    cid: str | None = None
    parent_cid: str | None = None
    parent_file: str | None = None
    version: str | None = None
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def virtual_size(self) -> int:
        return sum(extent.size_bytes for extent in self.extents)

    @property
    def logical_sector_size(self) -> int | None:
        """What a 4Kn disk declares (`ddb.logicalSectorSize`); qemu-img drops it, so the
        guest on KVM sees 512-byte sectors unless the VM is told otherwise."""
        value = self.ddb.get("ddb.logicalSectorSize")
        return int(value) if value is not None else None

    @property
    def has_parent(self) -> bool:
        return self.parent_cid is not None and int(self.parent_cid, 16) != _NO_PARENT


@dataclass(frozen=True)
class SparseHeader:
    version: int
    flags: int
    capacity_sectors: int
    grain_sectors: int
    descriptor_offset_sectors: int
    descriptor_sectors: int
    compress_algorithm: int
    gt_entries: int = 512
    gd_offset_sectors: int = 0

    @property
    def grain_directory_entries(self) -> int:
        per_table = self.grain_sectors * self.gt_entries
        return -(-self.capacity_sectors // per_table) if per_table else 0

    @property
    def grain_directory_at_end(self) -> bool:
        return self.gd_offset_sectors == _GD_AT_END

    @property
    def stream_optimized(self) -> bool:
        return bool(self.flags & _FLAG_COMPRESSED and self.flags & _FLAG_MARKERS)


def looks_like_descriptor(head: bytes) -> bool:
    text = head.lstrip()
    return text.startswith(b"# Disk DescriptorFile") or (
        b"createType" in head[:4096] and b"\x00" not in head[:4096]
    )


def parse_descriptor(text: str) -> Descriptor:
    values: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[Extent] = []
    for raw_line in text.splitlines():
        line = raw_line.strip().rstrip("\x00")
        if not line or line.startswith("#"):
            continue
        extent = _EXTENT_LINE.match(line)
        if extent:
            extents.append(_extent(extent))
            continue
        pair = _KEY_VALUE.match(line)
        if pair is None:
            raise DescriptorError(f"unreadable descriptor line: {line[:80]!r}")
        target = ddb if pair["key"].startswith("ddb.") else values
        target[pair["key"]] = pair["value"]
    if "createType" not in values:
        raise DescriptorError("descriptor has no createType")
    if not extents:
        raise DescriptorError("descriptor lists no extents")
    sector_size = ddb.get("ddb.logicalSectorSize")
    if sector_size is not None and sector_size not in _SECTOR_SIZES:
        raise DescriptorError(f"ddb.logicalSectorSize {sector_size[:20]!r} is not 512 or 4096")
    return Descriptor(
        create_type=values["createType"],
        extents=tuple(extents),
        cid=values.get("CID"),
        parent_cid=values.get("parentCID"),
        parent_file=values.get("parentFileNameHint"),
        version=values.get("version"),
        ddb=ddb,
    )


def render_descriptor(
    descriptor: Descriptor,
    files: list[str | None],
    *,
    create_type: str | None = None,
    parent: str | None = None,
) -> str:
    """A descriptor with the same extents, each naming `files[i]` instead of its own file,
    and `parent` (a file name) as its only parent: what qemu is given, so that it opens
    exactly the files the worker chose. `create_type` replaces the original's (a
    single-file sparse disk is described as one sparse extent)."""
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        f"CID={descriptor.cid or 'fffffffe'}",
        f"parentCID={descriptor.parent_cid if parent else 'ffffffff'}",
        f'createType="{create_type or descriptor.create_type}"',
    ]
    if parent:
        lines.append(f'parentFileNameHint="{parent}"')
    for extent, file in zip(descriptor.extents, files, strict=True):
        line = f"{extent.access} {extent.sectors} {extent.type}"
        if file is not None:
            line += f' "{file}"'
            if extent.type == "FLAT":  # qemu refuses an offset on any other type
                line += f" {extent.offset_sectors}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _extent(match: re.Match[str]) -> Extent:
    kind = match["type"]
    if kind not in KNOWN_EXTENT_TYPES:
        raise DescriptorError(f"unknown extent type {kind}")
    if kind != "ZERO" and not match["file"]:
        raise DescriptorError(f"{kind} extent without a file name")
    return Extent(
        access=match["access"],
        sectors=int(match["sectors"]),
        type=kind,
        file=match["file"],
        offset_sectors=int(match["offset"] or 0),
    )


def parse_sparse_header(head: bytes) -> SparseHeader | None:
    """The header of a hosted sparse extent (`KDMV`), or None when `head` is not one."""
    if len(head) < _SPARSE_HEADER.size or head[:4] != _SPARSE_MAGIC:
        return None
    fields = _SPARSE_HEADER.unpack_from(head)
    return SparseHeader(
        version=fields[1],
        flags=fields[2],
        capacity_sectors=fields[3],
        grain_sectors=fields[4],
        descriptor_offset_sectors=fields[5],
        descriptor_sectors=fields[6],
        compress_algorithm=fields[16],
        gt_entries=fields[7],
        gd_offset_sectors=fields[9],
    )


# VMware's own limit for a disk (62 TiB); a header that claims more is damaged or hostile.
MAX_CAPACITY_BYTES = 62 << 40
_MAX_GRAIN_SECTORS = 1 << 16  # 32 MiB grains: qemu refuses larger
_MAX_GT_ENTRIES = 512  # qemu's limit, and what every VMware tool writes


def sparse_header_problem(header: SparseHeader, file_size: int | None) -> str | None:
    """Why a sparse header cannot be a real one, or None. Checked before anything is read at
    the offsets it gives, so a hostile header costs nothing (`file_size` None: unknown)."""
    grain = header.grain_sectors
    if header.version not in (1, 2, 3):
        return f"its sparse header has version {header.version} (1, 2 or 3 exist)"
    if grain < 1 or grain > _MAX_GRAIN_SECTORS or grain & (grain - 1):
        return f"its grain size of {grain} sectors is not a power of two up to 65536"
    if not 1 <= header.gt_entries <= _MAX_GT_ENTRIES:
        return f"its grain tables hold {header.gt_entries} entries (1 to 512 are possible)"
    if header.capacity_sectors * SECTOR > MAX_CAPACITY_BYTES:
        return f"it claims {header.capacity_sectors * SECTOR} bytes, more than any VMDK holds"
    if header.descriptor_sectors * SECTOR > DESCRIPTOR_MAX_BYTES:
        return f"its descriptor would be {header.descriptor_sectors * SECTOR} bytes long"
    if file_size is None:
        return None
    if (header.descriptor_offset_sectors + header.descriptor_sectors) * SECTOR > file_size:
        return "its descriptor lies past the end of the file"
    if not header.grain_directory_at_end and (
        header.gd_offset_sectors * SECTOR + header.grain_directory_entries * 4 > file_size
    ):
        return "its grain directory lies past the end of the file"
    return None


def grain_directory_problem(header: SparseHeader, directory: bytes, file_size: int) -> str | None:
    """Why a sparse extent's grain directory cannot be right, or None.

    qemu reads a grain table that lies past the end of the file as zeros, so a damaged
    directory would convert "successfully" into an empty disk; this catches it first.
    """
    count = header.grain_directory_entries
    if len(directory) < count * 4:
        return "its grain directory lies past the end of the file"
    table_bytes = header.gt_entries * 4
    entries = array.array("I", directory[: count * 4])
    if sys.byteorder != "little":  # pragma: no cover - VMDK is little-endian
        entries.byteswap()
    limit = (file_size - table_bytes) // SECTOR  # the last sector a table may start at
    if not entries or max(entries) <= max(limit, 0):  # one pass in C for the common case
        return None
    for index, entry in enumerate(entries):
        if entry and entry > limit:  # 0: a table never written, all zeros
            return f"grain table {index} points past the end of the file (sector {entry})"
    return None


def is_cowd(head: bytes) -> bool:
    """ESX 2.x sparse extents (vmfsSparse, `COWD`)."""
    return head[:4] == _COWD_MAGIC


def unsafe_reference(name: str) -> str | None:
    """Why a file name from inside a descriptor may not be followed, or None when it may."""
    if not name:
        return "an empty file name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name) or name.startswith("\\\\"):
        return f"absolute path {name!r}"
    if "\x00" in name:
        return "a NUL byte in a file name"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return f"path {name!r} climbs out with '..'"
    if ":" in parts[0]:
        return f"{name!r} looks like a protocol or device (qemu would open it as one)"
    return None


def unsafe_references(descriptor: Descriptor) -> list[str]:
    """Every reason this descriptor must be refused before qemu-img opens it."""
    problems = []
    for extent in descriptor.extents:
        if extent.type in DEVICE_EXTENT_TYPES:
            problems.append(f"{extent.type} extent {extent.file!r} maps a raw device")
        elif extent.file is not None and (why := unsafe_reference(extent.file)):
            problems.append(f"extent {why}")
    if descriptor.has_parent and descriptor.parent_file is not None:
        why = unsafe_reference(descriptor.parent_file)
        if why:
            problems.append(f"parent {why}")
    if not descriptor.has_parent and descriptor.parent_file:
        # qemu follows a parentFileNameHint whatever parentCID says: the two readings of
        # this descriptor would differ, so it is refused rather than guessed at.
        problems.append(f"a parent file {descriptor.parent_file!r} but no parent (parentCID)")
    return problems
