"""The classification of failures, the retry of transient ones, and thumbprint handling:
pure, no server."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from pyVmomi import vim, vmodl

from hyper2kvm_operator.vsphere import client, tls
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError, classify


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (vim.fault.InvalidLogin(), Reason.INVALID_LOGIN),
        (ssl.SSLCertVerificationError("certificate verify failed"), Reason.CERTIFICATE_MISMATCH),
        (tls.PinMismatchError("pinned"), Reason.CERTIFICATE_MISMATCH),
        (ConnectionRefusedError(111, "Connection refused"), Reason.UNREACHABLE),
        (TimeoutError("timed out"), Reason.TIMEOUT),
        (vim.fault.NotAuthenticated(), Reason.NOT_AUTHENTICATED),
        (
            vim.fault.NoPermission(privilegeId="VirtualMachine.Interact.PowerOff"),
            Reason.NO_PERMISSION,
        ),
        (vmodl.fault.ManagedObjectNotFound(), Reason.NOT_FOUND),
        (vmodl.fault.HostCommunication(), Reason.UNREACHABLE),
        (vim.fault.InvalidPowerState(), Reason.SERVER_FAULT),
        (RuntimeError("surprise"), Reason.SERVER_FAULT),
    ],
)
def test_classify(exc: BaseException, reason: Reason) -> None:
    error = classify(exc, "do a thing")
    assert error.reason is reason
    assert str(error).startswith("do a thing: ") and str(error).endswith(f"[{reason}]")
    assert error.transient == (reason in (Reason.UNREACHABLE, Reason.TIMEOUT))


def test_transient_failures_are_retried_and_others_are_not() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "Connection reset by peer")
        return "done"

    assert client.call("flaky", flaky) == "done" and len(calls) == 3

    def refused() -> None:
        calls.append(1)
        raise vim.fault.InvalidLogin()

    calls.clear()
    with pytest.raises(VSphereError) as raised:
        client.call("log in", refused)
    assert raised.value.reason is Reason.INVALID_LOGIN and len(calls) == 1


def test_thumbprints() -> None:
    der = b"not really a certificate"
    sha256 = hashlib.sha256(der).hexdigest()
    sha1 = hashlib.sha1(der).hexdigest()  # noqa: S324 - vCenter shows SHA-1 thumbprints
    colons = ":".join(sha256[i : i + 2] for i in range(0, 64, 2)).upper()
    assert tls.normalize_thumbprint(colons) == sha256
    assert tls.thumbprint_matches(der, colons) and tls.thumbprint_matches(der, sha1)
    assert not tls.thumbprint_matches(der, "00" * 32)
    for bad in ("", "zz" * 20, "ab" * 24):
        with pytest.raises(VSphereError) as raised:
            tls.normalize_thumbprint(bad)
        assert raised.value.reason is Reason.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ca_pem": "x", "insecure": True}, {"thumbprint": "00" * 32, "ca_pem": "x"}],
)
def test_trust_is_exactly_one_way(kwargs: dict[str, object]) -> None:
    with pytest.raises(VSphereError) as raised:
        tls.Trust(**kwargs)  # type: ignore[arg-type]
    assert raised.value.reason is Reason.INVALID_ARGUMENT


def test_a_ca_bundle_that_is_not_pem_is_refused() -> None:
    with pytest.raises(VSphereError) as raised:
        tls.context(tls.Trust(ca_pem="not a certificate"))
    assert raised.value.reason is Reason.INVALID_ARGUMENT
