"""A vSphere session for the standalone command line: log in with a user and a password
file, hand the worker only the session cookie (in a private file), log out at the end.

Two SOAP calls to `/sdk` with the standard library (RetrieveServiceContent to find the
session manager, then Login; Logout at the end): the worker needs no vSphere SDK. In a
cluster the operator logs in and the worker gets the cookie alone. `soap_call` makes any
other call in the session (vsphere_inventory.py finds a VM with it). Replies are bounded
in size and parsed with defusedxml: no DTD entities from a server are expanded.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree

from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure

TIMEOUT_SECONDS = 30.0
_MAX_REPLY = 1 << 20
_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"
)


@dataclass(frozen=True)
class Session:
    url: str  # https://host[:port]
    cookie: str  # vmware_soap_session="..."
    manager: str  # the SessionManager's managed object id
    context: ssl.SSLContext


def tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def cookie_file(
    url: str, user: str, password_file: Path, ca_file: str | None, insecure: bool
) -> Iterator[str]:
    """As logged_in, yielding the cookie's file alone."""
    with logged_in(url, user, password_file, ca_file, insecure) as (_, path):
        yield path


@contextlib.contextmanager
def logged_in(
    url: str, user: str, password_file: Path, ca_file: str | None, insecure: bool
) -> Iterator[tuple[Session, str]]:
    """Log in, yield the session and a file (mode 0600, in a private directory) holding its
    cookie, log out and remove the file when the block ends."""
    try:
        password = password_file.read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or "not UTF-8 text"
        raise BadInput(Reason.INVALID_JOB, f"cannot read {password_file}: {why}") from None
    session = login(url, user, password, tls_context(ca_file, insecure))
    try:
        with tempfile.TemporaryDirectory(prefix="hyper2kvm-session-") as private:
            path = Path(private) / "cookie"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as stream:
                stream.write(session.cookie)
            yield session, str(path)
    finally:
        logout(session)


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # credentials and the cookie go to the URL given, nowhere else


def login(url: str, user: str, password: str, context: ssl.SSLContext) -> Session:
    base = url.rstrip("/")
    if not base.startswith("https://") or "@" in base or "?" in base:
        raise BadInput(Reason.INVALID_JOB, f"{base}: give https://host[:port] of vCenter or ESXi")
    content, _ = _call(
        base,
        '<RetrieveServiceContent xmlns="urn:vim25">'
        '<_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>',
        context,
    )
    manager = next(
        (node.text for node in content.iter() if node.tag.endswith("sessionManager")), None
    )
    if not manager:
        raise BadInput(Reason.UNSUPPORTED, f"{base}/sdk does not look like vCenter or ESXi")
    body = (
        f'<Login xmlns="urn:vim25"><_this type="SessionManager">{escape(manager)}</_this>'
        f"<userName>{escape(user)}</userName><password>{escape(password)}</password></Login>"
    )
    _, cookie = _call(base, body, context)
    if not cookie:
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{base}/sdk gave no session cookie")
    return Session(base, cookie, manager, context)


def logout(session: Session) -> None:
    """End the session; a failure here changes nothing the job did."""
    body = (
        f'<Logout xmlns="urn:vim25"><_this type="SessionManager">{escape(session.manager)}'
        "</_this></Logout>"
    )
    with contextlib.suppress(BadInput, TransientFailure):
        _call(session.url, body, session.context, cookie=session.cookie)


def soap_call(session: Session, body: str) -> ET.Element:
    """One SOAP call (`body`: the element inside soapenv:Body) in the session; the reply's
    envelope. Faults are raised as _call raises them."""
    reply, _ = _call(session.url, body, session.context, cookie=session.cookie)
    return reply


def _call(
    base: str, body: str, context: ssl.SSLContext, cookie: str | None = None
) -> tuple[ET.Element, str | None]:
    """POST one SOAP call; its reply and the session cookie it set, if any."""
    request = urllib.request.Request(  # noqa: S310 - https:// checked by login()
        f"{base}/sdk",
        data=_ENVELOPE.format(body).encode(),
        method="POST",
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "urn:vim25/7.0"},
    )
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _Stay())
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as reply:
            text = reply.read(_MAX_REPLY + 1)
            cookies = reply.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as error:
        fault = _fault(error.read(_MAX_REPLY))
        if "login" in fault.lower() or "password" in fault.lower():
            raise BadInput(Reason.AUTHENTICATION_FAILED, f"{base}: {fault}") from None
        raise TransientFailure(
            Reason.SOURCE_UNREACHABLE, f"{base}/sdk: HTTP {error.code} {fault}".strip()
        ) from None
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", error)
        if isinstance(why, ssl.SSLCertVerificationError):
            raise BadInput(Reason.UNTRUSTED_SERVER, f"{base}: {why}") from None
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{base}/sdk: {why}") from None
    if len(text) > _MAX_REPLY:  # the same question gets the same answer: not worth a retry
        raise BadInput(Reason.UNSUPPORTED, f"{base}/sdk: a reply of more than {_MAX_REPLY} bytes")
    session = next(
        (c.split(";", 1)[0].strip() for c in cookies if c.startswith("vmware_soap_session=")),
        None,
    )
    try:
        return defusedxml.ElementTree.fromstring(text), session
    except (ET.ParseError, defusedxml.DefusedXmlException):
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{base}/sdk: not a SOAP reply") from None


def _fault(text: bytes) -> str:
    try:
        root = defusedxml.ElementTree.fromstring(text)
    except (ET.ParseError, defusedxml.DefusedXmlException):
        return ""
    found = next((node.text for node in root.iter() if node.tag.endswith("faultstring")), None)
    return (found or "").strip()[:300]
