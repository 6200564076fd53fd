"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler of one test cluster.

The binaries come from hack/k8s/build.sh. Every run gets fresh certificates, fresh ports and
a fresh etcd data directory under its state directory; component logs are written there too.
etcd and the controllers listen on 127.0.0.1; the API server on `address`, the host's end
of the cluster network (network.py), so that kubelets and Pods reach it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from tests.cluster.harness.network import SERVICE_CIDR
from tests.cluster.harness.pki import KeyPair, Pki, make_pki
from tests.cluster.harness.processes import (
    WaitAborted,
    free_port,
    log_tail,
    spawn,
    stop_process,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "k8s" / "build.sh"
# Service addresses: kube-proxy's rules on each node turn them into endpoints.
SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def cache_dir() -> Path:
    return Path(os.environ.get("HYPER2KVM_CACHE") or Path.home() / ".cache" / "hyper2kvm")


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries (it knows the pinned version; asking it is instant)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin-dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def ensure_binaries() -> Path:
    """Build the binaries unless they are cached; returns their directory."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class ControlPlane:
    """One local control plane. Use as a context manager or call start() and stop()."""

    state_dir: Path
    bin_dir: Path
    address: str = "127.0.0.1"  # where the API server listens and what it advertises
    start_timeout: float = 180.0
    server: str = ""
    kubeconfig: Path = field(init=False)
    pki: Pki | None = field(default=None, init=False)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _controller_manager_port: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.kubeconfig = self.state_dir / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def start(self) -> None:
        missing = [c for c in COMPONENTS if not (self.bin_dir / c).is_file()]
        if missing:
            raise FileNotFoundError(
                f"missing {', '.join(missing)} in {self.bin_dir}: run hack/k8s/build.sh"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.pki = make_pki(self.state_dir / "pki", service_ip=SERVICE_IP, address=self.address)
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            self._start_controller_manager()
            self._start_scheduler()
            self._wait_for_controllers()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the components in reverse order of their dependencies."""
        for name in reversed(COMPONENTS):
            proc = self._procs.pop(name, None)
            if proc is not None:
                stop_process(proc, grace=10.0)

    # -- components -------------------------------------------------------------------

    def _run(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(
            [str(self.bin_dir / name), *args], log_path=self.log_path(name), cwd=self.state_dir
        )
        self._procs[name] = proc
        return proc

    def _wait(self, name: str, probe: Callable[[], object], timeout: float | None = None) -> None:
        proc = self._procs[name]

        def check() -> bool:
            if proc.poll() is not None:
                raise _ComponentExited(name, proc.returncode, log_tail(self.log_path(name)))
            return bool(probe())

        try:
            wait_until(check, timeout=timeout or self.start_timeout, what=f"{name} readiness")
        except _ComponentExited:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"{exc}\n--- {name} log ---\n{log_tail(self.log_path(name))}"
            ) from exc

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._run(
            "etcd",
            [
                "--name=hyper2kvm",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=hyper2kvm={peer_url}",
                "--initial-cluster-state=new",
                # A test cluster is thrown away afterwards: skipping fsync keeps a shared
                # disk from slowing every API write.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_get_json("127.0.0.1", client, "/health").get("health"))
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        assert self.pki is not None
        port = free_port(self.address)
        self.server = f"https://{self.address}:{port}"
        pki = self.pki
        self._run(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={port}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                # Kubelets are authorized as their own Node only (NodeRestriction is on).
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                # Node names do not resolve: kubelets are reached at their InternalIP, with
                # the certificate the cluster CA signed for it, as a client of their own.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                f"--kubelet-client-certificate={pki.kubelet_client.cert}",
                f"--kubelet-client-key={pki.kubelet_client.key}",
            ],
        )
        self._wait("kube-apiserver", lambda: self._api_get("/readyz") == "ok")
        self._write_kubeconfig(self.kubeconfig, "hyper2kvm-admin", pki.admin)

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        pki = self.pki
        kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kubeconfig, "system:kube-controller-manager", pki.controller_manager)
        port = free_port()
        self._run(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'controller-manager-certs'}",
                # One instance: leader election would only add a lease round trip at start.
                "--leader-elect=false",
                # Each controller acts as its own service account, as in a production setup,
                # so RBAC and the token controller are exercised.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--controllers=*",
                "--profiling=false",
                # A lost node is noticed in 20 s rather than 50 s: two missed lease renewals
                # (kubelet renews every 10 s), so tests of node loss take less time.
                "--node-monitor-grace-period=20s",
                "--node-monitor-period=2s",
            ],
        )
        self._controller_manager_port = port

    def _start_scheduler(self) -> None:
        assert self.pki is not None
        kubeconfig = self.state_dir / "scheduler.kubeconfig"
        self._write_kubeconfig(kubeconfig, "system:kube-scheduler", self.pki.scheduler)
        port = free_port()
        self._run(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        self._wait("kube-scheduler", lambda: _healthz(port))

    def _wait_for_controllers(self) -> None:
        self._wait("kube-controller-manager", lambda: _healthz(self._controller_manager_port))

        # The service-account controller creating "default" in the default namespace shows
        # the controllers run and are authorized, which is what the tests rely on.
        def default_sa() -> bool:
            body = self._api_get("/api/v1/namespaces/default/serviceaccounts/default")
            return bool(json.loads(body).get("metadata", {}).get("uid"))

        self._wait("kube-controller-manager", default_sa)

    # -- helpers --------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def _api_get(self, path: str) -> str:
        port = int(self.server.rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection(
            self.address, port, context=self.ssl_context(), timeout=5
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:200]}")
            return body
        finally:
            conn.close()

    def _write_kubeconfig(self, path: Path, user: str, pair: KeyPair) -> None:
        assert self.pki is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "hyper2kvm-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.pki.ca.cert),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(pair.cert),
                        "client-key-data": _b64(pair.key),
                    },
                }
            ],
            "contexts": [
                {"name": "hyper2kvm-local", "context": {"cluster": "hyper2kvm-local", "user": user}}
            ],
            "current-context": "hyper2kvm-local",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


class _ComponentExited(WaitAborted):
    def __init__(self, name: str, code: int, tail: str) -> None:
        super().__init__(f"{name} exited with status {code} while starting\n--- log ---\n{tail}")


def _http_get_json(host: str, port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def _healthz(port: int) -> bool:
    # The components serve a self-signed certificate of their own; only liveness is asked.
    ctx = ssl._create_unverified_context()  # noqa: S323 - loopback health probe only
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"ok"
    finally:
        conn.close()
