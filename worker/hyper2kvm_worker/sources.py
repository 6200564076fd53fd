"""Opening a job's source as something qemu-img can read: a checked local path or an NBD URI.

Files are confined and their VMDK layout checked before any tool touches them; OVA disks
are read in place through nbdkit's tar filter and HTTP sources through its curl plugin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.protocol import FileSource, HttpSource, OvaSource, Source
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.tools import ToolRunner
from hyper2kvm_worker.vmdk_file import HEAD_BYTES, VmdkLayout, load_local, parse_head

if TYPE_CHECKING:
    import tarfile


@dataclass(frozen=True)
class OpenedSource:
    image: str  # what qemu-img opens: a path or an nbd+unix:// URI
    format: str
    layout: VmdkLayout
    label: str  # for messages and reports
    local: bool  # True when `image` is a plain file on this node
    stored_bytes: int | None = None  # what the source occupies where it is kept
    files: tuple[Path, ...] = ()  # local files read, so that no output may replace one


@contextlib.contextmanager
def open_source(source: Source, runner: ToolRunner) -> Iterator[OpenedSource]:
    """Yield the source ready for qemu-img; any helper process stops when the block ends."""
    if isinstance(source, FileSource):
        path = confine(Path(source.root), source.path, "source")
        layout = load_local(path)
        stored = sum(file.stat().st_blocks * 512 for file in layout.files)
        yield OpenedSource(
            str(path), "vmdk", layout, str(path), True, stored_bytes=stored, files=layout.files
        )
    elif isinstance(source, OvaSource):
        from hyper2kvm_worker import nbdkit  # remote and archived sources only

        archive = confine(Path(source.root), source.path, "OVA")
        member = _ova_disk(archive, source.disk)
        layout = _ova_layout(archive, member)
        label = f"{archive}:{member.name}"
        with nbdkit.NbdkitServer(runner, nbdkit.tar_member_spec(str(archive), member.name)) as nbd:
            yield OpenedSource(
                nbd.uri, "vmdk", layout, label, False, stored_bytes=member.size, files=(archive,)
            )
    elif isinstance(source, HttpSource):
        from hyper2kvm_worker import http_probe, nbdkit  # urllib and ssl load slowly

        size = http_probe.probe(source)
        user = http_probe.user_of(source)
        spec = nbdkit.curl_spec(source.url, user, source.password_file, source.ca_file)
        with nbdkit.NbdkitServer(runner, spec) as nbd:
            layout = _remote_layout(QemuImg(runner), nbd.uri, source.url)
            yield OpenedSource(nbd.uri, "vmdk", layout, source.url, False, stored_bytes=size)
    else:  # pragma: no cover - the protocol's union is closed
        raise BadInput(Reason.INVALID_JOB, f"unknown source kind {source!r}")


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

        layout = parse_head(read_at(0, HEAD_BYTES), read_at, f"{archive}:{member.name}")
    _require_single_file(layout, member.name)
    return layout


def _remote_layout(qemu_img: QemuImg, uri: str, label: str) -> VmdkLayout:
    def read_at(offset: int, length: int) -> bytes:
        return qemu_img.read_head(uri, "raw", length, skip=offset)

    layout = parse_head(read_at(0, HEAD_BYTES), read_at, label)
    _require_single_file(layout, label)
    return layout


def _require_single_file(layout: VmdkLayout, label: str) -> None:
    # A text descriptor names other files that cannot be reached through one stream.
    if not layout.single_file or layout.descriptor.has_parent:
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{label} is a descriptor or snapshot VMDK whose extents are separate files; "
            "serve a single-file VMDK (monolithicSparse or streamOptimized) or an OVA",
        )
