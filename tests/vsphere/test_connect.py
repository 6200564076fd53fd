"""Connecting to vcsim: the login, each way of trusting its certificate, and the failures
a provider's status must tell apart."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from hyper2kvm_operator.vsphere import client
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError
from tests.vsphere.vcsim import Vcsim

pytestmark = pytest.mark.needs("openssl")


def test_connect_reads_product_and_version_and_logs_out(vcsim: Vcsim) -> None:
    conn = client.connect(
        vcsim.url, vcsim.username, vcsim.password, ca_pem=vcsim.ca_pem.read_text()
    )
    about = client.about(conn)
    assert about.product == "VMware vCenter Server"
    assert about.version.split(".")[0].isdigit()
    assert about.api_type == "VirtualCenter" and about.is_vcenter
    assert about == conn.about
    client.logout(conn)
    with pytest.raises(VSphereError) as raised:
        client.call("after logout", conn.content.sessionManager.AcquireCloneTicket, attempts=1)
    assert raised.value.reason is Reason.NOT_AUTHENTICATED


def test_the_password_appears_in_no_repr_and_no_error(vcsim: Vcsim) -> None:
    conn = client.connect(
        vcsim.url, vcsim.username, vcsim.password, ca_pem=vcsim.ca_pem.read_text()
    )
    try:
        assert vcsim.password not in repr(conn)
    finally:
        client.logout(conn)
    assert vcsim.password not in repr(vcsim)


def test_a_wrong_password_is_invalid_login(vcsim: Vcsim) -> None:
    wrong = "not-" + vcsim.password
    with pytest.raises(VSphereError) as raised:
        client.connect(vcsim.url, vcsim.username, wrong, ca_pem=vcsim.ca_pem.read_text())
    assert raised.value.reason is Reason.INVALID_LOGIN
    assert not raised.value.transient
    assert wrong not in str(raised.value)


def test_a_certificate_from_another_ca_is_a_mismatch(vcsim: Vcsim, tmp_path: Path) -> None:
    other = _self_signed(tmp_path)
    with pytest.raises(VSphereError) as raised:
        client.connect(vcsim.url, vcsim.username, vcsim.password, ca_pem=other)
    assert raised.value.reason is Reason.CERTIFICATE_MISMATCH


def test_the_system_cas_do_not_trust_vcsim(vcsim: Vcsim) -> None:
    system = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(VSphereError) as raised:
        client.connect(vcsim.url, vcsim.username, vcsim.password, ca_pem=system.read_text())
    assert raised.value.reason is Reason.CERTIFICATE_MISMATCH


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_a_pinned_thumbprint_is_trusted(vcsim: Vcsim, algorithm: str) -> None:
    pin = vcsim.thumbprint_sha256 if algorithm == "sha256" else vcsim.thumbprint_sha1
    conn = client.connect(vcsim.url, vcsim.username, vcsim.password, thumbprint=pin)
    client.logout(conn)
    plain = pin.replace(":", "").lower()  # the same digest without separators
    client.logout(client.connect(vcsim.url, vcsim.username, vcsim.password, thumbprint=plain))


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_a_wrong_pinned_thumbprint_is_a_mismatch(vcsim: Vcsim, algorithm: str) -> None:
    pin = vcsim.thumbprint_sha256 if algorithm == "sha256" else vcsim.thumbprint_sha1
    wrong = ("00" if not pin.startswith("00") else "11") + pin[2:]
    with pytest.raises(VSphereError) as raised:
        client.connect(vcsim.url, vcsim.username, vcsim.password, thumbprint=wrong)
    assert raised.value.reason is Reason.CERTIFICATE_MISMATCH


def test_insecure_only_when_said(vcsim: Vcsim) -> None:
    client.logout(client.connect(vcsim.url, vcsim.username, vcsim.password, insecure=True))
    with pytest.raises(VSphereError) as raised:
        client.connect(vcsim.url, vcsim.username, vcsim.password)
    assert raised.value.reason is Reason.INVALID_ARGUMENT


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(VSphereError) as raised:
            client.connect(f"https://127.0.0.1:{port}", "u", "p", insecure=True, timeout=5)
    assert raised.value.reason is Reason.UNREACHABLE
    assert raised.value.transient


@pytest.mark.parametrize(
    "url", ["http://vc.example.com/sdk", "https://user:pw@vc.example.com", "vc.example.com"]
)
def test_urls_that_are_refused(url: str) -> None:
    with pytest.raises(VSphereError) as raised:
        client.connect(url, "u", "p", insecure=True)
    assert raised.value.reason is Reason.INVALID_ARGUMENT
    assert "pw" not in str(raised.value)


def test_the_sdk_path_is_added_when_the_url_has_none() -> None:
    assert client.Endpoint.from_url("https://vc.example.com") == client.Endpoint(
        "vc.example.com", 443, "/sdk"
    )
    assert client.Endpoint.from_url("https://[::1]:8989/sdk/") == client.Endpoint(
        "::1", 8989, "/sdk"
    )


def test_api_versions_are_negotiated_down_to_what_pyvmomi_knows() -> None:
    assert client.negotiate("6.5") == "vim.version.version11"
    assert client.negotiate("8.0.3.0") == "vim.version.v8_0_3_0"
    assert client.negotiate("99.0.0.0").startswith("vim.version.v")  # the newest known


def _self_signed(tmp_path: Path) -> str:
    key, cert = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_text()
