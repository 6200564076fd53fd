"""The operator end to end on the real cluster: worker Pods run the worker image on real nodes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster, host_folder
from tests.cluster.harness.processes import wait_until
from tests.cluster.operator_process import OperatorProcess
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_raw, raw_digest, same_content, to_vmdk

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    done = cluster.kubectl(*args, stdin=stdin, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def running_operator(
    cluster: Cluster, log: Path, settings: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """The CRDs and the peering in place, and the operator running with `settings`."""
    kubectl(cluster, "apply", "-f", str(REPO / "crds"))
    kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/migrationjobs.hyper2kvm.io",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "hyper2kvm"},
            }
        ),
    )
    process = OperatorProcess(cluster.kubeconfig, log, cluster.image("worker"), settings=settings)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator") / "log") as process:
        yield process


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    """Source disks, read by the worker's user through hostPath volumes."""
    return host_folder(tmp_path / "disks", writable=False)


def migration(
    name: str, cluster: Cluster, disks: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name},
        "spec": {
            "operation": "convert",
            "disks": disks,
            "placement": {"nodeSelector": cluster.selector},
            **spec,
        },
    }


def convert_disk(source: dict[str, Any], out: Path, name: str = "disk0") -> dict[str, Any]:
    """A disk converted into the host folder `out`, which the worker's user may write."""
    host_folder(out, writable=True)
    return {
        "name": name,
        "source": source,
        "output": {"hostPath": {"path": str(out)}, "path": f"{name}.qcow2"},
    }


def submit(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))


def job_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.kube.get(
        f"/apis/hyper2kvm.io/v1alpha1/namespaces/{namespace}/migrationjobs/{name}"
    )
    return dict(body.get("status") or {})


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 120
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        state = job_status(cluster, namespace, name)
        return state if state.get("phase") in phases else None

    return wait_until(reached, timeout=timeout, what=f"{name} in {phases}")


def worker_pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    pods = cluster.kube.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"hyper2kvm.io/job={job}"
    )
    return list(pods["items"])


