"""What describes a job's VM, when something beside its disks does: the OVF descriptor of
the OVA a disk comes from, or the one `.vmx` file in the folder of a disk's file.

The description is for the VirtualMachine made of the migrated disks; a descriptor that
cannot be read does not stop the migration, it is only said why (`Described.note`).
Everything read is bounded, and confined to the volume the job named.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from hyper2kvm_worker import ovf, vmx
from hyper2kvm_worker.errors import BadInput, Reason, WorkerError
from hyper2kvm_worker.hardware import Hardware
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.protocol import FileSource, Job, OvaSource

OVA_MAX_MEMBERS = 10_000  # the descriptor is the first member of a real OVA
FOLDER_MAX_ENTRIES = 10_000  # a datastore folder holds a VM's few dozen files


@dataclass(frozen=True)
class Described:
    hardware: Hardware | None
    note: str | None = None  # why nothing describes it, when something should have


def describe(job: Job) -> Described:
    """The hardware the job's sources come with: an OVA's OVF first, else a `.vmx`."""
    try:
        for disk in job.disks:
            if isinstance(disk.source, OvaSource):
                archive = confine(Path(disk.source.root), disk.source.path, "OVA")
                return Described(ovf.parse_ovf(read_ova_descriptor(archive)))
        for disk in job.disks:
            if isinstance(disk.source, FileSource):
                folder = posixpath.dirname(disk.source.path) or "."
                found = _vmx_in(confine(Path(disk.source.root), folder, "folder"))
                if found is None:
                    return Described(None)
                text = read_bounded(found, vmx.VMX_MAX_BYTES).decode("utf-8", errors="replace")
                return Described(vmx.parse_vmx(text))
    except WorkerError as unreadable:
        return Described(None, f"the VM's description was not read: {unreadable.message}")
    return Described(None)


def _vmx_in(folder: Path) -> Path | None:
    """The one .vmx file in `folder`; None when there is none, or several to choose from."""
    entries = islice(folder.iterdir(), FOLDER_MAX_ENTRIES)
    found = [p for p in entries if p.suffix.lower() == ".vmx" and p.is_file()]
    return found[0] if len(found) == 1 else None


def read_ova_descriptor(path: Path) -> bytes:
    """The first .ovf member of the OVA at `path`, read whole (it is bounded)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            for _ in range(OVA_MAX_MEMBERS):
                member = tar.next()
                if member is None:
                    break
                if member.isfile() and member.name.lower().endswith(".ovf"):
                    if member.size > ovf.OVF_MAX_BYTES:
                        raise BadInput(
                            Reason.INVALID_IMAGE,
                            f"{path}: {member.name} is {member.size} bytes, "
                            f"more than the {ovf.OVF_MAX_BYTES} accepted",
                        )
                    stream = tar.extractfile(member)
                    assert stream is not None  # a regular file always has one
                    return stream.read(ovf.OVF_MAX_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"{path} does not exist") from None
    except (tarfile.TarError, OSError) as error:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is not a readable OVA: {error}") from None
    raise BadInput(Reason.INVALID_IMAGE, f"{path} holds no .ovf descriptor")


def read_bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"{path} does not exist") from None
    except OSError as error:
        raise BadInput(Reason.SOURCE_NOT_FOUND, f"cannot read {path}: {error.strerror}") from None
    if len(data) > limit:
        raise BadInput(Reason.INVALID_IMAGE, f"{path} is larger than the {limit} bytes accepted")
    return data
