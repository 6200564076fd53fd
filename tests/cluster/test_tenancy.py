"""A tenant who may create MigrationJobs in their namespace, attacking the real control plane
and the real worker: every attempt fails safely, and says why."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster, host_folder
from tests.cluster.harness.network import SERVICE_CIDR
from tests.cluster.harness.processes import wait_until
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_operator import (
    TERMINAL,
    job_status,
    kubectl,
    migration,
    running_operator,
    served_disk,
    submit,
    wait_phase,
)
from tests.worker.images import MiB, make_raw, to_vmdk

from hyper2kvm_operator import network_policy, worker_pod

SUFFIX = secrets.token_hex(3)
TEAM_A = f"h2k-team-a-{SUFFIX}"  # may read and write host folders under /tmp
TEAM_B = f"h2k-team-b-{SUFFIX}"  # granted nothing
RESTRICTED = f"h2k-restricted-{SUFFIX}"  # Pod Security "restricted", host folders granted
POLICY = {
    "hostPaths": [{"prefix": "/tmp", "write": True, "namespaces": [TEAM_A, RESTRICTED]}],
    "maxPriority": 10,
    "namespaceSlots": 1,
}
OPERATOR_LABELS = {"app.kubernetes.io/name": "hyper2kvm"}


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    labels = {
        RESTRICTED: {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    }
    for name in (TEAM_A, TEAM_B, RESTRICTED):
        meta = {"name": name, "labels": labels.get(name, {})}
        cluster.kube.create("/api/v1/namespaces", {"metadata": meta})
        account = f"/api/v1/namespaces/{name}/serviceaccounts/default"
        wait_until(
            lambda path=account: cluster.kube.get_or_none(path),  # type: ignore[misc]
            timeout=60,
            what=f"the default ServiceAccount in {name}",
        )
    settings = {
        "HYPER2KVM_POLICY": json.dumps(POLICY),
        "HYPER2KVM_NETWORK_POLICY": "true",
        "HYPER2KVM_OPERATOR_NAMESPACE": "hyper2kvm-system",
        "HYPER2KVM_OPERATOR_LABELS": json.dumps(OPERATOR_LABELS),
    }
    log = tmp_path_factory.mktemp("tenancy-operator") / "log"
    try:
        with running_operator(cluster, log, settings) as process:
            yield process
    finally:
        for name in (TEAM_A, TEAM_B, RESTRICTED):
            cluster.kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def vmdk(tmp_path: Path) -> Path:
    disks = host_folder(tmp_path / "disks", writable=False)
    raw = make_raw(disks / "vm.raw", 8 * MiB, [(0, MiB)])
    return to_vmdk(raw, disks / "vm.vmdk", "monolithicSparse")


def inspect_job(cluster: Cluster, name: str, source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    disk = {"name": "disk0", "source": source}
    return migration(name, cluster, [disk], operation="inspect", **spec)


def pods_of(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return list(cluster.kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"])


def events_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = cluster.kube.get(
        f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.name={name}"
    )
    return list(found["items"])


def failed_with(
    cluster: Cluster, namespace: str, name: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    """The job's final status, which must be Failed for `reason`, with an Event saying so."""
    final = wait_phase(cluster, namespace, name, TERMINAL, timeout=timeout)
    assert (final["phase"], final["reason"]) == ("Failed", reason), final
    wait_until(
        lambda: [e for e in events_of(cluster, namespace, name) if e["reason"] == reason],
        timeout=30,
        what=f"a {reason} Event of {name}",
    )
    return final


def test_host_folders_and_ceilings_are_the_admins_not_the_jobs(
    operator: OperatorProcess, cluster: Cluster, vmdk: Path
) -> None:
    """Team B was granted no host folder; team A may not write outside its prefix, nor
    raise its own priority. Refused at once, naming the rule, and no Pod ever made."""
    source = {"hostPath": {"path": str(vmdk)}}
    submit(cluster, TEAM_B, inspect_job(cluster, "reads-a-node", source))
    escaped = migration(
        "writes-etc",
        cluster,
        [
            {
                "name": "disk0",
                "source": source,
                "output": {"hostPath": {"path": "/etc/cron.d"}, "path": "x"},
            }
        ],
        priority=500,
    )
    submit(cluster, TEAM_A, escaped)

    reads = failed_with(cluster, TEAM_B, "reads-a-node", "PolicyViolation")
    writes = failed_with(cluster, TEAM_A, "writes-etc", "PolicyViolation")

    assert f"hostPath is off for {TEAM_B} (policy.hostPaths)" in reads["message"]
    assert "/etc/cron.d" in writes["message"] and "(policy.hostPaths)" in writes["message"]
    assert "priority 500 is above this cluster's 10 (policy.maxPriority)" in writes["message"]
    assert pods_of(cluster, TEAM_B) == []
    assert not [p for p in pods_of(cluster, TEAM_A) if "writes-etc" in p["metadata"]["name"]]


