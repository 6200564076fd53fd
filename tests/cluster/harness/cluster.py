"""One local test cluster: the network, the control plane, real nodes and a provisioner.

    with LocalCluster(state_dir, nodes=("hyper2kvm-node-1", "hyper2kvm-node-2")) as cluster:
        cluster.kubeconfig ...

The binaries and images are built on first use and cached (hack/k8s/build.sh,
hack/node/build.sh, hack/images.sh). Every node gets the project's images (worker, operator,
the Debian base as a general-purpose shell image, and the pause image that containerd uses
for Pod sandboxes) imported into its containerd.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kubernetes import client as k8s_client
from tests.cluster.harness.controlplane import ControlPlane, ensure_binaries
from tests.cluster.harness.kube import Kube, api_client_from_kubeconfig, list_and_watch
from tests.cluster.harness.network import ClusterNetwork
from tests.cluster.harness.node import KUBELET_SYSCTLS, ClusterAccess, Node, NodeBinaries
from tests.cluster.harness.processes import wait_until
from tests.cluster.harness.provisioner import LocalProvisioner

REPO = Path(__file__).resolve().parents[3]
WORKER_LABEL = "hyper2kvm.io/worker"
IMAGES = ("pause", "base", "worker", "operator")
RUN_ROOT = Path("/run/hyper2kvm")  # the nodes' sockets: short paths (at most 107 bytes)
_log = logging.getLogger("hyper2kvm.cluster")


def _script(*argv: str) -> Path:
    done = subprocess.run(
        ["bash", str(REPO / "hack" / argv[0]), *argv[1:]],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Images:
    """The OCI archives of hack/images.sh and the references they carry."""

    directory: Path

    @classmethod
    def build(cls) -> Images:
        return cls(_script("images.sh", *IMAGES))

    def archive(self, name: str) -> Path:
        return self.directory / f"{name}.oci.tar"

    def ref(self, name: str) -> str:
        return (self.directory / f"{name}.ref").read_text().strip()

    @property
    def pause_binary(self) -> Path:
        return self.directory / "pause"


def node_binaries(images: Images) -> NodeBinaries:
    k8s = ensure_binaries()
    return NodeBinaries(
        kubelet=k8s / "kubelet",
        kube_proxy=k8s / "kube-proxy",
        containerd_dir=_script("node/build.sh"),
        pause=images.pause_binary,
    )


@dataclass
class LocalCluster:
    state_dir: Path
    nodes: tuple[str, ...] = ("hyper2kvm-node-1", "hyper2kvm-node-2")
    labels: Mapping[str, str] = field(default_factory=dict)
    network: ClusterNetwork = field(init=False)
    plane: ControlPlane = field(init=False)
    api_client: k8s_client.ApiClient = field(init=False)
    images: Images = field(init=False)
    provisioner: LocalProvisioner = field(init=False)
    # The host's values of the sysctls kubelet wants, before anything started: tests check
    # that the host still has them.
    host_sysctls: dict[str, str] = field(default_factory=dict, init=False)
    _nodes: dict[str, Node] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def host_address(self) -> str:
        """The host's address on the cluster network: Pods reach servers of the tests here."""
        return self.network.host_address

    def node(self, name: str) -> Node:
        return self._nodes[name]

    def start(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.host_sysctls = {
            key: Path(f"/proc/sys/{key}").read_text().strip() for key in KUBELET_SYSCTLS
        }
        self.images = Images.build()
        binaries = node_binaries(self.images)
        self.network = ClusterNetwork.create()
        try:
            self.plane = ControlPlane(
                state_dir=self.state_dir,
                bin_dir=ensure_binaries(),
                address=self.network.host_address,
            )
            self.plane.start()
            self.api_client = api_client_from_kubeconfig(str(self.kubeconfig))
            assert self.plane.pki is not None
            access = ClusterAccess(
                server=self.plane.server,
                ca=self.plane.pki.ca,
                kube_proxy=self.plane.pki.kube_proxy,
                cluster_cidr=self.network.pod_cidr,
                sandbox_image=self.images.ref("pause"),
            )
            labels = {WORKER_LABEL: "true", **self.labels}
            for number, name in enumerate(self.nodes, start=1):
                self._nodes[name] = Node(
                    name=name,
                    network=self.network.add_node(name, number),
                    state_dir=self.state_dir / "nodes" / name,
                    run_dir=RUN_ROOT / str(self.network.index) / str(number),
                    binaries=binaries,
                    cluster=access,
                    labels=labels,
                )
            for node in self._nodes.values():
                node.start_runtime()
            # Imports take a while (the worker image is large) and spawn nothing: in parallel.
            archives = [self.images.archive(name) for name in IMAGES]
            with ThreadPoolExecutor(max_workers=len(self._nodes)) as pool:
                list(
                    pool.map(lambda n: [n.import_image(a) for a in archives], self._nodes.values())
                )
            for node in self._nodes.values():
                node.start_agents()
            self._start_provisioner()
            self.wait_ready(timeout=120)
            self._record_pod_ranges()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        kube = Kube(self.api_client)

        def ready() -> bool:
            for name in self.nodes:
                node = kube.get_or_none(f"/api/v1/nodes/{name}")
                conditions = (node or {}).get("status", {}).get("conditions", [])
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return False
            return True

        wait_until(ready, timeout=timeout, what=f"nodes {', '.join(self.nodes)} Ready")

    def _record_pod_ranges(self) -> None:
        """Each node's Pod range in its spec, as a controller-manager that allocates them
        writes it (the harness gives the ranges out itself; readers such as the operator's
        HTTP policy find them where they would on any cluster)."""
        kube = Kube(self.api_client)
        for name, node in self._nodes.items():
            cidr = node.network.pod_cidr
            kube.patch(f"/api/v1/nodes/{name}", {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})

    def _start_provisioner(self) -> None:
        kube = Kube(self.api_client)
        self.provisioner = LocalProvisioner(kube, self.state_dir / "volumes", self.nodes)
        self.provisioner.ensure_storage_class(default=True)
        for path, handle in (
            ("/api/v1/persistentvolumeclaims", self.provisioner.on_claim),
            ("/api/v1/persistentvolumes", self.provisioner.on_volume),
        ):
            thread = threading.Thread(
                target=list_and_watch,
                args=(kube, path, handle, self._stop),
                kwargs={"on_error": lambda exc: _log.warning("provisioner watch: %s", exc)},
                name=f"provisioner-{path.rsplit('/', 1)[-1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()
        with ThreadPoolExecutor(max_workers=max(1, len(self._nodes))) as pool:
            list(pool.map(lambda node: node.stop(), self._nodes.values()))
        if hasattr(self, "plane"):
            self.plane.stop()
        if hasattr(self, "provisioner"):
            self.provisioner.release_all()
        if hasattr(self, "network"):
            shutil.rmtree(RUN_ROOT / str(self.network.index), ignore_errors=True)
            self.network.close()
