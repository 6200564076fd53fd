"""A HEAD request before nbdkit opens a URL, so HTTP problems get a clear reason, and the
cluster's network policy for HTTP sources, checked at every hop.

nbdkit's curl plugin reports a missing file or a server without range requests only as
"export not available"; asking the server first turns that into something to act on.
Redirects are followed here, one at a time, each new address checked against the job's
allowed and denied networks; nbdkit then gets the final URL and follows nothing itself.
A URL carrying credentials is refused: they belong in a Secret, and would otherwise end
up in logs and error messages. The vSphere datastore source asks with `head` too, with its
session cookie, and reads the answers its own way (a refused cookie means a new session).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.protocol import HttpSource, Limits

TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5
_PERMANENT_STATUSES = {401, 403, 404, 410}
_REDIRECTS = {301, 302, 303, 307, 308}


def shown(url: str) -> str:
    """The URL as messages show it: never with credentials in it."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_address(url: str, limits: Limits) -> None:
    """Refuse a URL with credentials in it, or whose host resolves to a network the job's
    limits deny (or do not allow). With no limits (the CLI on a laptop), any network."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise BadInput(
            Reason.INVALID_JOB,
            f"{shown(url)}: the URL carries credentials; put them in a Secret (secretRef)",
        )
    if not limits.http_allow and not limits.http_deny:
        return
    host = parts.hostname or ""
    try:
        found = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{shown(url)}: {error}") from None
    allow = [ipaddress.ip_network(n, strict=False) for n in limits.http_allow]
    deny = [ipaddress.ip_network(n, strict=False) for n in limits.http_deny]
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
        denied = next((network for network in deny if address in network), None)
        if denied is not None:
            where = f"in {denied}, which this cluster denies to network sources"
        elif not any(address in network for network in allow):
            where = "outside every network this cluster lets network sources reach"
        else:
            continue
        raise BadInput(
            Reason.POLICY_VIOLATION, f"{shown(url)}: {host} is {address}, {where} (policy.http)"
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx reaches probe(), which checks the next hop itself


def _read_secret(path: str) -> str:
    return _read_secret_raw(path).strip()


def _read_secret_raw(path: str) -> str:
    try:
        with Path(path).open(encoding="utf-8") as stream:
            return stream.read(1 << 16)
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or "not UTF-8 text"
        raise BadInput(Reason.INVALID_JOB, f"cannot read credentials {path}: {why}") from None


def user_of(source: HttpSource) -> str | None:
    """The user name: from `user_file` (a mounted Secret) when given, else `user`."""
    return _read_secret(source.user_file) if source.user_file else source.user


@dataclass(frozen=True)
class Access:
    """What a request presents and whom it trusts: basic credentials or a session cookie
    (each from a file), the CA to verify the server with, or no verification at all."""

    user: str | None = None
    password_file: str | None = None
    cookie_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False


class Refused(Exception):
    """The server answered with an HTTP error status; the caller decides what it means."""

    def __init__(self, url: str, code: int, reason: str) -> None:
        super().__init__(f"{shown(url)}: HTTP {code} {reason}")
        self.code = code


class Untrusted(Exception):
    """The server's TLS certificate was not signed by a CA the request trusts."""


def probe(source: HttpSource, limits: Limits) -> tuple[str, int]:
    """The final URL (after redirects, each checked) and size of the file at `source.url`;
    raises with the reason when it cannot be read or may not be reached."""
    access = Access(user_of(source), source.password_file, ca_file=source.ca_file)
    url = source.url
    for _ in range(MAX_REDIRECTS + 1):
        check_address(url, limits)
        try:
            found = head(url, access)
        except Refused as error:
            kind = BadInput if error.code in _PERMANENT_STATUSES else TransientFailure
            missing = error.code in (404, 410)
            raise kind(Reason.SOURCE_NOT_FOUND if missing else Reason.SOURCE_UNREACHABLE,
                       str(error)) from None  # fmt: skip
        except Untrusted as error:
            raise TransientFailure(Reason.SOURCE_UNREACHABLE, str(error)) from None
        if isinstance(found, int):
            return url, found
        url = urllib.parse.urljoin(url, found)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise BadInput(Reason.UNSAFE_PATH, f"{shown(source.url)} redirects to {shown(url)}")
    raise BadInput(
        Reason.SOURCE_UNREACHABLE, f"{shown(source.url)}: more than {MAX_REDIRECTS} redirects"
    )


def read_cookie(path: str) -> str:
    """A session cookie from its file, as nbdkit's `cookie=+FILE` sends it (one trailing
    newline dropped); refused when it could break out of its header line."""
    text = _read_secret_raw(path)
    text = text[:-1] if text.endswith("\n") else text
    if len(text) > 4096 or any(not 0x20 <= ord(char) < 0x7F for char in text):
        raise BadInput(
            Reason.INVALID_JOB,
            f"the cookie in {path} is not one line of printable ASCII (4096 bytes at most)",
        )
    return text


def head(url: str, access: Access) -> int | str:
    """The size of the file at `url`, or where it redirects to."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if access.user:
        password = _read_secret(access.password_file) if access.password_file else ""
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, url, access.user, password)
        handlers.append(urllib.request.HTTPBasicAuthHandler(manager))
    if access.ca_file or access.insecure:
        context = ssl.create_default_context(cafile=access.ca_file)
        # A certificate in ca_file is trusted as it is, even when it is no root (a server's
        # own, pinned): as curl does for nbdkit's reads of the same URL.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if access.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 - http(s) only
    if access.cookie_file:
        cookie = read_cookie(access.cookie_file)
        if cookie:
            request.add_header("Cookie", cookie)
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
            ranges = response.headers.get("Accept-Ranges", "")
    except urllib.error.HTTPError as error:
        location = error.headers.get("Location") if error.headers else None
        if error.code in _REDIRECTS and location:
            return str(location)
        raise Refused(url, error.code, str(error.reason)) from None
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", error)
        if isinstance(why, ssl.SSLCertVerificationError):
            raise Untrusted(f"{shown(url)}: {why}") from None
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{shown(url)}: {why}") from None
    if "bytes" not in ranges.lower():
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{shown(url)}: the server does not accept range requests, which reading a disk "
            "in place needs; serve it from a server that does (nginx, Apache, S3)",
        )
    if length is None or not length.isdigit():
        raise BadInput(Reason.UNSUPPORTED, f"{shown(url)}: the server gives no Content-Length")
    return int(length)
