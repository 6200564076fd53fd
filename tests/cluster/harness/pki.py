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
    kubelet_client: KeyPair  # the API server's, for logs, exec and port-forward on kubelets
    kube_proxy: KeyPair


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


def _serving_ext(sans: Sequence[str]) -> str:
    return (
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n"
    )


@dataclass(frozen=True)
class NodePki:
    serving: KeyPair  # kubelet's HTTPS endpoint, verified by the API server
    client: KeyPair  # kubelet's identity: system:node:<name> in group system:nodes


def make_node_pki(directory: Path, ca: KeyPair, node: str, address: str) -> NodePki:
    """A node's kubelet pairs, signed by the cluster CA (the Node authorizer reads the name)."""
    directory.mkdir(parents=True, exist_ok=True)
    serving = _leaf(
        directory, "kubelet-serving", ca, f"/O=system:nodes/CN=system:node:{node}",
        _serving_ext([f"IP:{address}", f"DNS:{node}"]),
    )  # fmt: skip
    client = _client(directory, "kubelet-client", ca, f"/O=system:nodes/CN=system:node:{node}")
    for pair in (serving, client):
        pair.key.chmod(0o600)
    return NodePki(serving, client)


def make_pki(directory: Path, *, service_ip: str, address: str) -> Pki:
    """Create a CA, the API server's serving pair (for `address`, where it listens, and the
    `kubernetes` Service's IP), client pairs and the token signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory)
    sans = [
        f"IP:{address}",
        f"IP:{service_ip}",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
    apiserver = _leaf(directory, "apiserver", ca, "/CN=kube-apiserver", _serving_ext(sans))
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
        # Bound by the bootstrap policy: system:kube-proxy to system:node-proxier; the API
        # server's kubelet client is an admin (as kubeadm's), so kubelets' webhook
        # authorization lets it read logs and exec.
        kubelet_client=_client(
            directory, "apiserver-kubelet-client", ca, "/O=system:masters/CN=kube-apiserver"
        ),
        kube_proxy=_client(directory, "kube-proxy", ca, "/CN=system:kube-proxy"),
    )
