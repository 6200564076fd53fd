"""The test cluster's network: one bridge on the host and one network namespace per node.

    host                                    node k (its own network namespace)
    bridge h2k<n>  172.29.<n>.1/24  ─veth─  eth0  172.29.<n>.<10+k>/24
      route 10.<100+n>.<k>.0/24 via node k    cni0  10.<100+n>.<k>.1/24, its Pods (CNI bridge)
                                              routes to the other nodes' Pod ranges, and the
                                              Service range via the host

The API server listens on the host's bridge address, so Pods reach it through the
`kubernetes` Service as on any cluster; the host reaches every node and Pod. Nothing is
routed off the machine: the nodes have no default route and the host does not forward
(its net.ipv4.ip_forward is left as it is: 0). Each cluster takes a free index n (a lock
file held for its lifetime), so clusters side by side never share a name or an address;
whatever a crashed run left under that index is removed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_DIR = Path("/run/hyper2kvm")
MAX_CLUSTERS = 64
SERVICE_CIDR = "10.0.0.0/24"  # only inside the nodes' namespaces (kube-proxy's rules)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def in_netns(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, check=True)


@dataclass(frozen=True)
class NodeNetwork:
    netns: str
    address: str  # the node's IP on the cluster bridge (its InternalIP)
    pod_cidr: str
    host_veth: str


@dataclass
class ClusterNetwork:
    """Create with ClusterNetwork.create(); close() removes everything it made."""

    index: int
    _lock: IO[str]
    nodes: dict[str, NodeNetwork] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"h2k{self.index}"

    @property
    def host_address(self) -> str:
        return f"172.29.{self.index}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.{100 + self.index}.0.0/16"

    @property
    def prefix(self) -> str:
        """Names of this cluster's network namespaces start with it."""
        return f"h2k{self.index}-"

    @classmethod
    def create(cls) -> ClusterNetwork:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for index in range(MAX_CLUSTERS):
            lock = (LOCK_DIR / f"net-{index}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            network = cls(index, lock)
            try:
                network._remove_leftovers()
                ip("link", "add", network.bridge, "type", "bridge")
                ip("addr", "add", f"{network.host_address}/24", "dev", network.bridge)
                ip("link", "set", network.bridge, "up")
            except BaseException:
                network.close()
                raise
            return network
        raise RuntimeError(f"all {MAX_CLUSTERS} cluster network indexes are in use")

    def add_node(self, name: str, number: int) -> NodeNetwork:
        """The node's namespace, wired to the bridge, with routes to every other node's Pods."""
        node = NodeNetwork(
            netns=f"{self.prefix}{name}"[:32],
            address=f"172.29.{self.index}.{10 + number}",
            pod_cidr=f"10.{100 + self.index}.{number}.0/24",
            host_veth=f"h2k{self.index}n{number}",
        )
        ip("netns", "add", node.netns)
        self.nodes[name] = node
        ip(
            "link",
            "add",
            node.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns,
        )
        ip("link", "set", node.host_veth, "master", self.bridge, "up")
        ns = ("-n", node.netns)
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        ip(*ns, "link", "set", "eth0", "up")
        # Forwarding between eth0 and the Pods' bridge, in this namespace only.
        in_netns(node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip(*ns, "route", "add", SERVICE_CIDR, "via", self.host_address)
        ip("route", "add", node.pod_cidr, "via", node.address, "dev", self.bridge)
        for other in self.nodes.values():
            if other is not node:
                ip(*ns, "route", "add", other.pod_cidr, "via", other.address)
                ip("-n", other.netns, "route", "add", node.pod_cidr, "via", node.address)
        return node

    def close(self) -> None:
        self._remove_leftovers()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def _remove_leftovers(self) -> None:
        """This index's namespaces (their veths go with them) and bridge (its routes too)."""
        for netns in list_netns():
            if netns.startswith(self.prefix):
                ip("netns", "delete", netns, check=False)
        ip("link", "delete", self.bridge, check=False)
        self.nodes.clear()


def list_netns() -> list[str]:
    run = Path("/run/netns")
    return sorted(path.name for path in run.iterdir()) if run.is_dir() else []
