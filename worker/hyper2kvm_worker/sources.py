"""Opening a job's source as something qemu can read, and nothing more.

Files are confined, pinned and their VMDK layout checked before any tool touches them;
OVA disks are read in place through nbdkit's tar filter and HTTP sources through its curl
plugin. Whatever the source, qemu gets explicit options (qemu_spec.py) naming every file it
may open and no backing image the worker did not find itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper2kvm_worker import qemu_spec
from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.errors import BadInput, Reason, WorkerError
from hyper2kvm_worker.paths import confine
from hyper2kvm_worker.pinned import PinnedFiles, fd_path
from hyper2kvm_worker.protocol import FileSource, HttpSource, Limits, OvaSource, Source
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.tools import ToolRunner
from hyper2kvm_worker.vmdk_file import HEAD_BYTES, VmdkLayout, load_local, parse_head

if TYPE_CHECKING:
    import tarfile


@dataclass(frozen=True)
class OpenedSource:
    image: str  # what qemu opens: `json:{...}` options over pinned files or an NBD socket
    format: str
    layout: VmdkLayout
    label: str  # for messages and reports
    local: bool  # True when `image` is a plain file on this node
    stored_bytes: int | None = None  # what the source occupies where it is kept
    files: tuple[Path, ...] = ()  # local files read, so that no output may replace one
    data_file: str | None = None  # the one pinned file that holds all the data, if there is
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # qemu-img info's view


@contextlib.contextmanager
def open_source(
    source: Source, runner: ToolRunner, limits: Limits | None = None
) -> Iterator[OpenedSource]:
    """Yield the source ready for qemu-img; any helper process stops when the block ends.

    `limits` are the job's (the cluster's policy): where an HTTP source may be fetched
    from, how large a disk may say it is. A failure inside the block names the source as
    its user knows it, not by the options qemu was given (`json:{...}` with descriptors)."""
    limits = limits or Limits()
    with _opened(source, runner, limits) as opened:
        try:
            info = QemuImg(runner).info(opened.image, opened.format)
            _agree(opened, info)
            _within(opened, info, limits)
            yield dataclasses.replace(opened, info=info)
        except WorkerError as error:
            raise error.replacing(opened.image, opened.label) from error


def _within(opened: OpenedSource, info: Mapping[str, Any], limits: Limits) -> None:
    """Refuse a disk larger than the job may convert: its digest would hash every declared
    byte, so a few hundred bytes of VMDK could otherwise hold a worker for hours."""
    size = int(info.get("virtual-size", 0))
    if limits.max_virtual_size is not None and size > limits.max_virtual_size:
        raise BadInput(
            Reason.POLICY_VIOLATION,
            f"{opened.label} declares {size} bytes, more than this cluster's limit of "
            f"{limits.max_virtual_size} (policy.maxVirtualSize)",
        )


def _agree(opened: OpenedSource, info: Mapping[str, Any]) -> None:
    """Refuse a source that qemu reads differently from the worker: a parent only qemu sees
    (it finds a parentFileNameHint anywhere in the text, comments included), or extents
    other than the pinned ones."""
    layout = opened.layout
    hint = info.get("backing-filename")
    if hint and layout.parent is None:
        raise BadInput(
            Reason.UNSAFE_PATH,
            f"{opened.label}: qemu reads a parent file {hint!r} in it that its descriptor "
            "does not declare; refusing it",
        )
    if opened.local:
        allowed = {fd_path(fd) for fd in _all_fds(layout)}
        extents = info.get("format-specific", {}).get("data", {}).get("extents", [])
        named = {str(extent.get("filename", "")) for extent in extents}
        if not named <= allowed | {str(path) for path in layout.files}:
            raise BadInput(
                Reason.UNSAFE_PATH,
                f"{opened.label}: qemu would open {sorted(named - allowed)}, which the worker "
                "did not check; refusing it",
            )


@contextlib.contextmanager
def _opened(source: Source, runner: ToolRunner, limits: Limits) -> Iterator[OpenedSource]:
    if isinstance(source, FileSource):
        root = Path(source.root)
        path = confine(root, source.path, "source")
        with PinnedFiles() as pins, tempfile.TemporaryDirectory(prefix="hyper2kvm-src-") as tmp:
            layout = load_local(path, root, pins)
            stored = sum(os.fstat(fd).st_blocks * 512 for fd in _all_fds(layout))
            image = qemu_spec.as_filename(_local_node(layout, Path(tmp)))
            yield OpenedSource(
                image, "vmdk", layout, str(path), True, stored_bytes=stored,
                files=layout.files, data_file=_data_file(layout),
            )  # fmt: skip
    elif isinstance(source, OvaSource):
        from hyper2kvm_worker import nbdkit  # remote and archived sources only

        archive = confine(Path(source.root), source.path, "OVA")
        member = _ova_disk(archive, source.disk)
        layout = _ova_layout(archive, member)
        label = f"{archive}:{member.name}"
        with nbdkit.nbdkit_server(runner, nbdkit.tar_member_spec(str(archive), member.name)) as nbd:
            image = qemu_spec.as_filename(qemu_spec.vmdk(qemu_spec.nbd_socket(str(nbd.socket))))
            yield OpenedSource(
                image, "vmdk", layout, label, False, stored_bytes=member.size, files=(archive,)
            )
    elif isinstance(source, HttpSource):
        from hyper2kvm_worker import http_probe, nbdkit  # urllib and ssl load slowly

        url, size = http_probe.probe(source, limits)  # the final URL, every hop checked
        user = http_probe.user_of(source)
        spec = nbdkit.curl_spec(url, user, source.password_file, source.ca_file)
        with nbdkit.nbdkit_server(runner, spec) as nbd:
            label = http_probe.shown(source.url)
            layout = _remote_layout(QemuImg(runner), nbd.uri, label, size)
            image = qemu_spec.as_filename(qemu_spec.vmdk(qemu_spec.nbd_socket(str(nbd.socket))))
            yield OpenedSource(image, "vmdk", layout, label, False, stored_bytes=size)
    else:  # pragma: no cover - the protocol's union is closed
        raise BadInput(Reason.INVALID_JOB, f"unknown source kind {source!r}")


def _all_fds(layout: VmdkLayout) -> list[int]:
    fds = [fd for fd in layout.fds if fd is not None]
    return fds + (_all_fds(layout.parent) if layout.parent else [])


def _local_node(layout: VmdkLayout, scratch: Path) -> qemu_spec.Node:
    """qemu's options for a local VMDK: its pinned files, its pinned parents, nothing else.

    A single-file disk with no parent is read from its descriptor as it is. Otherwise every
    level of the disk is described anew into `scratch` (private to the job): each extent
    names its pinned file, and the only parent named is the next level's new description.
    """
    top = layout.fds[0]
    assert top is not None
    if layout.single_file and layout.parent is None:
        return qemu_spec.vmdk(qemu_spec.local_file(fd_path(top)))
    written = _describe(layout, scratch)
    return qemu_spec.vmdk(qemu_spec.local_file(str(written)), parent_in_descriptor=True)


def _describe(layout: VmdkLayout, scratch: Path) -> Path:
    parent = str(_describe(layout.parent, scratch)) if layout.parent else None
    descriptor, create_type = layout.descriptor, None
    if layout.header is not None:
        # One sparse extent, the file itself, as large as its header says (qemu reads no
        # extent list from an embedded descriptor); in a descriptor file of its own, qemu
        # takes that as twoGbMaxExtentSparse.
        whole = vd.Extent("RW", layout.header.capacity_sectors, "SPARSE", "self")
        descriptor = dataclasses.replace(descriptor, extents=(whole,))
        create_type = "twoGbMaxExtentSparse"
        names: list[str | None] = [fd_path(layout.fds[0]) if layout.fds[0] is not None else None]
    else:
        names = [fd_path(fd) if fd is not None else None for fd in layout.fds[1:]]
    text = vd.render_descriptor(descriptor, names, create_type=create_type, parent=parent)
    written = scratch / f"level-{layout.fds[0]}.vmdk"
    written.write_text(text, encoding="utf-8")
    return written


def _data_file(layout: VmdkLayout) -> str | None:
    """The one pinned file holding all of the source's data, when there is one."""
    if layout.parent is not None:
        return None
    if layout.single_file:
        return fd_path(layout.fds[0]) if layout.fds[0] is not None else None
    file_extents = [fd for fd in layout.fds[1:] if fd is not None]
    if len(layout.descriptor.extents) == 1 and len(file_extents) == 1:
        return fd_path(file_extents[0])
    return None


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
    _require_single_file(layout, member.name)
    return layout


def _remote_layout(qemu_img: QemuImg, uri: str, label: str, size: int | None) -> VmdkLayout:
    def read_at(offset: int, length: int) -> bytes:
        return qemu_img.read_head(uri, "raw", length, skip=offset)

    layout = parse_head(read_at(0, HEAD_BYTES), read_at, label, size)
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
