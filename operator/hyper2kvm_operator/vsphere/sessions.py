"""A session of its own for each worker attempt: cloned from the operator's, revocable.

The worker never sees the password. The operator asks its own session for a one-time
clone ticket, redeems it on a fresh SOAP connection that never logged in, and hands the
worker only the new session's cookie (for the datastore's `/folder` URL). Keeping it alive
and ending it are the operator's: `keep_alive()` on a timer while the attempt runs, and
`terminate()` from the operator's own session when the attempt ends or is cancelled.
"""

from __future__ import annotations

import http.cookies
from dataclasses import dataclass, field, replace
from typing import Any

from pyVmomi import vim

from hyper2kvm_operator.vsphere import client, properties
from hyper2kvm_operator.vsphere.client import Connection, call
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError

COOKIE_NAME = "vmware_soap_session"


@dataclass(frozen=True)
class WorkerSession:
    """A cloned session. Both values authenticate as the operator's user: keep them out of
    logs (they are left out of the repr)."""

    cookie: str = field(repr=False)  # the value of the vmware_soap_session cookie
    key: str = field(repr=False)  # the session's key, for TerminateSession
    user: str

    @property
    def cookie_header(self) -> str:
        """The Cookie header a request to /folder carries."""
        return f'{COOKIE_NAME}="{self.cookie}"'


def clone(conn: Connection) -> WorkerSession:
    """A new session of the operator's user, from a clone ticket of `conn`'s session."""
    where = f"clone a session on {conn.endpoint}"
    ticket = call(where, conn.content.sessionManager.AcquireCloneTicket)
    stub = client.new_stub(conn.endpoint, conn.trust, conn.version, conn.timeout)
    try:
        content: Any = call(where, vim.ServiceInstance("ServiceInstance", stub).RetrieveContent)
        # A ticket is good for one use: never retried.
        session = call(where, content.sessionManager.CloneSession, ticket, attempts=1)
        cookie = _cookie_value(stub.cookie)
    finally:
        stub.DropConnections()
    if not cookie:
        raise VSphereError(Reason.SERVER_FAULT, f"{where}: the server set no session cookie")
    return WorkerSession(cookie=cookie, key=str(session.key), user=str(session.userName))


def keep_alive(conn: Connection, session: WorkerSession) -> bool:
    """Touch the cloned session so that it does not idle out; False when it is gone
    (terminated or expired). Called on the worker session itself: a call from the
    operator's session would not reset the clone's idle timer."""
    where = f"keep a worker session alive on {conn.endpoint}"
    stub = client.new_stub(
        conn.endpoint, conn.trust, conn.version, conn.timeout, cookie=session.cookie
    )
    try:
        content: Any = call(where, vim.ServiceInstance("ServiceInstance", stub).RetrieveContent)
        worker = replace(conn, stub=stub, content=content)
        manager = content.sessionManager
        try:
            found = properties.read_many(
                worker, [manager], {vim.SessionManager: ["currentSession"]}, where
            )
        except VSphereError as exc:
            if exc.reason is Reason.NOT_AUTHENTICATED:
                return False
            raise
    finally:
        stub.DropConnections()
    return found.get(manager._moId, {}).get("currentSession") is not None


def terminate(conn: Connection, session: WorkerSession) -> None:
    """End the worker's session from the operator's own; one already gone is fine."""
    try:
        call(
            f"terminate a worker session on {conn.endpoint}",
            conn.content.sessionManager.TerminateSession,
            [session.key],
        )
    except VSphereError as exc:
        if exc.reason is not Reason.NOT_FOUND:
            raise


def restore(cookie_header: str, key: str) -> WorkerSession:
    """A session as its Cookie header and key were kept (in the attempt's Secret)."""
    return WorkerSession(cookie=_cookie_value(cookie_header), key=key, user="")


def _cookie_value(header: str) -> str:
    if not header:
        return ""
    jar = http.cookies.SimpleCookie()
    jar.load(header)
    morsel = jar.get(COOKIE_NAME)
    return morsel.value if morsel is not None else ""
