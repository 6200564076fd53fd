"""The examples hold: MigrationJobs that the API and the operator accept, and Argo CD
Applications that point at what this repository holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyper2kvm_operator import api, worker_job
from hyper2kvm_operator.api import MigrationJobSpec
from hyper2kvm_worker.protocol import Operation

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
ARGOCD = EXAMPLES / "argocd"
REPO_URL = "https://github.com/hyper2kvm/hyper2kvm.git"
IN_CLUSTER = "https://kubernetes.default.svc"
# Worker Pods are `<job>-<attempt>` and their job files `<job>-<attempt>-job`; the job name is
# also a label value (63 characters at most). This leaves room for attempt numbers.
MAX_JOB_NAME = 63 - len("-10-job")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


JOB_MANIFESTS = [
    (path, doc)
    for path in manifests(EXAMPLES)
    for doc in documents(path)
    if doc.get("kind") == api.KIND
]
JOBS = [
    pytest.param(doc, id=f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}")
    for path, doc in JOB_MANIFESTS
]


# --------------------------------------------------------------------------- MigrationJobs


def test_there_are_examples_of_every_operation() -> None:
    operations = {doc["spec"]["operation"] for _, doc in JOB_MANIFESTS}
    assert operations == {operation.value for operation in Operation}


@pytest.mark.parametrize("manifest", JOBS)
def test_migrationjob_is_accepted_by_the_api_and_the_operator(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == f"{api.GROUP}/{api.VERSION}"
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}, "no status in Git"
    metadata = manifest["metadata"]
    name = metadata["name"]
    assert DNS_LABEL.match(name) and len(name) <= MAX_JOB_NAME, name
    # The operator owns the finalizer list: a manifest that sets it fights the operator.
    assert "finalizers" not in metadata
    # The CRD's CEL rules are checked by the real API server in
    # tests/cluster/test_migrationjob_api.py::test_example_jobs_are_accepted_by_the_api_server.
    spec = MigrationJobSpec.model_validate(manifest["spec"])
    # The operator turns it into a worker job; the worker protocol checks more (no two disks
    # writing one file, no preallocated compressed qcow2, fix options).
    if spec.source is not None:  # a VM whose disks the operator finds: it needs the VM
        assert spec.output is not None or spec.operation is Operation.INSPECT
        return
    plan = worker_job.plan(name, spec)
    assert [disk.name for disk in plan.job.disks] == [disk.name for disk in spec.disks]


# ----------------------------------------------------------------------------- Applications


def application(name: str) -> dict[str, Any]:
    docs = documents(ARGOCD / name)
    assert len(docs) == 1
    return docs[0]


def sync_wave(app: Mapping[str, Any]) -> int:
    return int(app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def unknown_keys(values: Mapping[str, Any], defaults: Mapping[str, Any], at: str = "") -> list[str]:
    """Keys of `values` that the chart's values.yaml does not have (maps it leaves empty,
    such as labels, take any key)."""
    unknown = []
    for key, value in values.items():
        if key not in defaults:
            unknown.append(at + key)
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and defaults[key]:
            unknown += unknown_keys(value, defaults[key], f"{at}{key}.")
    return unknown


@pytest.mark.parametrize("name", ["application-operator.yaml", "application-migrationjobs.yaml"])
def test_application_points_at_this_repository(name: str) -> None:
    app = application(name)
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    # Deleting the Application must not cascade to the CRD or to the jobs.
    assert "resources-finalizer.argocd.argoproj.io" not in app["metadata"].get("finalizers", [])
    spec = app["spec"]
    assert spec["project"]
    source = spec["source"]
    assert source["repoURL"] == REPO_URL
    assert source["targetRevision"]
    assert (REPO / source["path"]).is_dir(), source["path"]
    assert spec["destination"]["server"] == IN_CLUSTER
    assert spec["destination"]["namespace"]
    options = spec["syncPolicy"].get("syncOptions", [])
    if spec.get("ignoreDifferences"):
        assert "RespectIgnoreDifferences=true" in options


def test_operator_application_installs_the_chart() -> None:
    app = application("application-operator.yaml")
    source = app["spec"]["source"]
    chart = REPO / source["path"]
    assert source["path"] == "charts/hyper2kvm"
    assert (chart / "Chart.yaml").is_file()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", source["targetRevision"]), "a release tag"
    assert app["spec"]["destination"]["namespace"] == "hyper2kvm-system"
    # The CRDs come from the chart's crds/, rendered by Argo CD with --include-crds.
    assert source["helm"].get("skipCrds", False) is False
    crds = [doc for path in manifests(chart / "crds") for doc in documents(path)]
    assert f"{api.PLURAL}.{api.GROUP}" in {doc["metadata"]["name"] for doc in crds}
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    assert unknown_keys(source["helm"]["valuesObject"], defaults) == []
    policy = app["spec"]["syncPolicy"]
    assert policy["automated"] == {"prune": True, "selfHeal": True}
    assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(policy["syncOptions"])


def test_migrationjobs_application_never_prunes() -> None:
    app = application("application-migrationjobs.yaml")
    source = app["spec"]["source"]
    assert source["path"] == "examples/argocd/migrationjobs"
    assert source["directory"]["recurse"] is True
    assert app["spec"]["destination"]["namespace"] == "migrations"
    policy = app["spec"]["syncPolicy"]
    assert policy["automated"]["prune"] is False
    assert policy["automated"]["selfHeal"] is True
    assert "Prune=true" not in policy.get("syncOptions", [])
    # After the operator, whose chart brings the CRD.
    assert sync_wave(app) > sync_wave(application("application-operator.yaml"))


def test_the_synced_folder_holds_only_migrationjobs() -> None:
    # Argo CD applies every manifest it finds under the path.
    app = application("application-migrationjobs.yaml")
    folder = REPO / app["spec"]["source"]["path"]
    docs = [doc for path in manifests(folder) for doc in documents(path)]
    assert docs
    for doc in docs:
        assert doc["kind"] == api.KIND
        metadata = doc["metadata"]
        assert metadata.get("namespace", "migrations") == "migrations"
        annotations = metadata.get("annotations", {})
        options = {o.strip() for o in annotations["argocd.argoproj.io/sync-options"].split(",")}
        assert {"Prune=false", "Delete=false"} <= options, metadata["name"]
        # One wave: a sync applies the jobs and ends; health follows them from there.
        assert "argocd.argoproj.io/sync-wave" not in annotations
