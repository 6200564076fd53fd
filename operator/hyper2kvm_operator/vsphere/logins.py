"""The operator's own session with each vCenter or ESXi, made once and shared by every job
that names the same provider.

Blocking, like the rest of the package: callers run `with_connection()` in a thread. A
session is made again when the provider's login changes (another URL, password or trust)
or when the server has forgotten it (expired, restarted).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hyper2kvm_operator.vsphere import client
from hyper2kvm_operator.vsphere.client import Connection
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError

T = TypeVar("T")


@dataclass(frozen=True)
class Login:
    url: str
    username: str
    password: str = field(repr=False)
    ca_bundle: str | None = None
    thumbprint: str | None = None
    insecure: bool = False


def connect(login: Login) -> Connection:
    return client.connect(
        login.url,
        login.username,
        login.password,
        ca_pem=login.ca_bundle,
        thumbprint=login.thumbprint,
        insecure=login.insecure,
    )


class Logins:
    """One logged-in connection per provider (by "namespace/name")."""

    def __init__(self, connect: Callable[[Login], Connection] = connect) -> None:
        self._connect = connect
        self._sessions: dict[str, tuple[Login, Connection]] = {}
        self._lock = threading.Lock()

    def with_connection(self, provider: str, login: Login, use: Callable[[Connection], T]) -> T:
        """`use(connection)` on the provider's session; once more on a new session when the
        server no longer knows the old one."""
        connection = self._get(provider, login)
        try:
            return use(connection)
        except VSphereError as error:
            if error.reason is not Reason.NOT_AUTHENTICATED:
                raise
        self._forget(provider, connection)
        return use(self._get(provider, login))

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for _, connection in sessions:
            with contextlib.suppress(VSphereError):
                client.logout(connection)

    def _get(self, provider: str, login: Login) -> Connection:
        with self._lock:
            known = self._sessions.get(provider)
            if known is not None and known[0] == login:
                return known[1]
        connection = self._connect(login)  # outside the lock: a slow server blocks no other
        with self._lock:
            replaced = self._sessions.get(provider)
            self._sessions[provider] = (login, connection)
        if replaced is not None:
            with contextlib.suppress(VSphereError):
                client.logout(replaced[1])
        return connection

    def _forget(self, provider: str, connection: Connection) -> None:
        with self._lock:
            known = self._sessions.get(provider)
            if known is not None and known[1] is connection:
                del self._sessions[provider]
        connection.stub.DropConnections()
