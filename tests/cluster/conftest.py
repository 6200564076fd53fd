"""Fixtures for tests against a real Kubernetes cluster.

Default: a local cluster (tests/cluster/harness): the control plane and two real nodes
(kubelet, kube-proxy, containerd, runc) running the project's own images, started once per
session. With KUBECONFIG set, that cluster is used instead and nothing is started: the
tests that need the local cluster (its host folders, its network, its nodes' processes)
skip, and worker nodes are the ones labelled hyper2kvm.io/worker=true there.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from kubernetes import client as k8s_client
from tests import requirements
from tests.cluster.harness.cluster import WORKER_LABEL, LocalCluster
from tests.cluster.harness.kube import Kube, api_client_from_kubeconfig
from tests.cluster.harness.processes import wait_until

SESSION_LABEL = "hyper2kvm.io/test-session"
WORKER_UID = 10001  # the images' user


@dataclass
class Cluster:
    kubeconfig: Path
    api_client: k8s_client.ApiClient
    kube: Kube
    local: LocalCluster | None
    start_seconds: float
    nodes: tuple[str, ...]
    # Matches only this session's nodes, even on a cluster where other nodes are workers too.
    selector: dict[str, str]

    @property
    def configuration(self) -> k8s_client.Configuration:
        return cast(k8s_client.Configuration, self.api_client.configuration)

    def require_local(self) -> LocalCluster:
        if self.local is None:
            pytest.skip(
                "needs the local test cluster (its host folders, network and node processes): "
                "KUBECONFIG points at another cluster"
            )
        return self.local

    @property
    def host_address(self) -> str:
        """Where servers of the tests listen so that Pods reach them."""
        return self.require_local().host_address

    def image(self, name: str) -> str:
        """The reference of a project image (worker, operator, base) on the local nodes."""
        return self.require_local().images.ref(name)

    def image_values(self) -> list[str]:
        """The chart's `--set` values that run the project's own images on the local nodes."""
        values = []
        for component in ("operator", "worker"):
            repository, _, tag = self.image(component).rpartition(":")
            values += [
                f"{component}.image.repository={repository}",
                f"{component}.image.tag={tag}",
                # Imported into the nodes' containerd; there is no registry to pull from.
                f"{component}.image.pullPolicy=Never",
            ]
        return values

    def kubectl_env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this cluster; the caller checks the outcome."""
        return subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.kubectl_env(),
            timeout=timeout,
            check=False,
        )


def host_folder(path: Path, *, writable: bool) -> Path:
    """A folder for a hostPath volume. hostPath keeps the node's ownership (fsGroup does not
    apply to it), so a folder the worker writes must belong to the worker's user."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    if writable:
        os.chown(path, WORKER_UID, WORKER_UID)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every cluster test needs what the local cluster runs (checked before any test runs)."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.needs(*requirements.CLUSTER_TOOLS))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    started = time.monotonic()
    if external:
        path = Path(external.split(os.pathsep)[0])
        api = api_client_from_kubeconfig(str(path))
        kube = Kube(api)
        selector = {WORKER_LABEL: "true"}
        nodes = tuple(
            node["metadata"]["name"]
            for node in kube.get("/api/v1/nodes", labelSelector=f"{WORKER_LABEL}=true")["items"]
        )
        yield Cluster(path, api, kube, None, time.monotonic() - started, nodes, selector)
        return

    # A letter first: YAML would read a value like "1e5731" (plain hex) as a number.
    session = f"s{secrets.token_hex(3)}"
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), labels={SESSION_LABEL: session})
    with local:
        api = api_client_from_kubeconfig(str(local.kubeconfig))
        selector = {WORKER_LABEL: "true", SESSION_LABEL: session}
        yield Cluster(
            local.kubeconfig,
            api,
            Kube(api),
            local,
            time.monotonic() - started,
            local.nodes,
            selector,
        )


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (Pods are admitted only then)."""
    name = f"h2k-test-{secrets.token_hex(4)}"
    cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(
        lambda: cluster.kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=60,
        what=f"the default ServiceAccount in {name}",
    )
    yield name
    cluster.kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def kubevirt_vms(cluster: Cluster) -> Iterator[None]:
    """KubeVirt's VirtualMachine kind served for the test (see tests/cluster/kubevirt.py)."""
    from tests.cluster.kubevirt import serve_virtual_machines  # it needs this module's Cluster

    with serve_virtual_machines(cluster):
        yield
