"""The Makefile's cluster targets, run as a user runs them, against the local control plane."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.chart.helm import helm_binary
from tests.cluster.conftest import Cluster, host_folder
from tests.worker.images import MiB, make_raw, to_vmdk

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Deployed:
    cluster: Cluster
    release: str
    namespace: str
    env: dict[str, str]

    def make(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", "-s", *args,
             f"RELEASE={self.release}", f"NAMESPACE={self.namespace}"],
            cwd=REPO, env=env or self.env, capture_output=True, text=True, timeout=600,
            check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self.make(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Iterator[Deployed]:
    env = {**cluster.kubectl_env(), "HELM": str(helm_binary())}
    target = Deployed(cluster, "mk", f"h2k-make-{secrets.token_hex(3)}", env)
    helm_args = " ".join(
        f"--set {value}"
        for value in (
            *cluster.image_values(),
            "operator.replicas=1",
            "operator.statusIntervalSeconds=1",
            "worker.slotsPerNode=3",
            "policy.hostPaths[0].prefix=/tmp",  # the job below reads a host folder there
        )
    )
    try:
        target.ok("deploy", f"HELM_ARGS={helm_args}")
        yield target
        out = target.ok("undeploy")
        assert "Kept: the MigrationJob CRD" in out
        assert (
            cluster.kube.get_or_none(
                f"/apis/apps/v1/namespaces/{target.namespace}/deployments/mk-hyper2kvm"
            )
            is None
        )
    finally:
        cluster.kube.delete(f"/api/v1/namespaces/{target.namespace}")


def job_file(tmp_path: Path, cluster: Cluster, name: str, namespace: str, source: Path) -> Path:
    job = {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "operation": "inspect",
            "placement": {"nodeSelector": cluster.selector},
            "disks": [{"name": "disk0", "source": {"hostPath": {"path": str(source)}}}],
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_deploy_applies_the_crds_itself(deployed: Deployed) -> None:
    """helm leaves crds/ alone after the first install: deploy must apply them on upgrades."""
    crd = deployed.cluster.kube.get(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/migrationjobs.hyper2kvm.io"
    )
    managers = {entry["manager"] for entry in crd["metadata"]["managedFields"]}
    assert "hyper2kvm-deploy" in managers


def test_label_nodes_labels_and_requires_names(deployed: Deployed) -> None:
    nodes = deployed.cluster.nodes
    deployed.ok("label-nodes", f"NODES={' '.join(nodes)}")
    for node in nodes:
        labels = deployed.cluster.kube.get(f"/api/v1/nodes/{node}")["metadata"]["labels"]
        assert labels["hyper2kvm.io/worker"] == "true"
    missing = deployed.make("label-nodes")
    assert missing.returncode != 0
    assert 'NODES="node-a node-b"' in missing.stderr


def test_submit_follows_a_job_and_the_job_targets_describe_it(
    deployed: Deployed, namespace: str, tmp_path: Path
) -> None:
    disks = host_folder(tmp_path / "disks", writable=False)
    raw = make_raw(disks / "vm.raw", 32 * MiB, [(0, MiB)])
    vmdk = to_vmdk(raw, disks / "vm.vmdk", "monolithicSparse")
    good = job_file(tmp_path, deployed.cluster, "make-inspect", namespace, vmdk)
    out = deployed.ok("submit", f"JOB={good}")
    assert "make-inspect" in out and "Succeeded" in out

    status = deployed.ok("job-status", "JOB=make-inspect", f"NS={namespace}")
    assert "Succeeded" in status and "conditions:" in status and "disk0" in status
    events = deployed.ok("job-events", "JOB=make-inspect", f"NS={namespace}")
    assert "Succeeded" in events and "attempt 1 succeeded" in events
    worker_log = deployed.ok("logs", "JOB=make-inspect", f"NS={namespace}")
    assert "make-inspect-1" in worker_log  # --prefix names the worker Pod
    assert "succeeded" in worker_log.lower()

    bad = job_file(tmp_path, deployed.cluster, "make-missing", namespace, disks / "no.vmdk")
    failed = deployed.make("submit", f"JOB={bad}")
    assert failed.returncode != 0
    assert "Failed" in failed.stdout


def test_submit_without_a_file_says_so(deployed: Deployed) -> None:
    done = deployed.make("submit", "JOB=/nonexistent.yaml")
    assert done.returncode != 0
    assert "JOB must name a MigrationJob file" in done.stderr


def test_status_shows_operator_crd_nodes_and_jobs(deployed: Deployed) -> None:
    out = deployed.ok("status")
    assert "deployment.apps/mk-hyper2kvm" in out
    assert "migrationjobs.hyper2kvm.io   True" in out
    for node in deployed.cluster.nodes:
        line = next(line for line in out.splitlines() if line.startswith(node))
        fields = line.split()
        assert fields[1] == "True" and fields[2] == "3"  # worker.slotsPerNode from the release
        assert int(fields[3]) + int(fields[4]) == 3
    assert "== jobs by phase" in out


def test_logs_show_the_operator(deployed: Deployed) -> None:
    out = deployed.ok("logs")
    assert "kopf" in out


def test_capabilities_runs_on_every_worker_node(deployed: Deployed) -> None:
    out = deployed.ok("capabilities")
    for node in deployed.cluster.nodes:
        assert f"== {node}" in out
    assert out.count("qemu-img") >= len(deployed.cluster.nodes)


def test_images_without_buildah_says_so(deployed: Deployed, tmp_path: Path) -> None:
    # A PATH with the tools the script needs and no buildah, whatever this machine has.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "git", "dirname", "make"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            (bin_dir / tool).symlink_to(found.stdout.strip())
    done = deployed.make("images", env={**deployed.env, "PATH": str(bin_dir)})
    assert done.returncode != 0
    assert "buildah is not installed (make setup installs it from Debian)" in done.stderr
