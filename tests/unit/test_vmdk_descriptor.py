from __future__ import annotations

import struct

import pytest

from hyper2kvm_worker import vmdk_descriptor as vd

MONOLITHIC_FLAT = """\
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=ebef0b15
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 131072 FLAT "web-flat.vmdk" 0

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "13"
ddb.adapterType = "lsilogic"
ddb.uuid = "60 00 C2 9a"
"""


def test_parses_a_flat_descriptor() -> None:
    descriptor = vd.parse_descriptor(MONOLITHIC_FLAT)
    assert descriptor.create_type == "monolithicFlat"
    assert descriptor.cid == "ebef0b15"
    assert not descriptor.has_parent
    assert descriptor.extents == (vd.Extent("RW", 131072, "FLAT", "web-flat.vmdk", 0),)
    assert descriptor.virtual_size == 64 << 20
    assert descriptor.ddb["ddb.adapterType"] == "lsilogic"
    assert descriptor.ddb["ddb.uuid"] == "60 00 C2 9a"
    assert vd.unsafe_references(descriptor) == []


def test_split_sparse_and_zero_extents() -> None:
    text = (
        'createType="twoGbMaxExtentSparse"\n'
        'RW 4192256 SPARSE "a-s001.vmdk"\n'
        'RW 4192256 SPARSE "a s002.vmdk"\n'
        "RW 2048 ZERO\n"
    )
    descriptor = vd.parse_descriptor(text)
    assert [e.file for e in descriptor.extents] == ["a-s001.vmdk", "a s002.vmdk", None]
    assert descriptor.virtual_size == (2 * 4192256 + 2048) * 512


def test_parent_chain_fields() -> None:
    text = 'CID=1\nparentCID=2\ncreateType="monolithicSparse"\nparentFileNameHint="base.vmdk"\n'
    text += 'RW 8 SPARSE "child.vmdk"\n'
    descriptor = vd.parse_descriptor(text)
    assert descriptor.has_parent
    assert descriptor.parent_file == "base.vmdk"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('RW 8 FLAT "x"\n', "no createType"),
        ('createType="vmfs"\n', "no extents"),
        ('createType="vmfs"\nRW 8 WEIRD "x"\n', "unknown extent type"),
        ('createType="vmfs"\nRW 8 FLAT\n', "without a file name"),
        ('createType="vmfs"\nthis is not a descriptor line\n', "unreadable"),
    ],
)
def test_refuses_broken_descriptors(text: str, message: str) -> None:
    with pytest.raises(vd.DescriptorError, match=message):
        vd.parse_descriptor(text)


@pytest.mark.parametrize(
    "name",
    [
        "/etc/shadow",
        "../x.vmdk",
        "a/../../x",
        "C:\\vm\\x.vmdk",
        "\\\\server\\share",
        "nbd:host:1",
        "json:{}",
        "a\x00b",
        "",
    ],
)
def test_unsafe_references(name: str) -> None:
    assert vd.unsafe_reference(name) is not None


@pytest.mark.parametrize("name", ["disk-flat.vmdk", "sub/disk.vmdk", "a b-s001.vmdk", "x..y.vmdk"])
def test_safe_references(name: str) -> None:
    assert vd.unsafe_reference(name) is None


def test_raw_device_mappings_and_bad_parents_are_refused() -> None:
    rdm = vd.parse_descriptor('createType="vmfsRawDeviceMap"\nRW 8 VMFSRDM "dev-rdm.vmdk"\n')
    assert "raw device" in vd.unsafe_references(rdm)[0]
    parent = vd.parse_descriptor(
        'parentCID=1\ncreateType="monolithicSparse"\nparentFileNameHint="/srv/base.vmdk"\n'
        'RW 8 SPARSE "c.vmdk"\n'
    )
    assert vd.unsafe_references(parent) == ["parent absolute path '/srv/base.vmdk'"]


def sparse_header(flags: int = 3, capacity: int = 131072, gd_offset: int = 30) -> bytes:
    return struct.pack(
        "<IIIQQQQIQQQ?ccccH",
        0x564D444B,
        1,
        flags,
        capacity,
        128,
        1,
        20,
        512,
        21,
        gd_offset,
        128,
        False,
        b"\n",
        b" ",
        b"\r",
        b"\n",
        0,
    ).ljust(512, b"\x00")


def test_sparse_header() -> None:
    header = vd.parse_sparse_header(sparse_header())
    assert header is not None
    assert (header.capacity_sectors, header.grain_sectors) == (131072, 128)
    assert (header.descriptor_offset_sectors, header.descriptor_sectors) == (1, 20)
    assert not header.stream_optimized
    assert header.grain_directory_entries == 2  # 64 MiB / (64 KiB grains * 512 per table)
    streamed = vd.parse_sparse_header(sparse_header(flags=(1 << 16) | (1 << 17) | 1))
    assert streamed is not None and streamed.stream_optimized
    assert vd.parse_sparse_header(b"KDMV") is None
    assert vd.parse_sparse_header(b"\x00" * 512) is None


def test_grain_directory_check() -> None:
    header = vd.parse_sparse_header(sparse_header())
    assert header is not None
    good = (40).to_bytes(4, "little") + (0).to_bytes(4, "little")
    assert vd.grain_directory_problem(header, good, file_size=40 * 512 + 2048) is None
    past_end = (40).to_bytes(4, "little") + (0xFFFFFFFF).to_bytes(4, "little")
    assert "grain table 1" in str(vd.grain_directory_problem(header, past_end, 1 << 20))
    assert vd.grain_directory_problem(header, good[:4], 1 << 20) is not None


def test_descriptor_detection() -> None:
    assert vd.looks_like_descriptor(b"# Disk DescriptorFile\nversion=1\n")
    assert vd.looks_like_descriptor(b'version=1\ncreateType="vmfs"\n')
    assert not vd.looks_like_descriptor(sparse_header())
    assert vd.is_cowd(b"COWD\x01\x00")
