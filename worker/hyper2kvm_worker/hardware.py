"""A virtual machine's hardware as its source describes it: one shape for every describer.

The vSphere inventory, an OVA's OVF descriptor and a `.vmx` file each say how many CPUs,
how much memory, which firmware, which disks and NICs a VM has; each is read into this
model, and whatever builds the VM on the KVM side (a KubeVirt VirtualMachine) reads only
this. Pure: no I/O. Every field is bounded, since sources (an OVA's author, a vCenter) are
not trusted with the size of what they say.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Text = Annotated[str, Field(max_length=1024)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Firmware(enum.StrEnum):
    BIOS = "bios"
    EFI = "efi"


class DescribedBy(enum.StrEnum):
    """Where a VM's hardware was read from; the job status says which, field by field."""

    VSPHERE = "vsphere"  # the vCenter or ESXi inventory
    OVF = "ovf"  # the descriptor inside an OVA
    VMX = "vmx"  # the VM's configuration file beside its disks
    JOB = "job"  # nothing described it; the job's explicit values


class Controller(_Model):
    """A disk controller: its kind as the source names it (`pvscsi`, `lsilogic`, `sata`,
    `nvme`, `ide`) and its bus number."""

    key: Text = Field(description="the source's own identifier, for the disks to refer to")
    kind: Text
    bus: int = Field(default=0, ge=0, le=1024)
    shared: bool = Field(default=False, description="SCSI bus sharing (virtual or physical)")


class HardwareDisk(_Model):
    """One virtual disk, in the source's order."""

    label: Text = Field(description='e.g. "Hard disk 1"')
    capacity_bytes: int = Field(ge=0, le=1 << 62)
    controller: Text | None = Field(default=None, description="a Controller.key")
    unit: int | None = Field(default=None, ge=0, le=1024)
    file: Text | None = Field(default=None, description='the disk file, e.g. "[ds1] vm/vm.vmdk"')
    datastore: Text | None = None
    logical_sector_size: int | None = Field(default=None, ge=512, le=65536)
    boot_order: int | None = Field(default=None, ge=0, le=1024)
    # What an OVF descriptor declares about the disk's file, to check the OVA against later:
    # the bytes the guest has written, and the size of the file (the OVA member `file`).
    populated_bytes: int | None = Field(default=None, ge=0, le=1 << 62)
    file_bytes: int | None = Field(default=None, ge=0, le=1 << 62)


class HardwareNic(_Model):
    label: Text = Field(description='e.g. "Network adapter 1"')
    model: Text = Field(description="as the source names it: vmxnet3, e1000, e1000e, ...")
    mac: Text | None = Field(default=None, pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
    network: Text | None = Field(default=None, description="the source network's name")


class Hardware(_Model):
    """What a VM is made of, as `described_by` says it."""

    described_by: DescribedBy
    name: Text | None = None
    cpus: int | None = Field(default=None, ge=1, le=4096)
    cores_per_socket: int | None = Field(default=None, ge=1, le=4096)
    memory_bytes: int | None = Field(default=None, ge=1 << 20, le=1 << 50)
    firmware: Firmware | None = None
    secure_boot: bool = False
    guest_os: Text | None = Field(default=None, description="the source's guest OS identifier")
    machine: Text | None = Field(default=None, description="virtual hardware version, if known")
    uuid: Text | None = Field(
        default=None, description="the SMBIOS UUID the guest sees (vSphere: config.uuid)"
    )
    controllers: list[Controller] = Field(default_factory=list, max_length=64)
    disks: list[HardwareDisk] = Field(default_factory=list, max_length=64)
    nics: list[HardwareNic] = Field(default_factory=list, max_length=64)

    def bus_of(self, disk: HardwareDisk) -> str | None:
        """The kind of controller `disk` hangs on, if the source said."""
        for controller in self.controllers:
            if controller.key == disk.controller:
                return controller.kind
        return None


def first_problem(error: ValidationError) -> str:
    """Where a describer's values first break this model, and why: `disks: List should have
    at most 64 items`. Describers put it in their own error, naming the source."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}"
