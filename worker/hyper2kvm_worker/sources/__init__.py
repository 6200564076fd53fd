"""Opening a job's source as something qemu can read, and nothing more.

One module per kind of source, each a `SourceDriver` (base.py): file and ova read mounted
volumes, http, ssh and vsphere read servers through nbdkit. This module only finds the
driver for a source's `kind` and makes the checks every source gets: qemu's own reading
agrees with the worker's, and the disk is within the job's limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from hyper2kvm_worker.errors import BadInput, Reason, WorkerError
from hyper2kvm_worker.protocol import Limits, Source
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.sources.base import OpenedSource, SourceDriver, agree, within
from hyper2kvm_worker.sources.file import FileDriver
from hyper2kvm_worker.sources.http import HttpDriver
from hyper2kvm_worker.sources.ova import OvaDriver
from hyper2kvm_worker.sources.ssh import SshDriver
from hyper2kvm_worker.sources.vsphere import VSphereDriver
from hyper2kvm_worker.tools import ToolRunner

__all__ = ["DRIVERS", "OpenedSource", "open_source"]

DRIVERS: dict[str, SourceDriver[Any]] = {
    driver.kind: driver
    for driver in (FileDriver(), OvaDriver(), HttpDriver(), SshDriver(), VSphereDriver())
}


@contextlib.contextmanager
def open_source(
    source: Source, runner: ToolRunner, limits: Limits | None = None
) -> Iterator[OpenedSource]:
    """Yield the source ready for qemu-img; any helper process stops when the block ends.

    `limits` are the job's (the cluster's policy): where a remote source may be fetched
    from, how large a disk may say it is. A failure inside the block names the source as
    its user knows it, not by the options qemu was given (`json:{...}` with descriptors)."""
    limits = limits or Limits()
    driver = DRIVERS.get(source.kind)
    if driver is None:  # pragma: no cover - the protocol's union is closed
        raise BadInput(Reason.INVALID_JOB, f"unknown source kind {source.kind!r}")
    with driver.open(source, runner, limits) as opened:
        try:
            info = QemuImg(runner).info(opened.image, opened.format)
            agree(opened, info)
            within(opened, info, limits)
            yield dataclasses.replace(opened, info=info)
        except WorkerError as error:
            raise error.replacing(opened.image, opened.label) from error
