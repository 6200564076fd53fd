"""A file in a vSphere datastore, read over HTTPS from vCenter's or ESXi's `/folder` path
through nbdkit's curl plugin, with a session cookie: the password never reaches the worker.

Each file is first asked for with a HEAD request (http_probe.py), which checks the
cluster's network policy and turns a refused certificate, an expired session or a
missing file into a reason; nbdkit then reads it with its retry filters, by HTTPS only,
following no redirect (the cookie goes to this host and no other).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

from hyper2kvm_worker import nbdkit
from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.protocol import Limits, VSphereSource
from hyper2kvm_worker.sources import remote
from hyper2kvm_worker.sources.base import OpenedSource, default_format
from hyper2kvm_worker.tools import ToolRunner


def datastore_url(base: str, datacenter: str, datastore: str, path: str) -> str:
    """`https://host/folder/<path>?dcPath=<dc>&dsName=<ds>`, every part quoted: datastore
    and folder names often hold spaces and brackets."""
    query = urllib.parse.urlencode(
        {"dcPath": datacenter, "dsName": datastore}, quote_via=urllib.parse.quote
    )
    return f"{base.rstrip('/')}/folder/{urllib.parse.quote(path, safe='/')}?{query}"


class VSphereDriver:
    kind: ClassVar[str] = "vsphere"

    @contextlib.contextmanager
    def open(
        self, source: VSphereSource, runner: ToolRunner, limits: Limits
    ) -> Iterator[OpenedSource]:
        fmt = default_format(source.path, source.format)
        with remote.opened(_Datastore(source, runner, limits), runner, source.path, fmt) as it:
            yield it


class _Datastore:
    """The datastore of one source, as remote.opened asks for it."""

    def __init__(self, source: VSphereSource, runner: ToolRunner, limits: Limits) -> None:
        self._source = source
        self._runner = runner
        self._limits = limits

    def _url(self, path: str) -> str:
        source = self._source
        return datastore_url(source.url, source.datacenter, source.datastore, path)

    def label(self, path: str) -> str:
        host = urllib.parse.urlsplit(self._source.url).netloc
        return f"[{self._source.datastore}] {path} on {host}"

    def probe(self, path: str) -> int:
        from hyper2kvm_worker import http_probe  # urllib and ssl load slowly

        source, url, where = self._source, self._url(path), self.label(path)
        http_probe.check_address(url, self._limits)
        access = http_probe.Access(
            cookie_file=source.cookie_file, ca_file=source.ca_file, insecure=source.insecure
        )
        try:
            found = http_probe.head(url, access)
        except http_probe.Refused as error:
            if error.code in (401, 403):
                raise TransientFailure(
                    Reason.SESSION_EXPIRED,
                    f"{where}: the session cookie was refused (HTTP {error.code}); "
                    "a new session is needed",
                ) from None
            missing = error.code in (404, 410)
            kind = BadInput if error.code < 500 else TransientFailure
            reason = Reason.SOURCE_NOT_FOUND if missing else Reason.SOURCE_UNREACHABLE
            raise kind(reason, f"{where}: HTTP {error.code}") from None
        except http_probe.Untrusted as error:
            raise BadInput(
                Reason.UNTRUSTED_SERVER,
                f"{error}; give the CA that signed the server's certificate in ca_file",
            ) from None
        if isinstance(found, str):
            raise BadInput(
                Reason.UNSUPPORTED,
                f"{where}: the server redirects to {http_probe.shown(found)}; name the host "
                "that serves the datastore",
            )
        if source.size is not None and path == source.path and found != source.size:
            raise BadInput(
                Reason.INVALID_IMAGE,
                f"{where} is {found} bytes; vSphere describes the disk as {source.size} bytes",
            )
        return found

    def serve(self, path: str, size: int) -> nbdkit.NbdServer:
        source = self._source
        spec = nbdkit.http_spec(
            self._url(path), size, self.label(path), cookie_file=source.cookie_file,
            ca_file=source.ca_file, insecure=source.insecure, https_only=True,
        )  # fmt: skip
        return nbdkit.nbdkit_server(self._runner, spec)
