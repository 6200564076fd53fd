from __future__ import annotations

import struct
import uuid

from hyper2kvm_worker.partitions import HEAD_BYTES, parse_partition_table

LINUX = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


def mbr(entries: list[tuple[int, int, int, int]]) -> bytearray:
    disk = bytearray(HEAD_BYTES)
    for index, (status, kind, first, sectors) in enumerate(entries):
        struct.pack_into(
            "<B3sB3sII", disk, 446 + 16 * index, status, b"", kind, b"", first, sectors
        )
    disk[510:512] = b"\x55\xaa"
    return disk


def test_no_signature_means_no_table() -> None:
    assert parse_partition_table(bytes(HEAD_BYTES)) is None


def test_mbr() -> None:
    table = parse_partition_table(bytes(mbr([(0x80, 0x83, 2048, 4096), (0, 0x82, 6144, 1024)])))
    assert table is not None and table.scheme == "mbr"
    root, swap = table.partitions
    assert (root.number, root.start, root.size, root.type) == (1, 1 << 20, 2 << 20, "0x83")
    assert root.bootable and root.type_name == "Linux"
    assert (swap.number, swap.type_name, swap.bootable) == (2, "Linux swap", False)


def test_gpt() -> None:
    disk = mbr([(0, 0xEE, 1, 0xFFFFFFFF)])
    disk_guid = uuid.uuid4()
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        disk,
        512,
        b"EFI PART",
        0x10000,
        92,
        0,
        0,
        1,
        999,
        34,
        900,
        disk_guid.bytes_le,
        2,
        128,
        128,
        0,
    )
    name = "EFI system".encode("utf-16-le").ljust(72, b"\x00")
    struct.pack_into(
        "<16s16sQQQ72s", disk, 1024, ESP.bytes_le, uuid.uuid4().bytes_le, 2048, 4095, 0, name
    )
    struct.pack_into(
        "<16s16sQQQ72s",
        disk,
        1024 + 2 * 128,
        LINUX.bytes_le,
        uuid.uuid4().bytes_le,
        4096,
        8191,
        4,
        b"",
    )

    table = parse_partition_table(bytes(disk))

    assert table is not None and table.scheme == "gpt"
    assert table.disk_guid == str(disk_guid)
    esp, root = table.partitions
    assert (esp.number, esp.start, esp.size, esp.name) == (1, 1 << 20, 1 << 20, "EFI system")
    assert esp.type_name == "EFI System"
    assert (root.number, root.type_name, root.bootable) == (3, "Linux filesystem", True)


def test_protective_mbr_without_gpt_header_falls_back_to_mbr() -> None:
    table = parse_partition_table(bytes(mbr([(0, 0xEE, 1, 100)])))
    assert table is not None and table.scheme == "mbr"
    assert table.partitions[0].type_name == "GPT protective"
