"""A disk on an SSH server (ESXi's datastores under /vmfs/volumes), read over SFTP through
nbdkit's ssh plugin, the server's host key checked against the job's known_hosts file.

nbdkit connects only when a client opens the export, and then reports why it could not
only in its own log. So each file is first opened by a server without retries, whose log
says at once whether the host key, the credentials, the file or the network failed; the
data then comes from a server with nbdkit's retry filters, which ride out a dropped
connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import ClassVar

from hyper2kvm_worker import nbdkit
from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure, WorkerError
from hyper2kvm_worker.protocol import Limits, SshSource
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.sources import remote
from hyper2kvm_worker.sources.base import RAW, OpenedSource, default_format
from hyper2kvm_worker.tools import ToolRunner


class SshDriver:
    kind: ClassVar[str] = "ssh"

    @contextlib.contextmanager
    def open(self, source: SshSource, runner: ToolRunner, limits: Limits) -> Iterator[OpenedSource]:
        from hyper2kvm_worker import http_probe  # the network policy; urllib loads slowly

        for what, path in (("identity_file", source.identity_file),
                           ("known_hosts_file", source.known_hosts_file)):  # fmt: skip
            if not os.access(path, os.R_OK):
                raise BadInput(Reason.INVALID_JOB, f"{what} {path} cannot be read")
        host = f"[{source.host}]" if ":" in source.host else source.host
        http_probe.check_address(f"ssh://{host}:{source.port}", limits)
        fmt = default_format(source.path, source.format)
        with remote.opened(_Server(source, runner), runner, source.path, fmt) as opened:
            yield opened


class _Server:
    """The SSH server of one source, as remote.opened asks for it."""

    def __init__(self, source: SshSource, runner: ToolRunner) -> None:
        self._source = source
        self._runner = runner

    def label(self, path: str) -> str:
        source = self._source
        return f"ssh://{source.user}@{source.host}:{source.port}{path}"

    def _spec(self, path: str, retry: bool) -> nbdkit.ServeSpec:
        it = self._source
        return nbdkit.ssh_spec(it.host, it.port, it.user, path, it.identity_file,
                               it.known_hosts_file, retry=retry)  # fmt: skip

    def probe(self, path: str) -> int:
        with nbdkit.nbdkit_server(self._runner, self._spec(path, retry=False)) as nbd:
            try:
                info = QemuImg(self._runner).info(nbd.uri, RAW)
            except BadInput:
                raise self._failure(nbd.errors(), path) from None
        return int(info["virtual-size"])

    def serve(self, path: str, size: int) -> nbdkit.NbdServer:
        return nbdkit.nbdkit_server(self._runner, self._spec(path, retry=True))

    def _failure(self, message: str, path: str) -> WorkerError:
        """What libssh said, as a failure the operator can act on: a host key or login
        problem is the job's to fix; anything else may pass."""
        where = self.label(path)
        said = message.lower()
        if "host key" in said or "known_hosts" in said:
            return BadInput(
                Reason.UNTRUSTED_SERVER,
                f"{where}: the server's host key does not match known_hosts_file "
                f"{self._source.known_hosts_file} ({message}); pin the server's real key",
            )
        if "authentication" in said:
            return BadInput(
                Reason.AUTHENTICATION_FAILED,
                f"{where}: the server refused the key in identity_file ({message})",
            )
        if "no such file" in said or "permission denied" in said:
            return BadInput(Reason.SOURCE_NOT_FOUND, f"{where}: {message}")
        return TransientFailure(Reason.SOURCE_UNREACHABLE, f"{where}: {message or 'no answer'}")
