"""A disk inside an OVA (a tar) on a mounted volume, read in place through nbdkit's tar
filter: never extracted.

What the OVA says of itself is checked against what it holds, before qemu runs: the disk
member's size and the disk's capacity against its OVF descriptor, the descriptor against
the manifest. The disk member's own manifest digest is computed while it is converted (an
`IntegrityCheck`), so a damaged OVA never leaves an output behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

from hyper2kvm_worker import nbdkit, ovf
from hyper2kvm_worker import ova_manifest as mf
from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.protocol import Limits, OvaSource
from hyper2kvm_worker.sources.base import (
    VMDK,
    IntegrityCheck,
    OpenedSource,
    nbd_image,
    require_single_file,
)
from hyper2kvm_worker.tools import CancelToken, ToolRunner
from hyper2kvm_worker.vmdk_file import HEAD_BYTES, VmdkLayout, parse_head

if TYPE_CHECKING:
    import tarfile

OVA_MAX_MEMBERS = 10_000  # an OVA holds a descriptor, a manifest and its disks
_NAMES_SHOWN = 20
_CHUNK = 4 << 20


@dataclass(frozen=True)
class _Members:
    disk: tarfile.TarInfo
    descriptor: tarfile.TarInfo | None  # the .ovf
    manifest: tarfile.TarInfo | None  # the .mf


class OvaDriver:
    kind: ClassVar[str] = "ova"

    @contextlib.contextmanager
    def open(self, source: OvaSource, runner: ToolRunner, limits: Limits) -> Iterator[OpenedSource]:
        archive = confine(Path(source.root), source.path, "OVA")
        members = _members(archive, source.disk)
        member = members.disk
        with archive.open("rb") as stream:
            expected = _manifest(stream, archive, members)
            declared = _declared(stream, archive, members, expected)
            _check_size(archive, member, declared, os.fstat(stream.fileno()).st_size)
            layout = _ova_layout(stream, archive, member)
        _check_capacity(archive, member, declared, layout)
        checks = () if expected is None else (_digest_check(archive, member, expected),)
        label = f"{archive}:{member.name}"
        with nbdkit.nbdkit_server(runner, nbdkit.tar_member_spec(str(archive), member.name)) as nbd:
            image = nbd_image(str(nbd.socket), VMDK)
            yield OpenedSource(
                image, VMDK, layout, label, False, stored_bytes=member.size, files=(archive,),
                checks=checks,
            )  # fmt: skip


def _plain(name: str) -> str:
    """A member's name as a manifest or descriptor names it (`tar c ./x` writes `./x`)."""
    return name.removeprefix("./")


def _members(archive: Path, wanted: str | None) -> _Members:
    import tarfile

    files: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > OVA_MAX_MEMBERS or len(member.name) > mf.NAME_MAX_CHARS:
                    raise BadInput(
                        Reason.INVALID_IMAGE,
                        f"{archive} holds more than {OVA_MAX_MEMBERS} files or a name longer "
                        f"than {mf.NAME_MAX_CHARS} characters; it is not an OVA",
                    )
                if member.isfile():
                    files.append(member)
    except (tarfile.TarError, OSError) as error:
        if files:
            _check_size(archive, files[-1], None, archive.stat().st_size)
        raise BadInput(Reason.INVALID_IMAGE, f"{archive} is not a readable OVA: {error}") from None
    manifests = [member for member in files if member.name.lower().endswith(".mf")]
    if len(manifests) > 1:
        raise BadInput(Reason.INVALID_IMAGE, f"{archive} holds {len(manifests)} manifests (.mf)")
    descriptor = next((m for m in files if m.name.lower().endswith(".ovf")), None)
    return _Members(_disk(archive, files, wanted), descriptor, manifests[0] if manifests else None)


def _disk(archive: Path, files: list[tarfile.TarInfo], wanted: str | None) -> tarfile.TarInfo:
    if wanted is not None:
        matches = [member for member in files if _plain(member.name) == _plain(wanted)]
        if not matches:
            names = ", ".join(member.name for member in files[:_NAMES_SHOWN])
            raise BadInput(Reason.SOURCE_NOT_FOUND, f"{archive} has no {wanted!r}; it has {names}")
        if len(matches) > 1:
            # Which copy nbdkit would serve is not the checker's to guess.
            raise BadInput(
                Reason.INVALID_IMAGE, f"{archive} holds {len(matches)} files named {wanted!r}"
            )
        return matches[0]
    disks = [member for member in files if member.name.lower().endswith(".vmdk")]
    if len(disks) != 1:
        names = ", ".join(member.name for member in disks[:_NAMES_SHOWN]) or "none"
        raise BadInput(
            Reason.INVALID_JOB,
            f"{archive} holds {len(disks)} .vmdk disks ({names}); name one in the source's disk",
        )
    return disks[0]


