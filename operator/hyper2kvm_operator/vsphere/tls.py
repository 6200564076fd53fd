"""How the server's certificate is trusted: a CA bundle, a pinned thumbprint, or (said
explicitly) not at all.

A pinned thumbprint is checked on every TLS connection the SOAP client opens, not only on
the first: pyVmomi's own `thumbprint=` argument checks it only when normal verification
fails, and then turns verification off on the shared context.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import re
import ssl
from dataclasses import dataclass
from typing import Any

from hyper2kvm_operator.vsphere.errors import Reason, VSphereError, classify

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Trust:
    """Exactly one of: PEM certificates the server's must chain to; the SHA-256 or SHA-1
    thumbprint of the server's certificate (AA:BB:... or plain hex); `insecure`."""

    ca_pem: str | None = None
    thumbprint: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        given = [self.ca_pem is not None, self.thumbprint is not None, self.insecure]
        if sum(given) != 1:
            raise VSphereError(
                Reason.INVALID_ARGUMENT,
                "give exactly one of a CA bundle, a thumbprint, or insecure",
            )
        if self.thumbprint is not None:
            normalize_thumbprint(self.thumbprint)


def normalize_thumbprint(text: str) -> str:
    """Lowercase hex without separators; 40 digits (SHA-1) or 64 (SHA-256)."""
    digits = text.replace(":", "").strip().lower()
    if not _HEX.match(digits) or len(digits) not in (40, 64):
        raise VSphereError(
            Reason.INVALID_ARGUMENT,
            "a thumbprint is the certificate's SHA-256 or SHA-1 digest in hex (AA:BB:...)",
        )
    return digits


def thumbprint_matches(der: bytes, pinned: str) -> bool:
    digits = normalize_thumbprint(pinned)
    algorithm = "sha1" if len(digits) == 40 else "sha256"
    return hmac.compare_digest(hashlib.new(algorithm, der).hexdigest(), digits)


def context(trust: Trust) -> ssl.SSLContext:
    """The client context: verifying against the CA bundle, or none (pinning checks the
    certificate itself once the handshake is done)."""
    if trust.ca_pem is not None:
        try:
            return ssl.create_default_context(cadata=trust.ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise VSphereError(
                Reason.INVALID_ARGUMENT, f"the CA bundle is not PEM: {exc}"
            ) from None
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


class PinMismatchError(ssl.SSLCertVerificationError):
    """The server's certificate is not the pinned one."""


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, pinned: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pinned = pinned

    def connect(self) -> None:
        super().connect()
        der = (
            self.sock.getpeercert(binary_form=True)
            if isinstance(self.sock, ssl.SSLSocket)
            else None
        )
        if der is None or not thumbprint_matches(der, self._pinned):
            self.close()
            error = PinMismatchError("the certificate's thumbprint is not the pinned one")
            error.verify_message = "thumbprint mismatch"
            raise error


def connection_class(trust: Trust) -> Any:
    """What the SOAP stub opens its HTTPS connections with."""
    if trust.thumbprint is None:
        return http.client.HTTPSConnection
    return functools.partial(_PinnedHTTPSConnection, pinned=trust.thumbprint)


def pinned_certificate(host: str, port: int, trust: Trust, timeout: float) -> str:
    """The server's own certificate (PEM), once it proved to be the pinned one: what a
    client that cannot pin a thumbprint (curl, for the worker) trusts instead."""
    if trust.thumbprint is None:
        raise VSphereError(Reason.INVALID_ARGUMENT, "only a pinned certificate is fetched")
    connection = _PinnedHTTPSConnection(
        host, port, timeout=timeout, context=context(trust), pinned=trust.thumbprint
    )
    try:
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket)
        der = connection.sock.getpeercert(binary_form=True)
    except OSError as exc:
        raise classify(exc, f"read the certificate of {host}:{port}") from None
    finally:
        connection.close()
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der)