def test_a_pod_under_the_workers_name_is_never_adopted(
    operator: OperatorProcess, cluster: Cluster, vmdk: Path
) -> None:
    """A tenant's own Pod, named and labelled as the worker of a job they then create, is
    neither followed (its /progress, its exit) nor taken for the job's attempt."""
    name = "squatted"
    taken = worker_pod.pod_name(name, 1)
    squatter = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": taken,
            "labels": {**worker_pod.WORKER_LABELS, worker_pod.JOB_LABEL: name},
        },
        "spec": {
            "nodeSelector": {"no-such-node": "true"},  # stays Pending: never runs at all
            "containers": [{"name": "worker", "image": cluster.image("pause")}],
        },
    }
    kubectl(cluster, "apply", "-n", TEAM_A, "-f", "-", stdin=yaml.safe_dump(squatter))
    submit(cluster, TEAM_A, inspect_job(cluster, name, {"hostPath": {"path": str(vmdk)}}))

    final = failed_with(cluster, TEAM_A, name, "NameTaken")

    assert f"Pod {taken} exists and is not this job's" in final["message"]
    kept = cluster.kube.get(f"/api/v1/namespaces/{TEAM_A}/pods/{taken}")
    assert kept["metadata"]["uid"] and not kept["metadata"].get("ownerReferences")


def test_pods_labelled_as_workers_take_no_slot_and_long_names_still_run(
    operator: OperatorProcess, cluster: Cluster, vmdk: Path
) -> None:
    """Fake workers on every node, labelled exactly as the operator labels its own, hold
    no slot; a job named far beyond 63 characters still gets valid children and runs."""
    for node in cluster.nodes:
        for number in range(4):
            fake = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"fake-{node}-{number}",
                    "labels": {**worker_pod.WORKER_LABELS, worker_pod.NODE_LABEL: node},
                },
                "spec": {
                    "nodeSelector": {"no-such-node": "true"},
                    "containers": [{"name": "worker", "image": cluster.image("pause")}],
                },
            }
            kubectl(cluster, "apply", "-n", TEAM_A, "-f", "-", stdin=yaml.safe_dump(fake))
    name = "a-migration-job-whose-name-goes-on-" + "and-on-" * 20 + "end"
    assert len(name) > 150
    submit(cluster, TEAM_A, inspect_job(cluster, name, {"hostPath": {"path": str(vmdk)}}))

    final = wait_phase(cluster, TEAM_A, name, TERMINAL, timeout=180)

    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert len(final["pod"]) <= 63 and final["pod"].endswith("-1")
    assert final["disks"][0]["inspection"]["virtual_size"] == 8 * MiB


