""".vmx files read into Hardware: what VMware writes, and the lines that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.hardware import DescribedBy, Firmware
from hyper2kvm_worker.vmx import VMX_MAX_BYTES, parse_vmx

GOLDEN = Path(__file__).parent / "golden"


def refused(text: str) -> BadInput:
    with pytest.raises(BadInput) as caught:
        parse_vmx(text)
    assert caught.value.reason is Reason.INVALID_IMAGE
    return caught.value


def test_reads_a_bios_guest_whole() -> None:
    hardware = parse_vmx((GOLDEN / "db01.vmx").read_text())
    assert hardware.described_by is DescribedBy.VMX
    assert (hardware.name, hardware.guest_os, hardware.machine) == (
        "DB01 (legacy)",
        "centos7-64",
        "vmx-14",
    )
    assert (hardware.cpus, hardware.cores_per_socket, hardware.memory_bytes) == (2, None, 3 << 30)
    assert hardware.firmware is Firmware.BIOS
    assert not hardware.secure_boot
    assert [(c.key, c.kind, c.bus) for c in hardware.controllers] == [
        ("ide0", "ide", 0),
        ("ide1", "ide", 1),
        ("scsi0", "lsilogic", 0),
    ]
    # The CD-ROM on ide1:0 is not a disk.
    assert [(d.label, d.controller, d.unit, d.file, d.boot_order) for d in hardware.disks] == [
        ("Hard disk 1", "scsi0", 0, "db01.vmdk", 1),
        ("Hard disk 2", "scsi0", 1, "db01_1.vmdk", None),
    ]
    assert [(n.label, n.model, n.mac, n.network) for n in hardware.nics] == [
        ("Network adapter 1", "e1000", "00:0c:29:3e:5f:01", "VM Network")
    ]


def test_efi_with_secure_boot_and_cores_per_socket() -> None:
    hardware = parse_vmx(
        'firmware = "efi"\nuefi.secureBoot.enabled = "TRUE"\nnumvcpus = "8"\n'
        'cpuid.coresPerSocket = "4"\nmemsize = "16384"\n'
    )
    assert hardware.firmware is Firmware.EFI
    assert hardware.secure_boot
    assert (hardware.cpus, hardware.cores_per_socket, hardware.memory_bytes) == (8, 4, 16 << 30)


def test_keys_are_matched_without_regard_to_case_and_escapes_decoded() -> None:
    hardware = parse_vmx('DisplayName = "a |22quoted|22 |7C name"\nNUMVCPUS = "3"\n')
    assert (hardware.name, hardware.cpus) == ('a "quoted" | name', 3)


def test_disks_in_vmware_order_on_present_controllers_only() -> None:
    hardware = parse_vmx(
        """
nvme0.present = "TRUE"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "d.vmdk"
sata0.present = "TRUE"
sata0:1.present = "TRUE"
sata0:1.fileName = "c.vmdk"
scsi1.present = "TRUE"
scsi1.virtualDev = "pvscsi"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "b.vmdk"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "orphan.vmdk"
ide0:0.present = "TRUE"
ide0:0.fileName = "a.vmdk"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-raw"
sata0:0.fileName = "auto detect"
scsi1:1.present = "FALSE"
scsi1:1.fileName = "gone.vmdk"
"""
    )
    assert [d.file for d in hardware.disks] == ["b.vmdk", "a.vmdk", "c.vmdk", "d.vmdk"]
    assert {c.key: c.kind for c in hardware.controllers} == {
        "ide0": "ide",
        "ide1": "ide",
        "nvme0": "nvme",
        "sata0": "sata",
        "scsi1": "pvscsi",
    }


def test_a_static_mac_wins_and_an_absent_model_is_vmwares_oldest() -> None:
    hardware = parse_vmx(
        'ethernet1.present = "TRUE"\nethernet1.addressType = "static"\n'
        'ethernet1.address = "00:50:56:00:00:0A"\n'
        'ethernet1.generatedAddress = "00:0c:29:00:00:01"\n'
    )
    assert [(n.label, n.model, n.mac, n.network) for n in hardware.nics] == [
        ("Network adapter 1", "vlance", "00:50:56:00:00:0a", None)
    ]


def test_a_malformed_line_is_refused_with_its_number() -> None:
    error = refused('numvcpus = "2"\n\n# fine\nmemsize "4096"\n')
    assert error.message == '.vmx line 4: expected key = "value", found \'memsize "4096"\''


def test_an_unterminated_quote_is_refused() -> None:
    assert ".vmx line 1:" in refused('displayName = "web01\n').message


def test_a_key_set_twice_is_refused() -> None:
    error = refused('memsize = "1024"\nnumvcpus = "1"\nMemSize = "2048"\n')
    assert error.message.startswith(".vmx line 3: MemSize is set again (first on line 1)")


def test_a_non_number_is_refused_with_its_line() -> None:
    error = refused('displayName = "x"\nnumvcpus = "two"\n')
    assert error.message == ".vmx line 2: numvcpus = 'two' is not a number"


def test_a_malformed_mac_is_refused_with_its_line() -> None:
    error = refused('ethernet0.present = "TRUE"\nethernet0.generatedAddress = "00:0c:29"\n')
    assert error.message == ".vmx line 2: '00:0c:29' is not a MAC address"


def test_values_outside_the_model_are_refused() -> None:
    assert "the .vmx file's cpus" in refused('numvcpus = "99999"\n').message


def test_an_oversized_file_is_refused() -> None:
    error = refused("# " + "x" * VMX_MAX_BYTES)
    assert f"larger than the {VMX_MAX_BYTES} accepted" in error.message


def test_unknown_keys_are_ignored() -> None:
    hardware = parse_vmx('sched.cpu.min = "0"\nisolation.tools.copy.disable = "TRUE"\n')
    assert hardware.firmware is Firmware.BIOS
    assert hardware.disks == []
