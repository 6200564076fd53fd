"""A logged-in connection to vCenter or ESXi, and the one way calls go through it.

Plain synchronous functions: the operator runs them in a thread, off Kopf's event loop.
Every HTTP request has a timeout (the socket's), and `call()` retries what may pass by
itself (an unreachable server, a timeout) a few times with backoff; everything else is
classified at once into a `VSphereError`. The password is used once, for Login, and kept
nowhere.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity
from pyVmomi import SoapStubAdapter, VmomiSupport, vim

from hyper2kvm_operator.vsphere import tls
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError, classify

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0  # seconds, per HTTP request
ATTEMPTS = 3
# RetrieveServiceContent is answered in every API version; the session then speaks the
# newest version both sides know.
BASELINE_VERSION = "vim.version.version11"  # vSphere 6.5


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """https://host[:port][/path]; the SDK path /sdk when the URL has none."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
            raise VSphereError(
                Reason.INVALID_ARGUMENT,
                "the vSphere URL must be https://host[:port][/path], no credentials",
            )
        try:
            port = parts.port or 443
        except ValueError:
            raise VSphereError(Reason.INVALID_ARGUMENT, "the vSphere URL has a bad port") from None
        return cls(parts.hostname, port, parts.path.rstrip("/") or "/sdk")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class About:
    product: str  # "VMware vCenter Server", "VMware ESXi"
    version: str  # "8.0.3"
    build: str
    api_type: str  # "VirtualCenter" or "HostAgent" (ESXi)
    api_version: str  # "8.0.3.0"
    full_name: str

    @property
    def is_vcenter(self) -> bool:
        return self.api_type == "VirtualCenter"


@dataclass(frozen=True)
class Connection:
    """A logged-in session. `stub` and `content` are pyVmomi's; the rest is plain data."""

    endpoint: Endpoint
    trust: tls.Trust = field(repr=False)
    timeout: float
    version: str  # pyVmomi's name of the API version spoken
    about: About
    stub: Any = field(repr=False, compare=False)
    content: Any = field(repr=False, compare=False)


def call(
    where: str, fn: Callable[..., T], *args: Any, attempts: int = ATTEMPTS, **kwargs: Any
) -> T:
    """`fn(*args, **kwargs)`, transient failures retried with backoff; failures as
    VSphereError, with `where` saying what was being done."""

    def once() -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a VSphereError
            raise classify(exc, where) from None

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, VSphereError) and e.transient),
        reraise=True,
    )
    return retrying(once)


def new_stub(
    endpoint: Endpoint, trust: tls.Trust, version: str, timeout: float, cookie: str | None = None
) -> Any:
    """A SOAP stub, not logged in (or riding the session of `cookie`), whose connections are
    trusted as `trust` says and time out after `timeout` seconds."""
    stub = SoapStubAdapter(
        host=endpoint.host,
        port=endpoint.port,
        path=endpoint.path,
        version=version,
        sslContext=tls.context(trust),
        httpConnectionTimeout=timeout,
        connectionPoolTimeout=60,
        sessionId=cookie,
    )
    # pyVmomi opens its connections with `scheme`: pinning wraps it (see tls.py).
    stub.scheme = tls.connection_class(trust)
    return stub


def connect(
    url: str,
    username: str,
    password: str,
    *,
    ca_pem: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Connection:
    """Log in to the vCenter or ESXi at `url`, trusting its certificate as said (exactly one
    of `ca_pem`, `thumbprint`, `insecure=True`)."""
    endpoint = Endpoint.from_url(url)
    trust = tls.Trust(ca_pem=ca_pem, thumbprint=thumbprint, insecure=insecure)
    where = f"connect to {endpoint}"
    probe = new_stub(endpoint, trust, BASELINE_VERSION, timeout)
    try:
        about = _about(
            call(where, vim.ServiceInstance("ServiceInstance", probe).RetrieveContent).about
        )
    finally:
        probe.DropConnections()
    version = negotiate(about.api_version)
    stub = new_stub(endpoint, trust, version, timeout)
    try:
        content: Any = call(where, vim.ServiceInstance("ServiceInstance", stub).RetrieveContent)
        # Login is not retried: a refused password must not count as several failed logins.
        call(where, content.sessionManager.Login, username, password, None, attempts=1)
    except VSphereError:
        stub.DropConnections()
        raise
    return Connection(endpoint, trust, timeout, version, about, stub, content)


def logout(conn: Connection) -> None:
    """End the session; a session already gone is fine."""
    try:
        call(f"log out of {conn.endpoint}", conn.content.sessionManager.Logout, attempts=1)
    except VSphereError as exc:
        if exc.reason not in (Reason.NOT_AUTHENTICATED, Reason.UNREACHABLE, Reason.TIMEOUT):
            raise
    finally:
        conn.stub.DropConnections()


def negotiate(api_version: str) -> str:
    """pyVmomi's newest vim25 version that the server's API version covers."""
    exact = VmomiSupport.versionMap.get(f"vim25/{api_version}")
    if exact:
        return str(exact)
    wanted = _numeric(api_version)
    for name in VmomiSupport.GetServiceVersions("vim25"):  # newest first
        known = _numeric(VmomiSupport.versionIdMap.get(name, ""))
        if known and wanted and known <= wanted:
            return str(name)
    return BASELINE_VERSION


def _numeric(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    if not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def _about(info: Any) -> About:
    return About(
        product=str(info.name or ""),
        version=str(info.version or ""),
        build=str(info.build or ""),
        api_type=str(info.apiType or ""),
        api_version=str(info.apiVersion or ""),
        full_name=str(info.fullName or ""),
    )


def about(conn: Connection) -> About:
    """The product, version and API type of the server, as it says now."""
    content = call(
        f"read about {conn.endpoint}",
        vim.ServiceInstance("ServiceInstance", conn.stub).RetrieveContent,
    )
    return _about(content.about)
