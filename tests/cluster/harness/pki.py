"""Certificates and keys for one throw-away control plane, made with the openssl CLI.

Everything is P-256 ECDSA: quick to generate and accepted by every component (the API
server signs service-account tokens with ES256 from an EC key).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_DAYS = "3650"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    service_account_key: Path
    service_account_pub: Path
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path) -> KeyPair:
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", _DAYS, "-subj", "/CN=hyper2kvm-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return pair


def _leaf(directory: Path, name: str, ca: KeyPair, subject: str, extensions: str) -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", *_EC, "-keyout", str(pair.key), "-out", str(csr), "-subj", subject)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(63)), "-days", _DAYS,
        "-extfile", str(ext), "-out", str(pair.cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return pair


def _client(directory: Path, name: str, ca: KeyPair, subject: str) -> KeyPair:
    ext = (
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    return _leaf(directory, name, ca, subject, ext)


def self_signed_serving_pair(
    directory: Path, name: str, *, subject: str, sans: Sequence[str]
) -> KeyPair:
    """A serving certificate signed by its own key, for a server nobody verifies.

    The test node agent's kubelet endpoint uses one: the API server only checks a kubelet's
    certificate when it has --kubelet-certificate-authority, which the local one has not.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", _DAYS, "-subj", subject,
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", "extendedKeyUsage=serverAuth",
        "-addext", f"subjectAltName={','.join(sans)}",
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def make_pki(directory: Path, *, service_ip: str) -> Pki:
    """Create a CA, the API server's serving pair, client pairs and the token signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory)
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{service_ip}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    serving_ext = (
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={sans}\n"
    )
    apiserver = _leaf(directory, "apiserver", ca, "/CN=kube-apiserver", serving_ext)
    sa_key = directory / "service-account.key"
    sa_pub = directory / "service-account.pub"
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(sa_key),
    )  # fmt: skip
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(
        ca=ca,
        apiserver=apiserver,
        service_account_key=sa_key,
        service_account_pub=sa_pub,
        # The groups are what the bootstrap RBAC policy binds: system:masters is the
        # cluster admin, the two component users get their built-in ClusterRoles.
        admin=_client(directory, "admin", ca, "/O=system:masters/CN=hyper2kvm-admin"),
        controller_manager=_client(
            directory, "controller-manager", ca, "/CN=system:kube-controller-manager"
        ),
        scheduler=_client(directory, "scheduler", ca, "/CN=system:kube-scheduler"),
    )
