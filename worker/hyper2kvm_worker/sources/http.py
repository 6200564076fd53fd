"""A single-file VMDK, or a flat extent (`-flat.vmdk`, raw bytes), over HTTP(S): served by
nbdkit with range_reader.py after a HEAD request that checks the network policy at every
redirect (http_probe.py)."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

from hyper2kvm_worker import nbdkit
from hyper2kvm_worker.protocol import HttpSource, Limits
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.sources.base import (
    RAW,
    VMDK,
    OpenedSource,
    default_format,
    nbd_image,
    require_single_file,
)
from hyper2kvm_worker.sources.remote import remote_layout
from hyper2kvm_worker.tools import ToolRunner


class HttpDriver:
    kind: ClassVar[str] = "http"

    @contextlib.contextmanager
    def open(
        self, source: HttpSource, runner: ToolRunner, limits: Limits
    ) -> Iterator[OpenedSource]:
        from hyper2kvm_worker import http_probe  # urllib and ssl load slowly

        url, size = http_probe.probe(source, limits)  # the final URL, every hop checked
        user = http_probe.user_of(source)
        label = http_probe.shown(source.url)
        spec = nbdkit.http_spec(url, size, label, user=user, password_file=source.password_file,
                                ca_file=source.ca_file)  # fmt: skip
        fmt = default_format(urllib.parse.urlsplit(url).path, None)
        with nbdkit.nbdkit_server(runner, spec) as nbd:
            if fmt == RAW:
                yield OpenedSource(nbd_image(str(nbd.socket), RAW), RAW, None, label, False,
                                   stored_bytes=size, served_raw=nbd.uri)  # fmt: skip
                return
            layout = remote_layout(QemuImg(runner), nbd.uri, label, size)
            require_single_file(layout, label)
            image = nbd_image(str(nbd.socket), VMDK)
            yield OpenedSource(image, VMDK, layout, label, False, stored_bytes=size)
