"""A disk inside an OVA (a tar) on a mounted volume, read in place through nbdkit's tar
filter: never extracted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from hyper2kvm_worker import nbdkit
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.protocol import Limits, OvaSource
from hyper2kvm_worker.sources.base import VMDK, OpenedSource, nbd_image, require_single_file
from hyper2kvm_worker.tools import ToolRunner
from hyper2kvm_worker.vmdk_file import HEAD_BYTES, VmdkLayout, parse_head

if TYPE_CHECKING:
    import tarfile


class OvaDriver:
    kind: ClassVar[str] = "ova"

    @contextlib.contextmanager
    def open(self, source: OvaSource, runner: ToolRunner, limits: Limits) -> Iterator[OpenedSource]:
        archive = confine(Path(source.root), source.path, "OVA")
        member = _ova_disk(archive, source.disk)
        layout = _ova_layout(archive, member)
        label = f"{archive}:{member.name}"
        with nbdkit.nbdkit_server(runner, nbdkit.tar_member_spec(str(archive), member.name)) as nbd:
            image = nbd_image(str(nbd.socket), VMDK)
            yield OpenedSource(
                image, VMDK, layout, label, False, stored_bytes=member.size, files=(archive,)
            )


def _ova_disk(archive: Path, wanted: str | None) -> tarfile.TarInfo:
    import tarfile

    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = [member for member in tar.getmembers() if member.isfile()]
    except (tarfile.TarError, OSError) as error:
        raise BadInput(Reason.INVALID_IMAGE, f"{archive} is not a readable OVA: {error}") from None
    if wanted is not None:
        matches = [member for member in members if member.name == wanted]
        if not matches:
            names = ", ".join(member.name for member in members)
            raise BadInput(Reason.SOURCE_NOT_FOUND, f"{archive} has no {wanted!r}; it has {names}")
        return matches[0]
    disks = [member for member in members if member.name.lower().endswith(".vmdk")]
    if len(disks) != 1:
        names = ", ".join(member.name for member in disks) or "none"
        raise BadInput(
            Reason.INVALID_JOB,
            f"{archive} holds {len(disks)} .vmdk disks ({names}); name one in the source's disk",
        )
    return disks[0]


def _ova_layout(archive: Path, member: tarfile.TarInfo) -> VmdkLayout:
    with archive.open("rb") as stream:

        def read_at(offset: int, length: int) -> bytes:
            stream.seek(member.offset_data + offset)
            return stream.read(max(0, min(length, member.size - offset)))

        layout = parse_head(
            read_at(0, HEAD_BYTES), read_at, f"{archive}:{member.name}", member.size
        )
    require_single_file(layout, member.name)
    return layout
