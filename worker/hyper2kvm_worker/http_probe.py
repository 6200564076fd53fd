"""A HEAD request before nbdkit opens a URL, so HTTP problems get a clear reason.

nbdkit's curl plugin reports a missing file or a server without range requests only as
"export not available"; asking the server first turns that into something to act on.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.protocol import HttpSource

TIMEOUT_SECONDS = 30.0
_PERMANENT_STATUSES = {401, 403, 404, 410}


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise BadInput(
            Reason.INVALID_JOB, f"cannot read credentials {path}: {error.strerror}"
        ) from None


def user_of(source: HttpSource) -> str | None:
    """The user name: from `user_file` (a mounted Secret) when given, else `user`."""
    return _read_secret(source.user_file) if source.user_file else source.user


def probe(source: HttpSource) -> int:
    """The size of the file at `source.url`; raises with the reason when it cannot be read."""
    handlers: list[urllib.request.BaseHandler] = []
    user = user_of(source)
    if user:
        password = _read_secret(source.password_file) if source.password_file else ""
        manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        manager.add_password(None, source.url, user, password)
        handlers.append(urllib.request.HTTPBasicAuthHandler(manager))
    if source.ca_file:
        context = ssl.create_default_context(cafile=source.ca_file)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(source.url, method="HEAD")  # noqa: S310 - http(s) only
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
            ranges = response.headers.get("Accept-Ranges", "")
    except urllib.error.HTTPError as error:
        kind = BadInput if error.code in _PERMANENT_STATUSES else TransientFailure
        reason = Reason.SOURCE_NOT_FOUND if error.code in (404, 410) else Reason.SOURCE_UNREACHABLE
        raise kind(reason, f"{source.url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", error)
        raise TransientFailure(Reason.SOURCE_UNREACHABLE, f"{source.url}: {why}") from None
    if "bytes" not in ranges.lower():
        raise BadInput(
            Reason.UNSUPPORTED,
            f"{source.url}: the server does not accept range requests, which reading a disk "
            "in place needs; serve it from a server that does (nginx, Apache, S3)",
        )
    if length is None or not length.isdigit():
        raise BadInput(Reason.UNSUPPORTED, f"{source.url}: the server gives no Content-Length")
    return int(length)
