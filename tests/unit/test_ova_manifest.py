"""What an OVA says of itself, parsed: its manifest, its OVF's declared files, and a VMDK
descriptor's logical sector size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hyper2kvm_worker import ova_manifest as mf
from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.ovf import OVF_MAX_BYTES, DeclaredFile, declared_files

GOLDEN = Path(__file__).parent / "golden"
SHA1 = hashlib.sha1(b"disk", usedforsecurity=False).hexdigest()
SHA256 = hashlib.sha256(b"ovf").hexdigest()
SHA512 = hashlib.sha512(b"nvram").hexdigest()


def test_reads_every_algorithm_ovftool_writes() -> None:
    text = (
        f"SHA256(web01.ovf)= {SHA256}\r\n"
        f"SHA1(web01-disk1.vmdk)={SHA1.upper()}\n\n"
        f"SHA512(web01-file1.nvram) = {SHA512}\n"
        f"SHA1(web01 (copy).iso)= {SHA1}\n"
    )
    listed = mf.parse_manifest(text.encode(), "web01.ova")
    assert listed == {
        "web01.ovf": mf.Expected("web01.ovf", "sha256", SHA256),
        "web01-disk1.vmdk": mf.Expected("web01-disk1.vmdk", "sha1", SHA1),
        "web01-file1.nvram": mf.Expected("web01-file1.nvram", "sha512", SHA512),
        "web01 (copy).iso": mf.Expected("web01 (copy).iso", "sha1", SHA1),
    }


def test_a_digest_is_checked_against_its_record() -> None:
    record = mf.parse_manifest(f"SHA1(d.vmdk)= {SHA1}".encode(), "vm.ova")["d.vmdk"]
    hasher = record.hasher()
    hasher.update(b"disk")
    record.check(hasher.hexdigest(), "vm.ova")
    other = hashlib.sha1(b"other", usedforsecurity=False).hexdigest()
    with pytest.raises(BadInput) as refused:
        record.check(other, "vm.ova")
    assert refused.value.reason is Reason.INVALID_IMAGE
    assert refused.value.message == (
        f"d.vmdk in vm.ova is damaged: its SHA1 is {other}, the manifest records {SHA1}"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"MD5(d.vmdk)= {SHA1}", "unreadable line 1"),
        (f"SHA1(d.vmdk)= {SHA256}", "not 40 hex digits"),
        ("SHA256(d.vmdk)= " + "z" * 64, "not 64 hex digits"),
        (f"SHA1(d.vmdk)= {SHA1}\nSHA1(d.vmdk)= {'0' * 40}", "twice"),
        (f"SHA1({'x' * 2000})= {SHA1}", "2000 characters"),
        ("garbage", "unreadable line 1"),
    ],
)
def test_a_broken_manifest_is_refused(text: str, problem: str) -> None:
    with pytest.raises(BadInput) as refused:
        mf.parse_manifest(text.encode(), "vm.ova")
    assert refused.value.reason is Reason.INVALID_IMAGE
    assert problem in refused.value.message


def test_a_manifest_is_bounded() -> None:
    with pytest.raises(BadInput, match="more than the 1048576 accepted"):
        mf.parse_manifest(b"\n" * (mf.MANIFEST_MAX_BYTES + 1), "vm.ova")
    with pytest.raises(BadInput, match="not UTF-8"):
        mf.parse_manifest(b"\xff\xfe", "vm.ova")


def test_the_declared_files_of_a_vmware_export() -> None:
    declared = declared_files((GOLDEN / "web01.ovf").read_bytes())
    assert declared == {
        "web01-disk1.vmdk": DeclaredFile("web01-disk1.vmdk", 1310720, 16 << 30),
        "web01-disk2.vmdk": DeclaredFile("web01-disk2.vmdk", 68608, 512 << 20),
    }


def test_an_envelope_declaring_nothing_declares_nothing() -> None:
    envelope = b'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>'
    assert declared_files(envelope) == {}
    with pytest.raises(BadInput, match="not an OVF descriptor"):
        declared_files(b"<Other/>")
    with pytest.raises(BadInput, match="accepted"):
        declared_files(b" " * (OVF_MAX_BYTES + 1))


def test_a_descriptor_declares_its_logical_sector_size() -> None:
    base = '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 8 FLAT "d-flat.vmdk" 0\n'
    assert vd.parse_descriptor(base).logical_sector_size is None
    native = vd.parse_descriptor(base + 'ddb.logicalSectorSize = "4096"\n')
    assert native.logical_sector_size == 4096
    with pytest.raises(vd.DescriptorError, match="is not 512 or 4096"):
        vd.parse_descriptor(base + 'ddb.logicalSectorSize = "1000"\n')