def served_disk(
    cluster: Cluster, disks: Path, size: int, data: int, rate: int
) -> Iterator[tuple[str, Path]]:
    raw = make_raw(disks / "served.raw", size, [(0, data // 2), (size // 2, data // 2)])
    www = disks / "www"
    www.mkdir()
    to_vmdk(raw, www / "served.vmdk", "monolithicSparse")
    # One budget shared by all readers; on the host's cluster address, so Pods reach it.
    with serve(www, bytes_per_second=rate, host=cluster.host_address) as url:
        yield f"{url}/served.vmdk", raw


def start_and_wait_running(
    cluster: Cluster, namespace: str, name: str, url: str, out: Path
) -> None:
    submit(
        cluster, namespace, migration(name, cluster, [convert_disk({"http": {"url": url}}, out)])
    )
    wait_phase(cluster, namespace, name, ("Running", "Verifying"))


@pytest.fixture
def slow_source(cluster: Cluster, disks: Path) -> Iterator[tuple[str, Path]]:
    """Conversion and verification read 40 MiB at 4 MiB/s: about ten seconds of work."""
    yield from served_disk(cluster, disks, 24 * MiB, 16 * MiB, 4 * MiB)


@pytest.fixture
def steady_source(cluster: Cluster, disks: Path) -> Iterator[tuple[str, Path]]:
    """A few seconds of work per job, for tests that run several."""
    yield from served_disk(cluster, disks, 8 * MiB, 4 * MiB, 8 * MiB)


def test_convert_job_goes_through_every_phase(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    cluster.require_local()
    url, raw = slow_source
    out = tmp_path / "out"
    submit(
        cluster, namespace, migration("web01", cluster, [convert_disk({"http": {"url": url}}, out)])
    )

    seen: list[str] = []

    def progressing() -> dict[str, Any] | None:
        state = job_status(cluster, namespace, "web01")
        if state.get("progress") not in (None, "0%", "100%"):
            seen.append(state["progress"])
        return state if state.get("phase") in TERMINAL else None

    final = wait_until(progressing, timeout=180, what="web01 to finish", interval=0.3)

    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert [h["phase"] for h in final["history"]] == [
        "Queued",
        "Scheduled",
        "Running",
        "Verifying",
        "Succeeded",
    ]
    assert seen, "no progress between 0% and 100% was ever visible"
    assert final["node"] in cluster.nodes and final["attempt"] == 1
    assert final["disks"][0]["digest"] == raw_digest(raw)
    assert final["disks"][0]["output"] == str(out / "disk0.qcow2")
    assert same_content(raw, out / "disk0.qcow2", "raw", "qcow2")
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    waited = subprocess.run(
        [
            "kubectl",
            "wait",
            "-n",
            namespace,
            "--for=condition=Succeeded",
            "mj/web01",
            "--timeout=5s",
        ],
        env=cluster.kubectl_env(),
        capture_output=True,
        check=False,
    )
    assert waited.returncode == 0
    pod = worker_pods(cluster, namespace, "web01")[0]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_inspect_job_stores_its_report(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path
) -> None:
    cluster.require_local()
    raw = make_raw(disks / "i.raw", 16 * MiB, [(0, MiB)])
    to_vmdk(raw, disks / "i.vmdk", "streamOptimized")
    body = migration(
        "look",
        cluster,
        [{"name": "disk0", "source": {"hostPath": {"path": str(disks / "i.vmdk")}}}],
        operation="inspect",
    )
    submit(cluster, namespace, body)

    final = wait_phase(cluster, namespace, "look", TERMINAL)

    assert final["phase"] == "Succeeded", operator.log_tail()
    report = final["disks"][0]["inspection"]
    assert report["subformat"] == "streamOptimized"
    assert report["virtual_size"] == 16 * MiB


def test_corrupt_source_fails_permanently_without_retry(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    cluster.require_local()
    bad = disks / "junk.vmdk"
    bad.write_bytes(b"not a disk" * 10000)
    submit(
        cluster,
        namespace,
        migration(
            "junk",
            cluster,
            [convert_disk({"hostPath": {"path": str(bad)}}, tmp_path / "out")],
            retries=3,
        ),
    )

    final = wait_phase(cluster, namespace, "junk", TERMINAL)

    assert (final["phase"], final["reason"], final["attempt"]) == ("Failed", "InvalidImage", 1)
    assert "not a VMDK" in final["message"]
    assert len(worker_pods(cluster, namespace, "junk")) == 1
    events = kubectl(cluster, "get", "events", "-n", namespace, "-o", "json")
    reasons = [
        e["reason"] for e in json.loads(events)["items"] if e["involvedObject"]["name"] == "junk"
    ]
    assert "InvalidImage" in reasons


def test_transient_failure_is_retried_and_succeeds(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    cluster.require_local()
    raw = make_raw(disks / "f.raw", 16 * MiB, [(0, MiB)])
    www = disks / "www"
    www.mkdir()
    to_vmdk(raw, www / "flaky.vmdk", "monolithicSparse")
    # The first request gets 503: a passing outage.
    with serve(www, fail_first=1, host=cluster.host_address) as url:
        submit(
            cluster,
            namespace,
            migration(
                "flaky",
                cluster,
                [convert_disk({"http": {"url": f"{url}/flaky.vmdk"}}, tmp_path / "o")],
            ),
        )
        final = wait_phase(cluster, namespace, "flaky", TERMINAL, timeout=180)

    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert final["attempt"] == 2
    phases = [h["phase"] for h in final["history"]]
    assert phases == ["Queued", "Scheduled", "Queued", "Scheduled", "Succeeded"] or phases[:3] == [
        "Queued",
        "Scheduled",
        "Queued",
    ]
    assert sorted(p["metadata"]["name"] for p in worker_pods(cluster, namespace, "flaky")) == [
        "flaky-1",
        "flaky-2",
    ]


def test_cancel_stops_the_pod_and_leaves_no_output(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    cluster.require_local()
    url, _ = slow_source
    out = tmp_path / "out"
    start_and_wait_running(cluster, namespace, "stopme", url, out)

    kubectl(
        cluster,
        "patch",
        "-n",
        namespace,
        "mj",
        "stopme",
        "--type=merge",
        "-p",
        '{"spec":{"cancel":true}}',
    )
    final = wait_phase(cluster, namespace, "stopme", TERMINAL)

    assert final["phase"] == "Cancelled"
    wait_until(lambda: not worker_pods(cluster, namespace, "stopme"), timeout=60, what="pod gone")
    assert not out.exists() or list(out.iterdir()) == []


def test_timeout_fails_the_job(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    cluster.require_local()
    raw = make_raw(disks / "t.raw", 64 * MiB, [(0, 48 * MiB)])
    www = disks / "www"
    www.mkdir()
    to_vmdk(raw, www / "crawl.vmdk", "monolithicSparse")
    with serve(www, bytes_per_second=256 * 1024, host=cluster.host_address) as url:  # minutes
        submit(
            cluster,
            namespace,
            migration(
                "crawl",
                cluster,
                [convert_disk({"http": {"url": f"{url}/crawl.vmdk"}}, tmp_path / "o")],
                timeoutSeconds=30,
            ),
        )
        final = wait_phase(cluster, namespace, "crawl", TERMINAL, timeout=120)

    assert (final["phase"], final["reason"]) == ("Failed", "TimedOut")
    wait_until(lambda: not worker_pods(cluster, namespace, "crawl"), timeout=60, what="pod gone")


def test_more_jobs_than_slots_wait_in_priority_order(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    cluster.require_local()
    url, _ = slow_source
    for node in cluster.nodes:
        kubectl(cluster, "label", "node", node, "hyper2kvm.io/slots=1", "--overwrite")
    try:
        names = [f"batch-{i}" for i in range(4)]
        for name in names:
            disk = convert_disk({"http": {"url": url}}, tmp_path / name)
            submit(cluster, namespace, migration(name, cluster, [disk]))

        def first_round() -> list[str] | None:
            states = {name: job_status(cluster, namespace, name) for name in names}
            running = [n for n, state in states.items() if state.get("phase") != "Queued"]
            return running if len(running) == 2 else None

        queued = sorted(set(names) - set(wait_until(first_round, timeout=60, what="2 starts")))
        urgent = convert_disk({"http": {"url": url}}, tmp_path / "urgent")
        submit(cluster, namespace, migration("urgent", cluster, [urgent], priority=100))
        peak: dict[str, int] = {}
        stop = threading.Event()

        def watch_load() -> None:
            while not stop.wait(0.2):
                running = [
                    p
                    for p in cluster.kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
                    if p["status"].get("phase") in ("Pending", "Running")
                ]
                for node in cluster.nodes:
                    count = sum(
                        1
                        for p in running
                        if p["metadata"]["labels"].get("hyper2kvm.io/node") == node
                    )
                    peak[node] = max(peak.get(node, 0), count)

        watcher = threading.Thread(target=watch_load, daemon=True)
        watcher.start()
        finals = {
            name: wait_phase(cluster, namespace, name, TERMINAL, timeout=300)
            for name in [*names, "urgent"]
        }
        stop.set()
        watcher.join()
    finally:
        for node in cluster.nodes:
            kubectl(cluster, "label", "node", node, "hyper2kvm.io/slots-")

    assert all(state["phase"] == "Succeeded" for state in finals.values()), finals
    assert max(peak.values()) == 1, peak
    started = {
        name: next(h["time"] for h in state["history"] if h["phase"] == "Scheduled")
        for name, state in finals.items()
    }
    # When the two slots free, "urgent" (the newest, but first by priority) takes one with
    # the older of the two batch jobs still queued; by age alone it would start last.
    assert started["urgent"] < max(started[name] for name in queued), (queued, started)


def test_operator_killed_mid_run_finishes_the_job_with_one_pod(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    cluster.require_local()
    url, raw = slow_source
    out = tmp_path / "out"
    start_and_wait_running(cluster, namespace, "survivor", url, out)

    operator.kill()
    operator.start()
    final = wait_phase(cluster, namespace, "survivor", TERMINAL, timeout=180)

    assert final["phase"] == "Succeeded", operator.log_tail()
    assert [p["metadata"]["name"] for p in worker_pods(cluster, namespace, "survivor")] == [
        "survivor-1"
    ]
    assert final["disks"][0]["digest"] == raw_digest(raw)


def test_deleting_a_job_removes_its_pod(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    cluster.require_local()
    url, _ = slow_source
    start_and_wait_running(cluster, namespace, "gone", url, tmp_path / "o")
    kubectl(cluster, "delete", "-n", namespace, "mj", "gone", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: not worker_pods(cluster, namespace, "gone"), timeout=60, what="pod collected"
    )


def test_metrics(operator: OperatorProcess, cluster: Cluster) -> None:
    def scrape() -> str | None:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        return text if 'hyper2kvm_jobs{phase="Succeeded"}' in text else None

    text = wait_until(scrape, timeout=30, what="operator metrics")
    assert "hyper2kvm_queue_depth" in text
    assert "hyper2kvm_scheduling_latency_seconds_bucket" in text
    writes = next(
        line for line in text.splitlines() if line.startswith("hyper2kvm_api_writes_total")
    )
    assert float(writes.split()[-1]) > 0
    # Every counted handler has its series from the start, so the first error is an increase.
    for handler in ("admit", "cancel", "place", "follow"):
        assert f'hyper2kvm_reconcile_errors_total{{handler="{handler}"}}' in text


def test_two_replicas_one_acts_and_the_other_takes_over(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    cluster.require_local()
    raw = make_raw(disks / "ha.raw", 8 * MiB, [(0, MiB)])
    to_vmdk(raw, disks / "ha.vmdk", "monolithicSparse")
    source = {"hostPath": {"path": str(disks / "ha.vmdk")}}
    standby = OperatorProcess(
        cluster.kubeconfig, tmp_path / "standby.log", cluster.image("worker"), priority=50
    ).start()
    try:
        wait_until(
            lambda: (
                "Pausing the watch-stream for migrationjobs"
                in standby.log.read_text("utf-8", "replace")
            ),
            timeout=60,
            what="the lower-priority replica to stand by",
        )
        submit(
            cluster, namespace, migration("ha1", cluster, [convert_disk(source, tmp_path / "a")])
        )
        assert wait_phase(cluster, namespace, "ha1", TERMINAL)["phase"] == "Succeeded"
        assert f"{namespace}/ha1 placed" not in standby.log.read_text(errors="replace")

        operator.kill()
        submit(
            cluster, namespace, migration("ha2", cluster, [convert_disk(source, tmp_path / "b")])
        )
        final = wait_phase(cluster, namespace, "ha2", TERMINAL, timeout=120)
        assert final["phase"] == "Succeeded", standby.log_tail()
        assert f"{namespace}/ha2 placed" in standby.log.read_text(errors="replace")
        assert len(worker_pods(cluster, namespace, "ha1")) == 1
    finally:
        standby.stop()
        if operator.process is None:
            operator.start()


def test_kubelet_restart_mid_run_keeps_the_worker_and_the_job(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    """containerd keeps the container while kubelet is down; kubelet takes it back."""
    local = cluster.require_local()
    url, raw = slow_source
    start_and_wait_running(cluster, namespace, "steady", url, tmp_path / "out")
    node = local.node(job_status(cluster, namespace, "steady")["node"])

    node.stop_kubelet()
    node.start_kubelet()
    final = wait_phase(cluster, namespace, "steady", TERMINAL, timeout=180)

    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert [p["metadata"]["name"] for p in worker_pods(cluster, namespace, "steady")] == [
        "steady-1"
    ]
    assert final["disks"][0]["digest"] == raw_digest(raw)


def test_worker_killed_at_its_memory_limit_fails_with_the_limit_named(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    cluster.require_local()
    raw = make_raw(disks / "m.raw", 16 * MiB, [(0, MiB)])
    to_vmdk(raw, disks / "m.vmdk", "monolithicSparse")
    disk = convert_disk({"hostPath": {"path": str(disks / "m.vmdk")}}, tmp_path / "out")
    # Less than the worker's interpreter needs to start: the kernel kills it at once.
    limits = {"requests": {"memory": "16Mi"}, "limits": {"memory": "16Mi"}}
    submit(cluster, namespace, migration("small", cluster, [disk], retries=3, resources=limits))

    final = wait_phase(cluster, namespace, "small", TERMINAL)

    assert (final["phase"], final["reason"], final["attempt"]) == ("Failed", "OOMKilled", 1)
    assert "memory limit of 16Mi" in final["message"]
    assert "resources.limits.memory" in final["message"]


def test_draining_the_node_moves_the_job_to_another(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    slow_source: tuple[str, Path],
    tmp_path: Path,
) -> None:
    """kubectl drain evicts the worker (SIGTERM: it stops cleanly); the next attempt runs on
    a node that takes work."""
    cluster.require_local()
    url, raw = slow_source
    start_and_wait_running(cluster, namespace, "moved", url, tmp_path / "out")
    drained = job_status(cluster, namespace, "moved")["node"]
    try:
        kubectl(cluster, "drain", drained, "--delete-emptydir-data", "--ignore-daemonsets",
                "--timeout=120s", timeout=180)  # fmt: skip
        final = wait_phase(cluster, namespace, "moved", TERMINAL, timeout=240)
    finally:
        kubectl(cluster, "uncordon", drained)

    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert final["attempt"] == 2 and final["node"] != drained
    assert final["disks"][0]["digest"] == raw_digest(raw)
    assert same_content(raw, tmp_path / "out" / "disk0.qcow2", "raw", "qcow2")


def test_a_host_folder_the_worker_may_not_write_fails_the_job_saying_so(
    operator: OperatorProcess, cluster: Cluster, namespace: str, disks: Path, tmp_path: Path
) -> None:
    """hostPath keeps the node's ownership (fsGroup does not apply): the worker's user is
    named, and nothing is retried."""
    cluster.require_local()
    raw = make_raw(disks / "w.raw", 8 * MiB, [(0, MiB)])
    to_vmdk(raw, disks / "w.vmdk", "monolithicSparse")
    disk = convert_disk({"hostPath": {"path": str(disks / "w.vmdk")}}, tmp_path / "out")
    os.chown(tmp_path / "out", 0, 0)  # as a folder made by root on the node is
    submit(cluster, namespace, migration("closed", cluster, [disk], retries=2))

    final = wait_phase(cluster, namespace, "closed", TERMINAL)

    assert (final["phase"], final["reason"], final["attempt"]) == ("Failed", "OutputNotWritable", 1)
    assert "not writable by uid 10001 gid 10001" in final["message"]
    assert list((tmp_path / "out").iterdir()) == []