def test_only_secrets_marked_for_migrations_reach_a_worker(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    """Any other Secret of the namespace (a database password) would go to a server of the
    job's choosing as basic auth: the job fails before a Pod mounts it."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "database"},
        "stringData": {"username": "app", "password": "s3cret-of-another-service"},
    }
    kubectl(cluster, "apply", "-n", TEAM_A, "-f", "-", stdin=yaml.safe_dump(secret))
    source = {"http": {"url": "http://192.0.2.1/vm.vmdk", "secretRef": {"name": "database"}}}
    submit(cluster, TEAM_A, inspect_job(cluster, "borrows-a-password", source))

    final = failed_with(cluster, TEAM_A, "borrows-a-password", "CredentialsRefused")

    assert "Secret database is not marked for migrations" in final["message"]
    assert "hyper2kvm.io/credentials=true" in final["message"]
    assert not [p for p in pods_of(cluster, TEAM_A) if "borrows" in p["metadata"]["name"]]
    assert "s3cret" not in json.dumps(final)


def test_a_pod_the_api_server_refuses_fails_the_job_with_its_words(
    operator: OperatorProcess, cluster: Cluster, vmdk: Path
) -> None:
    """Pod Security "restricted" forbids hostPath volumes: the job does not sit Scheduled
    forever, it fails with the admission's own message."""
    submit(cluster, RESTRICTED, inspect_job(cluster, "hostpath", {"hostPath": {"path": str(vmdk)}}))

    final = failed_with(cluster, RESTRICTED, "hostpath", "PodRefused")

    assert "violates PodSecurity" in final["message"] and "hostPath" in final["message"]


def test_a_full_quota_is_waited_out_and_the_job_then_runs(
    operator: OperatorProcess, cluster: Cluster, tmp_path: Path
) -> None:
    """A ResourceQuota that refuses the Pod for now is transient: the job retries, says why
    in its status and an Event, and runs once the quota has room."""
    quotas = f"/api/v1/namespaces/{TEAM_B}/resourcequotas"
    cluster.kube.create(quotas, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    wait_until(  # enforced only once the quota controller has counted the namespace
        lambda: cluster.kube.get(f"{quotas}/no-pods").get("status", {}).get("hard"),
        timeout=60,
        what="the quota counted",
    )
    disks = host_folder(tmp_path / "served", writable=False)
    for url, _ in served_disk(cluster, disks, 8 * MiB, 2 * MiB, 64 * MiB):
        submit(cluster, TEAM_B, inspect_job(cluster, "quota", {"http": {"url": url}}, retries=5))

        def refused() -> dict[str, Any] | None:
            state = job_status(cluster, TEAM_B, "quota")
            return state if "exceeded quota" in (state.get("message") or "") else None

        waiting = wait_until(refused, timeout=60, what="the job retrying for its quota")
        assert waiting["reason"] in ("Retrying", "PodRefused"), waiting
        assert [e for e in events_of(cluster, TEAM_B, "quota") if "exceeded quota" in e["message"]]
        cluster.kube.delete(f"{quotas}/no-pods")
        final = wait_phase(cluster, TEAM_B, "quota", TERMINAL, timeout=180)
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert final["attempt"] >= 2


def test_workers_meet_pod_security_restricted_and_never_reach_cluster_services(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    """An HTTP job runs in a "restricted" namespace (the worker Pod is admitted), and an
    address in the cluster's Service range, which the operator found itself, is refused
    by the worker before any request."""
    service_ip = SERVICE_CIDR.rsplit(".", 1)[0] + ".1"  # the kubernetes Service
    source = {"http": {"url": f"http://{service_ip}:443/api/vm.vmdk"}}
    submit(cluster, RESTRICTED, inspect_job(cluster, "internal", source))

    final = failed_with(cluster, RESTRICTED, "internal", "PolicyViolation", timeout=180)

    assert f"is {service_ip}, in {SERVICE_CIDR}, which this cluster denies" in final["message"]
    assert final.get("attempt") == 1  # a Pod was admitted and ran: no PodRefused


def test_one_namespace_runs_at_most_its_slots_and_others_are_not_held_up(
    operator: OperatorProcess, cluster: Cluster, tmp_path: Path
) -> None:
    disks = host_folder(tmp_path / "served", writable=False)
    for url, _ in served_disk(cluster, disks, 16 * MiB, 8 * MiB, 2 * MiB):
        for name in ("first", "second"):
            submit(cluster, TEAM_A, inspect_job(cluster, name, {"http": {"url": url}}))
        wait_phase(cluster, TEAM_A, "first", ("Scheduled", "Running", "Verifying"))

        def waiting() -> dict[str, Any] | None:
            state = job_status(cluster, TEAM_A, "second")
            return state if "policy.namespaceSlots" in (state.get("message") or "") else None

        second = wait_until(waiting, timeout=60, what="the second job waiting for its team")
        assert second["phase"] == "Queued"
        assert f"namespace {TEAM_A} has 1 jobs running, its limit" in second["message"]
        first = wait_phase(cluster, TEAM_A, "first", TERMINAL, timeout=180)
        second = wait_phase(cluster, TEAM_A, "second", TERMINAL, timeout=180)
    assert (first["phase"], second["phase"]) == ("Succeeded", "Succeeded"), operator.log_tail()
    ended = first["history"][-1]["time"]
    started = next(h["time"] for h in second["history"] if h["phase"] == "Scheduled")
    assert started >= ended


def test_the_workers_network_policy_allows_only_dns_and_source_networks(
    operator: OperatorProcess, cluster: Cluster, vmdk: Path
) -> None:
    """Made in every namespace with jobs before its first worker Pod; the cluster's own
    ranges (its Service range and every node's Pod range) are excepted from egress."""
    submit(cluster, TEAM_A, inspect_job(cluster, "guarded", {"hostPath": {"path": str(vmdk)}}))
    assert wait_phase(cluster, TEAM_A, "guarded", TERMINAL, timeout=180)["phase"] == "Succeeded"

    def made() -> dict[str, Any] | None:
        path = f"/apis/networking.k8s.io/v1/namespaces/{TEAM_A}/networkpolicies"
        return cluster.kube.get_or_none(f"{path}/{network_policy.NAME}")

    policy = wait_until(made, timeout=60, what="the workers' NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": worker_pod.WORKER_LABELS}
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert ingress["from"][0]["podSelector"] == {"matchLabels": OPERATOR_LABELS}
    dns, sources = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    excepted = {n for block in sources["to"] for n in block["ipBlock"].get("except", [])}
    pod_ranges = {
        cidr
        for node in cluster.nodes
        for cidr in cluster.kube.get(f"/api/v1/nodes/{node}")["spec"]["podCIDRs"]
    }
    assert {SERVICE_CIDR, "169.254.0.0/16", "127.0.0.0/8", *pod_ranges} <= excepted
