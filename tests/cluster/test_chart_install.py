"""The Helm chart on the real cluster: it validates, installs, and its operator (the
operator image, in its Deployment's container) works with nothing but the chart's
ServiceAccount and RBAC: its only credential is the token kubelet projects into the Pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.helm import ALL_ON, helm_binary
from tests.cluster.conftest import Cluster
from tests.cluster.harness.processes import wait_until
from tests.worker.images import MiB, make_raw, same_content, to_vmdk

from hyper2kvm_operator.api import MigrationJobSpec

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hyper2kvm"
RELEASE = "h2k"
FULLNAME = "h2k-hyper2kvm"


@dataclass
class Release:
    namespace: str
    account: str
    notes: str
    install: list[str]  # the helm arguments it was installed with

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"


def helm(cluster: Cluster, *args: str) -> str:
    done = subprocess.run(
        [str(helm_binary()), *args],
        env=cluster.kubectl_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    done = cluster.kubectl(*args, stdin=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def chart_release(
    cluster: Cluster, release: str, namespace: str, *values: str
) -> Iterator[tuple[list[str], str]]:
    """The chart installed as `release` with test settings plus `values` (each a --set):
    yields the helm arguments and helm's output, then uninstalls and removes `namespace`."""
    try:
        install = [
            "upgrade", "--install", release, str(CHART),
            "--namespace", namespace, "--create-namespace", "--wait", "--timeout", "3m",
            "--set", "operator.replicas=1",
            "--set", "operator.verbose=true",
            "--set", "operator.statusIntervalSeconds=1",
        ]  # fmt: skip
        for value in [*cluster.image_values(), *values]:
            install += ["--set", value]
        yield install, helm(cluster, *install)
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
    finally:
        cluster.kube.delete(f"/api/v1/namespaces/{namespace}")


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    namespace = f"h2k-chart-{secrets.token_hex(3)}"
    with chart_release(
        cluster,
        RELEASE,
        namespace,
        "operator.backoffBaseSeconds=1",
        "storage.input.create=true",
        "storage.input.size=1Gi",
        "storage.output.create=true",
        "storage.output.size=1Gi",
        "storage.scratch.enabled=true",
        "storage.scratch.size=1Gi",
    ) as (install, output):
        yield Release(namespace, FULLNAME, output.split("NOTES:", 1)[-1], install)


def operator_pod(cluster: Cluster, namespace: str, release: str = RELEASE) -> dict[str, Any]:
    pods = cluster.kube.get(
        f"/api/v1/namespaces/{namespace}/pods",
        labelSelector=f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
    )["items"]
    assert len(pods) == 1
    return dict(pods[0])


def claim_dir(cluster: Cluster, namespace: str, claim: str) -> Path:
    def bound() -> str | None:
        pvc = cluster.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        return pvc["spec"].get("volumeName") if pvc["status"].get("phase") == "Bound" else None

    volume = wait_until(bound, timeout=60, what=f"claim {claim} bound")
    pv = cluster.kube.get(f"/api/v1/persistentvolumes/{volume}")
    return Path(pv["spec"]["local"]["path"])


def operator_log(cluster: Cluster, namespace: str, release: str = RELEASE) -> str:
    name = operator_pod(cluster, namespace, release)["metadata"]["name"]
    return kubectl(cluster, "logs", "-n", namespace, name)


def permission_denials(log: str) -> list[str]:
    """HTTP 403s and Kopf's permission warnings (not the digits 403 in a timestamp)."""
    return re.findall(r'.*(?:Forbidden|forbidden|Not enough permissions|HTTP/1\.1" 403 ).*', log)


