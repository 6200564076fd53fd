"""A disk read through one NBD stream from a server: its layout from its first bytes, and
the flat extent a datastore's descriptor names.

The server side is the source module's (`Remote`): it says how large a file is, with a
clear reason when it cannot be read, and serves it on an NBD socket. What is read is
decided here: a flat extent as raw bytes, a single-file VMDK as a VMDK, and a text
descriptor followed to its one flat extent, in the same directory, never further.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import Protocol

from hyper2kvm_worker import vmdk_descriptor as vd
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.nbdkit import NbdServer
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.sources.base import RAW, VMDK, OpenedSource, nbd_image, require_single_file
from hyper2kvm_worker.tools import ToolRunner
from hyper2kvm_worker.vmdk_file import HEAD_BYTES, VmdkLayout, parse_head

_FLAT_TYPES = frozenset({"FLAT", "VMFS"})


class Remote(Protocol):
    def label(self, path: str) -> str: ...

    def probe(self, path: str) -> int:
        """The size of the file at `path`; raises with a reason a person can act on."""
        ...

    def serve(self, path: str, size: int) -> contextlib.AbstractContextManager[NbdServer]: ...


@contextlib.contextmanager
def opened(remote: Remote, runner: ToolRunner, path: str, fmt: str) -> Iterator[OpenedSource]:
    """`path` on the server as qemu should read it: raw, a single-file VMDK, or the flat
    extent its descriptor names."""
    size = remote.probe(path)
    label = remote.label(path)
    if fmt == RAW:
        with remote.serve(path, size) as nbd:
            yield OpenedSource(nbd_image(str(nbd.socket), RAW), RAW, None, label, False,
                               stored_bytes=size, served_raw=nbd.uri)  # fmt: skip
        return
    with remote.serve(path, size) as nbd:
        layout = remote_layout(QemuImg(runner), nbd.uri, label, size)
        if layout.single_file:
            require_single_file(layout, label)
            yield OpenedSource(nbd_image(str(nbd.socket), VMDK), VMDK, layout, label, False,
                               stored_bytes=size)  # fmt: skip
            return
    name, declared = flat_extent(layout, label)
    extent = posixpath.join(posixpath.dirname(path), name)
    found = remote.probe(extent)
    if found != declared:
        raise BadInput(
            Reason.INVALID_IMAGE,
            f"{remote.label(extent)} is {found} bytes; its descriptor {label} says {declared}",
        )
    with remote.serve(extent, found) as nbd:
        yield OpenedSource(nbd_image(str(nbd.socket), RAW), RAW, layout, remote.label(extent),
                           False, stored_bytes=found, served_raw=nbd.uri)  # fmt: skip


def remote_layout(qemu_img: QemuImg, uri: str, label: str, size: int | None) -> VmdkLayout:
    """The VMDK layout of the disk served at `uri`, from its first bytes."""

    def read_at(offset: int, length: int) -> bytes:
        return qemu_img.read_head(uri, RAW, length, skip=offset)

    return parse_head(read_at(0, HEAD_BYTES), read_at, label, size)


def flat_extent(layout: VmdkLayout, label: str) -> tuple[str, int]:
    """The file name and size of the one flat extent a descriptor names beside itself.

    parse_head has refused absolute names, `..` and device mappings; here anything but
    one plain name in the descriptor's own directory is refused too."""
    descriptor = layout.descriptor
    extents = descriptor.extents
    if descriptor.has_parent:
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{label} is a snapshot (it has a parent); consolidate it, or name the base "
            "disk's -flat.vmdk",
        )
    one = extents[0] if len(extents) == 1 else None
    if one is None or one.type not in _FLAT_TYPES or one.file is None or one.offset_sectors:
        kinds = ", ".join(extent.type for extent in extents) or "none"
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{label} is a descriptor whose extents ({kinds}) are not one flat file; name a "
            "-flat.vmdk or a single-file VMDK (monolithicSparse or streamOptimized)",
        )
    if "/" in one.file or "\\" in one.file or one.file in (".", ""):
        raise BadInput(
            Reason.UNSAFE_PATH,
            f"{label} names its extent {one.file!r} outside its own directory; refusing it",
        )
    return one.file, one.sectors * vd.SECTOR