def _read(stream: IO[bytes], member: tarfile.TarInfo) -> bytes:
    """A member whole: only the descriptor and the manifest, once their size is bounded."""
    stream.seek(member.offset_data)
    return stream.read(member.size)


def _manifest(stream: IO[bytes], archive: Path, members: _Members) -> dict[str, mf.Expected] | None:
    """The manifest's record of every member the job reads, or None without a manifest."""
    if members.manifest is None:
        return None
    if members.manifest.size > mf.MANIFEST_MAX_BYTES:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{members.manifest.name} in {archive} is {members.manifest.size} bytes, more than "
            f"the {mf.MANIFEST_MAX_BYTES} accepted for a manifest",
        )
    listed = mf.parse_manifest(_read(stream, members.manifest), str(archive))
    read = [m for m in (members.descriptor, members.disk) if m is not None]
    for member in read:
        if _plain(member.name) not in listed:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"the manifest of {archive} does not list {member.name}, which the job reads; "
                "it cannot be checked",
            )
    return {member.name: listed[_plain(member.name)] for member in read}


def _declared(
    stream: IO[bytes], archive: Path, members: _Members, expected: dict[str, mf.Expected] | None
) -> ovf.DeclaredFile | None:
    """What the OVF declares of the disk member (None: no OVF, or it says nothing of it),
    once the OVF itself has matched the manifest."""
    descriptor = members.descriptor
    if descriptor is None:
        return None
    if descriptor.size > ovf.OVF_MAX_BYTES:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{descriptor.name} in {archive} is {descriptor.size} bytes, more than the "
            f"{ovf.OVF_MAX_BYTES} accepted for an OVF descriptor",
        )
    data = _read(stream, descriptor)
    if expected is not None:
        record = expected[descriptor.name]
        hasher = record.hasher()
        hasher.update(data)
        record.check(hasher.hexdigest(), str(archive))
    return ovf.declared_files(data).get(_plain(members.disk.name))


def _check_size(
    archive: Path, member: tarfile.TarInfo, declared: ovf.DeclaredFile | None, archive_size: int
) -> None:
    # A cut OVA's last member may be shorter than its own tar header says.
    held = max(0, min(member.size, archive_size - member.offset_data))
    wanted = declared.size if declared is not None and declared.size is not None else member.size
    if held < wanted:
        source = "the OVF declares" if wanted != member.size else "its tar header declares"
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{member.name} in {archive} is truncated: it has {held} bytes, {source} {wanted}",
        )
    if held > wanted:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{member.name} in {archive} has {held} bytes, more than the {wanted} its OVF "
            "declares; it is not the file the OVF describes",
        )


def _check_capacity(
    archive: Path, member: tarfile.TarInfo, declared: ovf.DeclaredFile | None, layout: VmdkLayout
) -> None:
    if declared is None or declared.capacity is None:
        return
    header = layout.header
    capacity = header.capacity_sectors * 512 if header else layout.descriptor.virtual_size
    if capacity != declared.capacity:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{member.name} in {archive} holds a disk of {capacity} bytes, the OVF declares "
            f"{declared.capacity}; refusing a disk that is not the one described",
        )


def _ova_layout(stream: IO[bytes], archive: Path, member: tarfile.TarInfo) -> VmdkLayout:
    def read_at(offset: int, length: int) -> bytes:
        stream.seek(member.offset_data + offset)
        return stream.read(max(0, min(length, member.size - offset)))

    layout = parse_head(read_at(0, HEAD_BYTES), read_at, f"{archive}:{member.name}", member.size)
    require_single_file(layout, member.name)
    return layout


def _digest_check(
    archive: Path, member: tarfile.TarInfo, expected: dict[str, mf.Expected]
) -> IntegrityCheck:
    record = expected[member.name]

    def verify(cancel: CancelToken) -> None:
        hasher = record.hasher()
        try:
            fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise TransientFailure(
                Reason.SOURCE_UNREACHABLE, f"reading {archive}: {error.strerror}"
            ) from None
        try:
            done = 0
            while done < member.size:
                cancel.raise_if_cancelled()
                chunk = os.pread(fd, min(_CHUNK, member.size - done), member.offset_data + done)
                if not chunk:
                    raise BadInput(
                        Reason.INVALID_IMAGE,
                        f"{member.name} in {archive} is truncated: it has {done} bytes, its tar "
                        f"header declares {member.size}",
                    )
                hasher.update(chunk)
                done += len(chunk)
        finally:
            os.close(fd)
        record.check(hasher.hexdigest(), str(archive))

    return IntegrityCheck(label=member.name, size=member.size, verify=verify)