def test_rendered_manifests_pass_server_side_strict_validation(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every object of every toggle, checked by the API server against its schema."""
    tools = Path(
        subprocess.run(
            [str(REPO / "hack/tools/build.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    kubectl(cluster, "apply", "--server-side", "-f", str(tools / "crds"))
    kubectl(cluster, "apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl(
        cluster, "wait", "--for=condition=Established", "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com",
        "crd/migrationjobs.hyper2kvm.io", "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
    )  # fmt: skip
    namespace = f"h2k-validate-{secrets.token_hex(3)}"
    watched = [f"{namespace}-a", f"{namespace}-b"]
    for name in (namespace, *watched):
        cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    variants = {
        "all-on": list(ALL_ON),
        "namespaced": [f"operator.watchNamespaces={{{','.join(watched)}}}"],
    }
    try:
        for variant, values in variants.items():
            sets = [arg for value in values for arg in ("--set", value)]
            rendered = tmp_path / f"{variant}.yaml"
            rendered.write_text(
                helm(cluster, "template", "v", str(CHART), "--namespace", namespace, *sets)
            )
            out = kubectl(
                cluster, "apply", "--dry-run=server", "--validate=strict", "-f", str(rendered),
            )  # fmt: skip
            assert "(server dry run)" in out
    finally:
        for name in (namespace, *watched):
            cluster.kube.delete(f"/api/v1/namespaces/{name}")


def test_chart_operator_converts_a_disk_with_its_own_service_account(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    input_dir = claim_dir(cluster, release.namespace, f"{FULLNAME}-input")
    output_dir = claim_dir(cluster, release.namespace, f"{FULLNAME}-output")
    raw = make_raw(tmp_path / "vm.raw", 64 * MiB, [(0, 4 * MiB), (40 * MiB, 3 * MiB)])
    (input_dir / "vm").mkdir(parents=True, exist_ok=True)
    to_vmdk(raw, input_dir / "vm" / "vm.vmdk", "monolithicSparse")
    job = {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": "chart-convert"},
        "spec": {
            "operation": "convert",
            "placement": {"nodeSelector": cluster.selector},
            "disks": [
                {
                    "name": "disk0",
                    "source": {"pvc": {"claimName": f"{FULLNAME}-input", "path": "vm/vm.vmdk"}},
                    "output": {
                        "pvc": {"claimName": f"{FULLNAME}-output"},
                        "path": "vm/disk0.qcow2",
                    },
                }
            ],
        },
    }
    kubectl(cluster, "apply", "-n", release.namespace, "-f", "-", stdin=yaml.safe_dump(job))

    def finished() -> dict[str, Any] | None:
        body = cluster.kube.get(
            f"/apis/hyper2kvm.io/v1alpha1/namespaces/{release.namespace}"
            "/migrationjobs/chart-convert"
        )
        status = body.get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed", "Cancelled") else None

    status = wait_until(finished, timeout=240, what="the chart's operator to finish the job")
    log = operator_log(cluster, release.namespace)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2) + log[-4000:]
    assert same_content(raw, output_dir / "vm" / "disk0.qcow2", "raw", "qcow2")

    # The worker Pod mounted the input read-only and got scratch space of its own.
    pod = cluster.kube.get(f"/api/v1/namespaces/{release.namespace}/pods/{status['pod']}")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claims = [v["persistentVolumeClaim"] for v in volumes.values() if "persistentVolumeClaim" in v]
    assert {"claimName": f"{FULLNAME}-input", "readOnly": True} in claims
    assert "ephemeral" in volumes["scratch"]
    scratch = cluster.kube.get(
        f"/api/v1/namespaces/{release.namespace}/persistentvolumeclaims/{status['pod']}-scratch"
    )
    assert scratch["spec"]["accessModes"] == ["ReadWriteOnce"]

    # Everything the operator tried, its RBAC allowed.
    denied = permission_denials(log)
    assert not denied, "\n".join(denied[:20])


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "pods", True),
        ("delete", "pods", True),
        ("patch", "migrationjobs.hyper2kvm.io/status", True),
        ("patch", "vsphereproviders.hyper2kvm.io/status", True),
        ("watch", "vsphereproviders.hyper2kvm.io", True),
        ("delete", "vsphereproviders.hyper2kvm.io", False),
        ("list", "nodes", True),
        ("get", "secrets", True),  # a Secret's label, before a worker may mount it
        ("list", "secrets", False),
        ("watch", "secrets", False),
        ("update", "migrationjobs.hyper2kvm.io", False),
        ("delete", "migrationjobs.hyper2kvm.io", False),
        ("delete", "configmaps", False),
        ("get", "configmaps", True),  # one found under its name, to check its owner
        ("list", "configmaps", False),
        ("create", "networkpolicies.networking.k8s.io", True),
        ("delete", "networkpolicies.networking.k8s.io", False),
        ("create", "persistentvolumeclaims", True),  # claim outputs the job asks to make
        ("delete", "persistentvolumeclaims", False),  # a migrated disk: only its owner removes it
        ("create", "secrets", True),  # a vSphere attempt's own session
        ("update", "secrets", False),
        ("patch", "nodes", False),
        ("create", "deployments.apps", False),
        ("create", "clusterroles.rbac.authorization.k8s.io", False),
    ],
)
def test_service_account_can_do_what_is_listed_and_no_more(
    cluster: Cluster, release: Release, verb: str, resource: str, allowed: bool
) -> None:
    done = cluster.kubectl(
        "auth", "can-i", verb, resource, "--as", release.user, "--namespace", "default"
    )
    assert done.stdout.strip() == ("yes" if allowed else "no"), done.stdout + done.stderr


def test_service_account_token_is_refused_secrets(
    cluster: Cluster, release: Release, tmp_path: Path
) -> None:
    """The token itself, not an impersonation: a kubeconfig holding only that token."""
    token = kubectl(cluster, "create", "token", release.account, "-n", release.namespace).strip()
    admin = yaml.safe_load(kubectl(cluster, "config", "view", "--raw", "--minify"))
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"},
            }
        ],
        "current-context": "operator",
    }
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    allowed = as_operator("get", "pods", "-n", release.namespace)
    assert allowed.returncode == 0, allowed.stderr
    refused = as_operator("get", "secrets", "-n", release.namespace)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr and release.user in refused.stderr


def test_notes_tell_how_to_label_nodes_and_submit_a_job(release: Release) -> None:
    assert "kubectl label node <node> hyper2kvm.io/worker=true" in release.notes
    assert f"claimName: {FULLNAME}-input" in release.notes
    assert "kubectl get migrationjobs -w" in release.notes
    # The first job shown is a valid MigrationJob.
    manifest = release.notes.split("kubectl apply -f -\n", 1)[1].split("     YAML", 1)[0]
    job = yaml.safe_load("\n".join(line[5:] for line in manifest.splitlines()))
    MigrationJobSpec.model_validate(job["spec"])


def test_probes_answer_where_the_deployment_points_them(cluster: Cluster, release: Release) -> None:
    """A probe on the wrong port or path would have the operator restarted forever."""
    pod = operator_pod(cluster, release.namespace)
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        url = f"http://{pod['status']['podIP']}:{ports[get['port']]}{get['path']}"

        def answers(url: str = url) -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(answers, timeout=60, what=f"{probe} at {url}")


def test_upgrading_with_the_same_values_changes_nothing(cluster: Cluster, release: Release) -> None:
    def versions() -> dict[str, int]:
        found = {}
        for kind in ("deployments.apps", "services", "serviceaccounts", "persistentvolumeclaims"):
            listed = yaml.safe_load(
                kubectl(cluster, "get", kind, "-n", release.namespace, "-o", "yaml")
            )
            for item in listed["items"]:
                meta = item["metadata"]
                # generation counts spec changes only: a controller's status write is no drift
                found[f"{kind}/{meta['name']}"] = int(
                    meta.get("generation") or meta["resourceVersion"]
                )
        return found

    before = versions()
    helm(cluster, *release.install)
    assert versions() == before
