"""MBR and GPT partition tables, parsed from the first sectors of a virtual disk (pure)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

SECTOR = 512
HEAD_BYTES = 34 * SECTOR  # protective MBR, GPT header and 128 entries of 128 bytes

_MBR_TYPES = {
    0x07: "NTFS/exFAT",
    0x0B: "FAT32",
    0x0C: "FAT32 (LBA)",
    0x05: "extended",
    0x0F: "extended (LBA)",
    0x82: "Linux swap",
    0x83: "Linux",
    0x8E: "Linux LVM",
    0xEE: "GPT protective",
    0xEF: "EFI System",
    0xFD: "Linux RAID",
}
_GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
}
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # MBR type as 0xNN, or the GPT type GUID
    type_name: str
    name: str = ""
    bootable: bool = False


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # "mbr" or "gpt"
    partitions: tuple[Partition, ...]
    disk_guid: str | None = None


def parse_partition_table(head: bytes) -> PartitionTable | None:
    """The table described by the first `HEAD_BYTES` of a disk, or None when it has none."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return None
    mbr = _mbr_partitions(head)
    if any(p.type == "0xee" for p in mbr):
        gpt = _gpt(head)
        if gpt is not None:
            return gpt
    return PartitionTable(scheme="mbr", partitions=tuple(mbr))


def _mbr_partitions(head: bytes) -> list[Partition]:
    partitions = []
    for index in range(4):
        status, _, kind, _, first_lba, sectors = _MBR_ENTRY.unpack_from(head, 446 + 16 * index)
        if kind == 0 or sectors == 0:
            continue
        partitions.append(
            Partition(
                number=index + 1,
                start=first_lba * SECTOR,
                size=sectors * SECTOR,
                type=f"0x{kind:02x}",
                type_name=_MBR_TYPES.get(kind, "unknown"),
                bootable=status == 0x80,
            )
        )
    return partitions


def _gpt(head: bytes) -> PartitionTable | None:
    if len(head) < 2 * SECTOR:
        return None
    header = _GPT_HEADER.unpack_from(head, SECTOR)
    if header[0] != b"EFI PART":
        return None
    disk_guid = str(uuid.UUID(bytes_le=header[9]))
    entries_lba, count, entry_size = header[10], header[11], header[12]
    partitions = []
    for index in range(min(count, 128)):
        offset = entries_lba * SECTOR + index * entry_size
        if offset + _GPT_ENTRY.size > len(head) or entry_size < _GPT_ENTRY.size:
            break
        type_raw, _, first, last, attributes, name_raw = _GPT_ENTRY.unpack_from(head, offset)
        if type_raw == bytes(16):
            continue
        type_guid = str(uuid.UUID(bytes_le=type_raw))
        partitions.append(
            Partition(
                number=index + 1,
                start=first * SECTOR,
                size=(last - first + 1) * SECTOR,
                type=type_guid,
                type_name=_GPT_TYPES.get(type_guid, "unknown"),
                name=name_raw.decode("utf-16-le", errors="replace").rstrip("\x00"),
                bootable=bool(attributes & 0b100),  # legacy BIOS bootable
            )
        )
    return PartitionTable(scheme="gpt", partitions=tuple(partitions), disk_guid=disk_guid)
