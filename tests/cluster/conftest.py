"""Fixtures for tests against a real Kubernetes API.

Default: a local control plane (tests/cluster/harness) plus the test node agent, started
once per session. With KUBECONFIG set, that cluster is used instead and nothing is started;
tests that need Pods to run locally then skip, unless HYPER2KVM_CLUSTER_NODE_AGENT=1 asks
for the node agent to join that cluster with its own Nodes.
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
from tests.cluster.harness.controlplane import ControlPlane, ensure_binaries
from tests.cluster.harness.kube import Kube, api_client_from_kubeconfig
from tests.cluster.harness.node_agent import WORKER_LABEL, NodeAgent
from tests.cluster.harness.processes import wait_until

AGENT_LABEL = "hyper2kvm.io/agent"


@dataclass
class Cluster:
    kubeconfig: Path
    api_client: k8s_client.ApiClient
    kube: Kube
    agent: NodeAgent | None
    local: bool
    start_seconds: float
    nodes: tuple[str, ...]
    # Matches only this session's nodes, even on a cluster where other agents run too.
    selector: dict[str, str]

    @property
    def configuration(self) -> k8s_client.Configuration:
        return cast(k8s_client.Configuration, self.api_client.configuration)

    def require_agent(self) -> NodeAgent:
        if self.agent is None:
            pytest.skip(
                "needs the test node agent: KUBECONFIG points at an existing cluster; set "
                "HYPER2KVM_CLUSTER_NODE_AGENT=1 to let the agent add its Nodes to it"
            )
        return self.agent

    def kubectl_env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this cluster; the caller checks the outcome."""
        return subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.kubectl_env(),
            timeout=120,
            check=False,
        )


def _agent(api: k8s_client.ApiClient, state: Path, session: str, *, local: bool) -> NodeAgent:
    prefix = "hyper2kvm" if local else f"h2k-{session}"
    return NodeAgent(
        api,
        state / "agent",
        nodes=(f"{prefix}-node-1", f"{prefix}-node-2"),
        labels={AGENT_LABEL: session},
        # On a cluster that is not ours, make no StorageClass the default.
        default_storage_class=local,
    )


def _cluster(
    kubeconfig: Path,
    api: k8s_client.ApiClient,
    agent: NodeAgent | None,
    started: float,
    *,
    local: bool,
) -> Cluster:
    nodes = agent.nodes if agent else ()
    selector = {WORKER_LABEL: "true", AGENT_LABEL: agent.labels[AGENT_LABEL]} if agent else {}
    elapsed = time.monotonic() - started
    return Cluster(kubeconfig, api, Kube(api), agent, local, elapsed, nodes, selector)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    state = tmp_path_factory.mktemp("cluster")
    session = secrets.token_hex(3)
    started = time.monotonic()
    if external:
        api = api_client_from_kubeconfig(external.split(os.pathsep)[0])
        agent = None
        if os.environ.get("HYPER2KVM_CLUSTER_NODE_AGENT") == "1":
            agent = _agent(api, state, session, local=False)
            agent.start()
        try:
            yield _cluster(Path(external.split(os.pathsep)[0]), api, agent, started, local=False)
        finally:
            if agent is not None:
                agent.stop()
        return

    plane = ControlPlane(state_dir=state, bin_dir=ensure_binaries())
    with plane:
        api = api_client_from_kubeconfig(str(plane.kubeconfig))
        with _agent(api, state, session, local=True) as agent:
            yield _cluster(plane.kubeconfig, api, agent, started, local=True)


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
