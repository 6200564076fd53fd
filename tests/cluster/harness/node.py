"""A real node: kubelet, kube-proxy and containerd (runc, CNI) in namespaces of its own.

Each node is its own host as far as anything running on it can tell, the way kind's nodes
are containers: its own network namespace (network.py), its own mount namespace (the
host's file system is seen below it, so hostPath volumes are the host's, but nothing
mounted on the node shows on the host), its own PID namespace (killing its init ends every
process of the node, Pods included), its own cgroup root, certificates and ports. In the
mount namespace:

- /sys is the node's network namespace's sysfs, with the host's cgroup hierarchies kept;
- /var/lib/kubelet and /var/log are the node's own directories (kubelet writes Pod logs to
  /var/log/pods and device-plugin sockets to /var/lib/kubelet whatever its flags say);
- the sysctls kubelet insists on (vm.overcommit_memory, kernel.panic, ...) are files
  holding the value it wants, so it never writes the host's, which are not per namespace.

containerd (built from its Go module) runs Debian's runc with its own shim (runtime_path,
so no other shim on PATH is taken), restrict_oom_score_adj (the harness lacks
CAP_SYS_RESOURCE) and network namespaces under its state directory. Images come from the
OCI archives hack/images.sh builds, imported with ctr; nothing is ever pulled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tests.cluster.harness.network import SERVICE_CIDR, NodeNetwork
from tests.cluster.harness.pki import KeyPair, make_node_pki
from tests.cluster.harness.processes import log_tail, spawn, stop_process, wait_until

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
RUNC = Path("/usr/sbin/runc")  # Debian's runc
KUBELET_PORT = 10250
# What kubelet sets unless already set (cm.setupKernelTunables); the host's stay untouched.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    containerd_dir: Path  # containerd, containerd-shim-runc-v2, ctr
    pause: Path  # the node's init: reaps orphans, ends on SIGTERM

    @property
    def ctr(self) -> Path:
        return self.containerd_dir / "ctr"


@dataclass(frozen=True)
class ClusterAccess:
    """What a node needs to know of its cluster."""

    server: str  # the API server's URL, as seen from the node
    ca: KeyPair
    kube_proxy: KeyPair
    cluster_cidr: str
    sandbox_image: str  # the pause image's reference


@dataclass
class Node:
    name: str
    network: NodeNetwork
    state_dir: Path  # the node's files: kubelet's root, containerd's, logs
    run_dir: Path  # sockets, kept short: a unix socket path has at most 107 bytes
    binaries: NodeBinaries
    cluster: ClusterAccess
    labels: Mapping[str, str] = field(default_factory=dict)
    _init: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    # -- paths ------------------------------------------------------------------------------

    @property
    def cgroup_root(self) -> str:
        """Pods' cgroups go below this, in every hierarchy (two kubelets must not share one)."""
        return f"/{self.network.netns}"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    # -- lifecycle --------------------------------------------------------------------------

    def start_runtime(self) -> None:
        """The node's namespaces and containerd. Spawns processes tied to the calling thread
        (see processes.spawn): call it from one that lives as long as the node."""
        try:
            self._write_files()
            self._make_cgroup_root()
            self._start_init()
            containerd = self.binaries.containerd_dir / "containerd"
            self._start(
                "containerd", [str(containerd), "--config", str(self.state_dir / "containerd.toml")]
            )
            wait_until(
                lambda: self.ctr("version").returncode == 0,
                timeout=60,
                what=f"containerd on {self.name}",
            )
        except BaseException:
            self.stop()
            raise

    def start_agents(self) -> None:
        """kubelet and kube-proxy (same thread rule as start_runtime)."""
        self.start_kubelet()
        self._start("kube-proxy", [str(self.binaries.kube_proxy),
                                   f"--config={self.state_dir / 'kube-proxy.yaml'}"])  # fmt: skip

    def stop(self) -> None:
        """Every process of the node ends with its PID namespace; its mounts with the mount
        namespace; its cgroups are removed afterwards."""
        for name in ("kube-proxy", "kubelet", "containerd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                stop_process(proc, grace=10.0)
        if self._init is not None:
            stop_process(self._init, grace=5.0)
            self._init = None
        self._remove_cgroup_root()

    def start_kubelet(self) -> None:
        self._start(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={self.state_dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.network.address}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())),
                "--v=1",
            ],
        )

    def stop_kubelet(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self._procs.pop("kubelet")
        _signal_node_process(proc, sig)
        stop_process(proc, grace=10.0)

    def import_image(self, archive: Path) -> None:
        done = self.ctr("images", "import", str(archive))
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} on {self.name}: {done.stderr}")

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """ctr against this node's containerd, in the k8s.io namespace (kubelet's)."""
        return subprocess.run(
            [str(self.binaries.ctr), "--address", str(self.containerd_socket),
             "--namespace", "k8s.io", *args],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip

    def run_on_node(self, *argv: str) -> str:
        """Run a command inside the node's namespaces; its stdout."""
        pid = self._init_pid()
        assert pid is not None
        done = subprocess.run(
            ["nsenter", f"--target={pid}", "--pid", "--mount", "--net", "--", *argv],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return done.stdout

    def read_node_file(self, path: str) -> str:
        return self.run_on_node("cat", path)

    def running(self, component: str) -> bool:
        proc = self._procs.get(component)
        return proc is not None and proc.poll() is None

    # -- inside -----------------------------------------------------------------------------

    def _start_init(self) -> None:
        """The node's PID 1, in a new PID and mount namespace joined to the node's network."""
        mounts = self.run_dir / "mounts"
        script = [
            "set -e",
            # sysfs of the node's own network namespace, the host's cgroup hierarchies kept
            f"mkdir -p {mounts}/cgroup",
            f"mount --rbind /sys/fs/cgroup {mounts}/cgroup",
            "umount -l /sys",
            "mount -t sysfs sysfs /sys",
            f"mount --rbind {mounts}/cgroup /sys/fs/cgroup",
            f"umount -l {mounts}/cgroup",
            f"mount --bind {shlex.quote(str(self.state_dir / 'kubelet'))} /var/lib/kubelet",
            f"mount --bind {shlex.quote(str(self.state_dir / 'log'))} /var/log",
            f"mount --bind {shlex.quote(str(self.state_dir / 'machine-id'))} /etc/machine-id",
        ]
        for key in KUBELET_SYSCTLS:
            fake = self.state_dir / "sysctl" / key.replace("/", ".")
            script.append(f"mount --bind {shlex.quote(str(fake))} /proc/sys/{key}")
        script.append(f"exec {shlex.quote(str(self.binaries.pause))}")
        self._init = spawn(
            [
                "nsenter", f"--net=/run/netns/{self.network.netns}", "--",
                "unshare", "--pid", "--fork", "--mount", "--propagation", "slave",
                "--mount-proc", "--", "sh", "-c", "\n".join(script),
            ],
            log_path=self.log_path("init"),
            cwd=self.state_dir,
        )  # fmt: skip

        def ready() -> bool:
            if self._init is None or self._init.poll() is not None:
                raise RuntimeError(f"{self.name}: init exited\n{log_tail(self.log_path('init'))}")
            return self._init_pid() is not None

        wait_until(ready, timeout=30, what=f"{self.name}'s namespaces")

    def _init_pid(self) -> int | None:
        """The host PID of the node's PID 1 (unshare's child, running pause)."""
        assert self._init is not None
        unshare = _children(self._init.pid)  # nsenter execs unshare, which forks the init
        for pid in [self._init.pid, *unshare]:
            for child in _children(pid):
                if Path(f"/proc/{child}/exe").resolve() == self.binaries.pause.resolve():
                    return child
        return None

    def _start(self, name: str, argv: list[str]) -> None:
        pid = self._init_pid()
        assert pid is not None
        self._procs[name] = spawn(
            ["nsenter", f"--target={pid}", "--pid", "--mount", "--net", "--", *argv],
            log_path=self.log_path(name),
            cwd=self.state_dir,
        )

    # -- files ------------------------------------------------------------------------------

    def _write_files(self) -> None:
        for directory in ("kubelet", "log", "logs", "sysctl", "cni/net.d", "cni/ipam",
                          "containerd"):  # fmt: skip
            (self.state_dir / directory).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for key, value in KUBELET_SYSCTLS.items():
            (self.state_dir / "sysctl" / key.replace("/", ".")).write_text(value + "\n")
        (self.state_dir / "machine-id").write_text(_machine_id(self.name) + "\n")
        # The mount points the namespace needs on the host: empty directories, nothing else.
        Path("/var/lib/kubelet").mkdir(parents=True, exist_ok=True)
        pki = make_node_pki(
            self.state_dir / "pki", self.cluster.ca, self.name, self.network.address
        )
        (self.state_dir / "resolv.conf").write_text("# no cluster DNS on the test cluster\n")
        self._kubeconfig("kubelet.kubeconfig", f"system:node:{self.name}", pki.client)
        self._kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", self.cluster.kube_proxy)
        (self.state_dir / "containerd.toml").write_text(self._containerd_config())
        (self.state_dir / "cni" / "net.d" / "10-hyper2kvm.conflist").write_text(
            json.dumps(self._cni_config(), indent=2)
        )
        (self.state_dir / "kubelet.yaml").write_text(
            yaml.safe_dump(self._kubelet_config(pki.serving), sort_keys=False)
        )
        (self.state_dir / "kube-proxy.yaml").write_text(
            yaml.safe_dump(self._kube_proxy_config(), sort_keys=False)
        )

    def _kubeconfig(self, name: str, user: str, pair: KeyPair) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.cluster.server,
                        "certificate-authority": str(self.cluster.ca.cert),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path = self.state_dir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def _containerd_config(self) -> str:
        state, run = self.state_dir / "containerd", self.run_dir
        shim = self.binaries.containerd_dir / "containerd-shim-runc-v2"
        return f"""\
version = 3
root = "{state}/root"
state = "{run}/state"
temp = "{state}/tmp"
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{run}/containerd.sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{state}/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{self.cluster.sandbox_image}"

[plugins.'io.containerd.cri.v1.runtime']
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  # Block volumes belong to the Pod's runAsUser/runAsGroup, so a non-root worker can write
  # them (what KubeVirt CDI also asks of a cluster's containerd).
  device_ownership_from_security_context = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{shim}"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{run}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{self.state_dir / "cni" / "net.d"}"
"""

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": "hyper2kvm",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Pod addresses stay visible: the host and the other nodes route to them.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.network.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self, serving: KeyPair) -> dict[str, object]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.network.address,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # This machine's cgroups are hybrid v1: cgroupfs, and kubelet must accept v1.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": self.cgroup_root,
            "resolvConf": str(self.state_dir / "resolv.conf"),
            "failSwapOn": False,
            "protectKernelDefaults": False,
            # Images cannot be pulled again here: never collect them, and never evict Pods
            # for a shared disk that other work fills.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "nodeStatusReportFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }

    def _kube_proxy_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.state_dir / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": self.cluster.cluster_cidr,
            "hostnameOverride": self.name,
            "bindAddress": self.network.address,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # nf_conntrack_max is one value for the whole machine: leave it alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }

    # -- cgroups ----------------------------------------------------------------------------

    def _hierarchies(self) -> list[Path]:
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]

    def _make_cgroup_root(self) -> None:
        for hierarchy in self._hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            root.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset starts empty
                if (root / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((hierarchy / name).read_text())

    def _remove_cgroup_root(self) -> None:
        for hierarchy in self._hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if root.is_dir():
                for directory in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
                    if directory.is_dir():
                        _rmdir_when_empty(directory)
                _rmdir_when_empty(root)


def _rmdir_when_empty(cgroup: Path) -> None:
    """A cgroup whose processes just died can stay busy for a moment."""
    for _ in range(50):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def _signal_node_process(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the program nsenter started (its child inside the node), not nsenter itself."""
    for pid in _children(proc.pid) or [proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _machine_id(name: str) -> str:
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


__all__ = ["SERVICE_CIDR", "ClusterAccess", "Node", "NodeBinaries"]
