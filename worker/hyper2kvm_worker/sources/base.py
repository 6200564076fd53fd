"""What every source gives the conversion, the interface each source implements, and the
checks they share.

A source module turns one protocol source into an `OpenedSource`: an image qemu opens
with options the worker wrote (qemu_spec.py) and the format to read it in, plus what the
worker learnt of it on the way (its VMDK layout, the local files it reads). A source may
be a VMDK or raw bytes (an ESXi flat extent), which need no layout at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from hyper2kvm_worker import qemu_spec
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.pinned import fd_path
from hyper2kvm_worker.protocol import Limits
from hyper2kvm_worker.tools import CancelToken, ToolRunner
from hyper2kvm_worker.vmdk_file import VmdkLayout

RAW = "raw"
VMDK = "vmdk"
S = TypeVar("S", contravariant=True)


@dataclass(frozen=True)
class IntegrityCheck:
    """A check of bytes the source's author recorded a digest of (an OVA's manifest), made
    while they are converted: `verify` reads `size` bytes, polls the token, and raises
    BadInput when they differ from the record."""

    label: str  # the file it reads, for reports
    size: int
    verify: Callable[[CancelToken], None]


@dataclass(frozen=True)
class OpenedSource:
    image: str  # what qemu opens: `json:{...}` options over pinned files or an NBD socket
    format: str  # "vmdk" or "raw"
    layout: VmdkLayout | None  # the VMDK read (for a flat extent: its descriptor, if any)
    label: str  # for messages and reports
    local: bool  # True when `image` is a plain file on this node
    stored_bytes: int | None = None  # what the source occupies where it is kept
    files: tuple[Path, ...] = ()  # local files read, so that no output may replace one
    data_file: str | None = None  # the one pinned file that holds all the data, if there is
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # qemu-img info's view
    checks: tuple[IntegrityCheck, ...] = ()  # run beside the conversion, before its commit
    served_raw: str | None = None  # an NBD URI serving exactly these raw bytes, if one does


class SourceDriver(Protocol, Generic[S]):
    """One kind of source (the protocol's `kind`): opens it, yields it ready for qemu-img,
    and stops whatever helper process it started when the block ends."""

    kind: ClassVar[str]

    def open(
        self, source: S, runner: ToolRunner, limits: Limits
    ) -> contextlib.AbstractContextManager[OpenedSource]: ...


def nbd_image(socket: str, fmt: str) -> str:
    """qemu's options for a disk served on an NBD socket: VMDK with no parent, or raw."""
    file = qemu_spec.nbd_socket(socket)
    node = qemu_spec.vmdk(file) if fmt == VMDK else {"driver": RAW, "file": dict(file)}
    return qemu_spec.as_filename(node)


def default_format(path: str, chosen: str | None) -> str:
    """A flat extent is raw bytes; any other .vmdk is read as a VMDK. Never guessed from
    the content: a raw disk can begin with anything."""
    if chosen is not None:
        return chosen
    return RAW if path.lower().endswith("-flat.vmdk") else VMDK


def within(opened: OpenedSource, info: Mapping[str, Any], limits: Limits) -> None:
    """Refuse a disk larger than the job may convert: its digest would hash every declared
    byte, so a few hundred bytes of VMDK could otherwise hold a worker for hours."""
    size = int(info.get("virtual-size", 0))
    if limits.max_virtual_size is not None and size > limits.max_virtual_size:
        raise BadInput(
            Reason.POLICY_VIOLATION,
            f"{opened.label} declares {size} bytes, more than this cluster's limit of "
            f"{limits.max_virtual_size} (policy.maxVirtualSize)",
        )


def agree(opened: OpenedSource, info: Mapping[str, Any]) -> None:
    """Refuse a source that qemu reads differently from the worker: a parent only qemu sees
    (it finds a parentFileNameHint anywhere in the text, comments included), or extents
    other than the pinned ones."""
    layout = opened.layout
    hint = info.get("backing-filename")
    if hint and (layout is None or layout.parent is None):
        raise BadInput(
            Reason.UNSAFE_PATH,
            f"{opened.label}: qemu reads a parent file {hint!r} in it that its descriptor "
            "does not declare; refusing it",
        )
    if opened.local and layout is not None:
        allowed = {fd_path(fd) for fd in all_fds(layout)}
        extents = info.get("format-specific", {}).get("data", {}).get("extents", [])
        named = {str(extent.get("filename", "")) for extent in extents}
        if not named <= allowed | {str(path) for path in layout.files}:
            raise BadInput(
                Reason.UNSAFE_PATH,
                f"{opened.label}: qemu would open {sorted(named - allowed)}, which the worker "
                "did not check; refusing it",
            )


def all_fds(layout: VmdkLayout) -> list[int]:
    fds = [fd for fd in layout.fds if fd is not None]
    return fds + (all_fds(layout.parent) if layout.parent else [])


def require_single_file(layout: VmdkLayout, label: str) -> None:
    # A text descriptor names other files that cannot be reached through one stream.
    if not layout.single_file or layout.descriptor.has_parent:
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{label} is a descriptor or snapshot VMDK whose extents are separate files; "
            "serve a single-file VMDK (monolithicSparse or streamOptimized) or an OVA",
        )
