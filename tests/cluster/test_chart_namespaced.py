"""The chart with operator.watchNamespaces: RoleBindings and KopfPeerings in the watched
namespaces are all the operator gets, and all it needs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster, host_folder
from tests.cluster.harness.processes import wait_until
from tests.cluster.test_chart_install import (
    chart_release,
    kubectl,
    operator_log,
    permission_denials,
)
from tests.cluster.test_operator import convert_disk, migration
from tests.worker.images import MiB, make_raw, same_content, to_vmdk

RELEASE = "h2kns"


@dataclass
class NamespacedRelease:
    namespace: str  # the operator's
    watched: str
    unwatched: str


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[NamespacedRelease]:
    suffix = secrets.token_hex(3)
    target = NamespacedRelease(f"h2kns-op-{suffix}", f"h2kns-jobs-{suffix}", f"h2kns-x-{suffix}")
    for name in (target.watched, target.unwatched):
        cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    try:
        watch = f"operator.watchNamespaces={{{target.watched}}}"
        # The tests' disks and outputs are host folders under the temporary directory.
        host_paths = ("policy.hostPaths[0].prefix=/tmp", "policy.hostPaths[0].write=true")
        with chart_release(cluster, RELEASE, target.namespace, watch, *host_paths):
            yield target
    finally:
        for name in (target.watched, target.unwatched):
            cluster.kube.delete(f"/api/v1/namespaces/{name}")


def test_operator_runs_jobs_in_its_namespaces_only(
    cluster: Cluster, release: NamespacedRelease, tmp_path: Path
) -> None:
    disks = host_folder(tmp_path / "disks", writable=False)
    raw = make_raw(disks / "vm.raw", 32 * MiB, [(0, 2 * MiB)])
    vmdk = to_vmdk(raw, disks / "vm.vmdk", "monolithicSparse")
    outputs = {ns: tmp_path / ns for ns in (release.watched, release.unwatched)}
    for namespace, out in outputs.items():
        disk = convert_disk({"hostPath": {"path": str(vmdk)}}, out)
        job = yaml.safe_dump(migration("ns-convert", cluster, [disk]))
        kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=job)

    def status(namespace: str) -> dict[str, Any]:
        path = f"/apis/hyper2kvm.io/v1alpha1/namespaces/{namespace}/migrationjobs/ns-convert"
        return dict(cluster.kube.get(path).get("status") or {})

    def finished() -> dict[str, Any] | None:
        state = status(release.watched)
        return state if state.get("phase") in ("Succeeded", "Failed") else None

    done = wait_until(finished, timeout=240, what="the job in the watched namespace")
    log = operator_log(cluster, release.namespace, RELEASE)
    assert done["phase"] == "Succeeded", log[-4000:]
    assert same_content(raw, outputs[release.watched] / "disk0.qcow2", "raw", "qcow2")
    assert status(release.unwatched) == {}  # never admitted: not this operator's namespace
    denied = permission_denials(log)
    assert not denied, "\n".join(denied[:20])
