"""The operator under load, against the local test cluster (`hack/cluster.sh`). Three cases:

real      200 inspect jobs at once on 4 real nodes of 5 slots each: worker Pods run the
          worker image in containers. Prints scheduling latency (from the moment a job
          could run to its worker Pod, p50/p99), progress-to-status latency (the operator's
          histogram), API writes per job (counted by the API server), the operator's peak
          RSS, and the wall time against the floor: the same runs as local processes with
          the same parallelism, measured in the same run.
queued    20,000 jobs queued with every slot busy: the operator's CPU (share of one core,
          over a steady minute) and RSS against the chart's memory limit.
latency   2,000 jobs on 20 nodes of 5 slots: scheduling latency p50/p99, API writes per
          job, and the wall time against the floor, (jobs / slots) x the run time of one job.

The queued and latency cases need more nodes than this machine can run, so the bench plays
them itself (`FakeKubelet`, here only): it registers Node objects through the API, keeps
them Ready (their Leases renewed), and for each Pod bound to one of them, after a fixed
time, reports the Pod Succeeded with the termination message a worker writes
(`hyper2kvm_worker.protocol.Result`). The cluster's one real node is then no worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from hyper2kvm_worker.protocol import DiskResult, JobState, Result, encode_result

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NODES, SLOTS = 4, 5  # the real case
FAKE_NODES, FAKE_SLOTS = 20, 5  # the queued and latency cases
NAMESPACE = "default"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}
TERMINAL = ("Succeeded", "Failed", "Cancelled")
SCRAPE_SECONDS = 30.0  # the queued case's metrics scrapes, at a Prometheus's usual interval


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def operator_writes(env: dict[str, str]) -> float:
    """Writes only the operator makes: MigrationJob patches and status, its ConfigMaps and Pods."""
    total = 0.0
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
    for line in kubectl(env, "get", "--raw", "/metrics").splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
        if labels.get("verb") not in WRITE_VERBS:
            continue
        resource, sub = labels.get("resource"), labels.get("subresource", "")
        if resource == "migrationjobs" or (
            resource in ("configmaps", "pods") and sub == "" and labels["verb"] == "POST"
        ):
            total += float(match[2])
    return total


def status_writes(env: dict[str, str]) -> float:
    """Writes of MigrationJob status (the operator's only writer of it)."""
    total = 0.0
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
    for line in kubectl(env, "get", "--raw", "/metrics").splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            if labels.get("resource") == "migrationjobs" and labels.get("subresource") == "status":
                total += float(match[2]) if labels.get("verb") in WRITE_VERBS else 0.0
    return total


def histogram_quantile(text: str, name: str, quantile: float) -> float | None:
    buckets = []
    for line in text.splitlines():
        match = re.match(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', line)
        if match:
            buckets.append(
                (float("inf") if match[1] == "+Inf" else float(match[1]), float(match[2]))
            )
    if not buckets or buckets[-1][1] == 0:
        return None
    target = quantile * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return previous_bound
            share = (
                (target - previous_count) / (count - previous_count)
                if count > previous_count
                else 0
            )
            return previous_bound + share * (bound - previous_bound)
        previous_bound, previous_count = bound, count
    return None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def job_manifest(index: int, disk: Path) -> dict[str, Any]:
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": f"load-{index:05d}", "namespace": NAMESPACE},
        "spec": {
            "operation": "inspect",
            "disks": [{"name": "disk0", "source": {"hostPath": {"path": str(disk)}}}],
        },
    }


def manifests(count: int, disk: Path) -> str:
    docs = [job_manifest(i, disk) for i in range(count)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent not idle, in seconds (all cores)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def floor_seconds(count: int, disk: Path) -> float:
    worker = str(BIN / "hyper2kvm-worker")

    def one(_: int) -> None:
        subprocess.run([worker, "inspect", "--json", str(disk)], check=True, capture_output=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=NODES * SLOTS) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- fake nodes


class FakeKubelet:
    """The bench's stand-in for nodes that cannot run here: Node objects kept Ready, and a
    Pod bound to one of them reported Succeeded `run_seconds` after it was bound, with a
    worker's termination message (None: never ends)."""

    def __init__(self, api: k8s.ApiClient, names: list[str], run_seconds: float | None) -> None:
        self.core = k8s.CoreV1Api(api)
        self.leases = k8s.CoordinationV1Api(api)
        self.names = set(names)
        self.run_seconds = run_seconds
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def register(self, slots: int) -> None:
        for name in sorted(self.names):
            labels = {
                "kubernetes.io/hostname": name,
                "hyper2kvm.io/worker": "true",
                "hyper2kvm.io/slots": str(slots),
            }
            meta = k8s.V1ObjectMeta(name=name, labels=labels)
            self.core.create_node(k8s.V1Node(metadata=meta))
            lease = k8s.V1LeaseSpec(holder_identity=name)
            self.leases.create_namespaced_lease(
                "kube-node-lease", k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=lease)
            )
        self._heartbeat()

    def _heartbeat(self) -> None:
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        resources = {"cpu": "64", "memory": "256Gi", "ephemeral-storage": "1Ti", "pods": "110"}
        status = {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": now[:19] + "Z",
                        "lastTransitionTime": now[:19] + "Z",
                    }
                ],
            }
        }
        for name in self.names:
            self.core.patch_node_status(name, status)
            self.leases.patch_namespaced_lease(
                name, "kube-node-lease", {"spec": {"renewTime": now}}
            )

    def start(self) -> None:
        for target in (self._keep_ready, self._run_pods):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _keep_ready(self) -> None:
        while not self.stop.wait(8):
            self._heartbeat()

    def _run_pods(self) -> None:
        """Watch worker Pods; end each one bound to a fake node once its time is up. Pods
        end at once, as each node's own kubelet would end its own, not one after another."""
        bound: dict[tuple[str, str], tuple[float, Any]] = {}
        ended: set[tuple[str, str]] = set()
        lock = threading.Lock()
        kubelets = ThreadPoolExecutor(max_workers=len(self.names))

        def end(key: tuple[str, str], pod: Any) -> None:
            try:
                self._succeed(pod)
            except (k8s.ApiException, urllib3.exceptions.HTTPError) as error:  # busy: again soon
                print(f"ending {key}: {error}; again in 1 s", file=sys.stderr)
                with lock:
                    ended.discard(key)
                    bound[key] = (time.monotonic() + 1, pod)

        def ender() -> None:
            while not self.stop.wait(0.1):
                now = time.monotonic()
                with lock:
                    due = [(key, pod) for key, (at, pod) in bound.items() if now >= at]
                    for key, _ in due:
                        del bound[key]
                        ended.add(key)
                for key, pod in due:
                    kubelets.submit(end, key, pod)

        if self.run_seconds is not None:
            threading.Thread(target=ender, daemon=True).start()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # the cluster going away at the end
                self._watch_pods(bound, lock, ended)

    def _watch_pods(
        self,
        bound: dict[tuple[str, str], tuple[float, Any]],
        lock: threading.Lock,
        ended: set[tuple[str, str]],
    ) -> None:
        """Note when each worker Pod is bound to one of the bench's nodes."""
        stream = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
            self.core.list_pod_for_all_namespaces,
            label_selector="app.kubernetes.io/managed-by=hyper2kvm-operator",
            timeout_seconds=60,
        )
        for event in stream:
            pod: Any = event["object"]
            key = (pod.metadata.namespace, pod.metadata.name)
            mine = pod.spec.node_name in self.names and pod.status.phase == "Pending"
            if mine and key not in ended and self.run_seconds is not None:
                with lock:
                    bound.setdefault(key, (time.monotonic() + self.run_seconds, pod))

    def _succeed(self, pod: Any) -> None:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        job = f"{namespace}/{pod.metadata.owner_references[0].name}"
        result = Result(job=job, state=JobState.SUCCEEDED, disks=[DiskResult(name="disk0")])
        container = pod.spec.containers[0]
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        terminated = {
            "exitCode": 0,
            "reason": "Completed",
            "message": encode_result(result),
            "startedAt": now,
            "finishedAt": now,
        }
        status = {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        }
        self.core.patch_namespaced_pod_status(name, namespace, status)


# ---------------------------------------------------------------------------- the cluster


@dataclass
class Bench:
    work: Path
    env: dict[str, str]
    api: k8s.ApiClient
    operator: subprocess.Popen[bytes]
    metrics_port: int


@contextmanager
def cluster_and_operator(
    work: Path, nodes: int, workers: bool, keep_work: bool = False
) -> Iterator[Bench]:
    """The local cluster with `nodes` real nodes (workers or not) and the operator, in
    `work` (removed at the end unless kept)."""
    state = work / "cluster"
    env = {**os.environ, "HYPER2KVM_CLUSTER_NODES": str(nodes)}
    kubeconfig = subprocess.run(
        [str(REPO / "hack/cluster.sh"), "up", str(state)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env["KUBECONFIG"] = kubeconfig
    operator = None
    try:
        for node in kubectl(env, "get", "nodes", "-o", "name").split():
            if workers:
                kubectl(env, "label", "--overwrite", node, f"hyper2kvm.io/slots={SLOTS}")
            else:
                kubectl(env, "label", "--overwrite", node, "hyper2kvm.io/worker=false")
        kubectl(env, "apply", "-f", str(REPO / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "crd/migrationjobs.hyper2kvm.io")
        peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                   "metadata": {"name": "hyper2kvm"}}  # fmt: skip
        kubectl(env, "apply", "-f", "-", stdin=json.dumps(peering))
        metrics_port = free_port()
        images = Path(
            subprocess.run(
                [str(REPO / "hack/images.sh"), "--print-dir"], check=True, capture_output=True,
                text=True,
            ).stdout.strip()
        )  # fmt: skip
        operator_env = {
            **env,
            "HYPER2KVM_WORKER_IMAGE": (images / "worker.ref").read_text().strip(),
            "HYPER2KVM_WORKER_PULL_POLICY": "Never",
            "HYPER2KVM_METRICS_PORT": str(metrics_port),
            # The jobs read their disk from a host folder; the default policy allows none.
            "HYPER2KVM_POLICY": json.dumps({"hostPaths": [{"prefix": str(work)}]}),
        }
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [str(BIN / "hyper2kvm-operator"), "--liveness", ""],
            env=operator_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
        api.configuration.connection_pool_maxsize = 32
        time.sleep(3)
        yield Bench(work, env, api, operator, metrics_port)
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(60)
            except subprocess.TimeoutExpired:
                operator.kill()
        subprocess.run(
            [str(REPO / "hack/cluster.sh"), "down", str(state)],
            env=env,
            capture_output=True,
            check=False,
        )
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def create_jobs(api: k8s.ApiClient, indices: range, disk: Path) -> None:
    """Many MigrationJobs fast: one create each, 16 at a time."""
    custom = k8s.CustomObjectsApi(api)

    def one(index: int) -> None:
        custom.create_namespaced_custom_object(
            "hyper2kvm.io", "v1alpha1", NAMESPACE, "migrationjobs", job_manifest(index, disk)
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, indices))


def list_jobs(api: k8s.ApiClient) -> list[dict[str, Any]]:
    custom = k8s.CustomObjectsApi(api)
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page: Any = custom.list_namespaced_custom_object(
            "hyper2kvm.io", "v1alpha1", NAMESPACE, "migrationjobs", limit=2000, _continue=token
        )
        items.extend(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return items


def every_job_ended(api: k8s.ApiClient, jobs: int, interval: float) -> list[dict[str, Any]]:
    """Wait until all `jobs` MigrationJobs have ended; they are returned as last listed."""
    found: list[dict[str, Any]] = []

    def all_ended() -> bool:
        found[:] = list_jobs(api)
        ended = [j for j in found if (j.get("status") or {}).get("phase") in TERMINAL]
        return len(ended) == jobs

    wait_for("every job to end", all_ended, timeout=3600, interval=interval)
    return found


def scrape(bench: Bench) -> str:
    for _ in range(5):
        try:
            url = f"http://127.0.0.1:{bench.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=30) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(1)
    raise RuntimeError("the operator's metrics cannot be read")


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def chart_memory_limit() -> int:
    values = yaml.safe_load((REPO / "charts/hyper2kvm/values.yaml").read_text())
    limit = str(values["operator"]["resources"]["limits"]["memory"])
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(limit[:-2]) * units[limit[-2:]] if limit[-2:] in units else int(limit)


def fake_disk(work: Path) -> Path:
    disk = work / "never-read.vmdk"  # the bench's nodes run no worker: nothing reads it
    disk.write_bytes(b"")
    return disk


# ---------------------------------------------------------------------------- cases


def real_case(jobs: int) -> int:
    """Inspect jobs on real nodes, against the same runs as local processes."""
    work = Path(tempfile.mkdtemp(prefix="hyper2kvm-opbench-"))
    work.chmod(0o755)  # the disk is read through hostPath by the worker image's user
    disk = work / "small.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized",
         str(disk), "64M"],
        check=True,
    )  # fmt: skip
    with cluster_and_operator(work, nodes=NODES, workers=True, keep_work=True) as bench:
        writes_before = operator_writes(bench.env)
        start, busy_before = time.time(), busy_cpu_seconds()
        kubectl(bench.env, "apply", "-f", "-", stdin=manifests(jobs, disk))
        found = every_job_ended(bench.api, jobs, interval=0.5)
        wall, busy = time.time() - start, busy_cpu_seconds() - busy_before
        operator_cpu = sum(psutil.Process(bench.operator.pid).cpu_times()[:2])
        with (Path("/proc") / str(bench.operator.pid) / "status").open() as status_file:
            peak = next(line for line in status_file if line.startswith("VmHWM"))
        peak_rss = int(peak.split()[1]) * 1024
        failed = [j["metadata"]["name"] for j in found if j["status"]["phase"] != "Succeeded"]
        writes = operator_writes(bench.env) - writes_before - jobs  # minus the bench's creates
        metrics_text = scrape(bench)

    latencies = scheduling_latencies(found, NODES * SLOTS)
    floor_busy_before = busy_cpu_seconds()
    floor = floor_seconds(jobs, disk)
    floor_busy = busy_cpu_seconds() - floor_busy_before
    shutil.rmtree(work, ignore_errors=True)

    print(f"{jobs} inspect jobs on {NODES} nodes x {SLOTS} slots; {len(failed)} failed")
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"scheduling latency   p50 {p50:.2f} s   p99 {p99:.2f} s")
    lag50 = histogram_quantile(metrics_text, "hyper2kvm_progress_to_status_seconds", 0.5)
    lag99 = histogram_quantile(metrics_text, "hyper2kvm_progress_to_status_seconds", 0.99)
    print(f"progress to status   p50 {lag50 or 0:.3f} s   p99 {lag99 or 0:.3f} s (histogram)")
    print(f"API writes per job   {writes / jobs:.1f}")
    print(f"operator peak RSS    {peak_rss / (1 << 20):.0f} MiB")
    print(f"wall time            {wall:.1f} s; floor {floor:.1f} s; ratio {wall / floor:.2f}")
    # On a machine the workers already saturate, the control plane's CPU is wall time.
    print(
        f"CPU busy, all cores  {busy:.1f} s (operator {operator_cpu:.1f} s); "
        f"floor {floor_busy:.1f} s; {psutil.cpu_count()} cores"
    )
    return 1 if failed else 0


@contextmanager
def bench_nodes(run_seconds: float | None) -> Iterator[tuple[Bench, Path]]:
    """The cluster and the operator, with the bench's nodes (`FakeKubelet`) as its only
    workers, and a disk file for the jobs to name."""
    work = Path(tempfile.mkdtemp(prefix="hyper2kvm-opbench-"))
    with cluster_and_operator(work, nodes=1, workers=False) as bench:
        names = [f"bench-node-{i:02d}" for i in range(FAKE_NODES)]
        kubelet = FakeKubelet(bench.api, names, run_seconds)
        kubelet.register(FAKE_SLOTS)
        kubelet.start()
        try:
            yield bench, fake_disk(bench.work)
        finally:
            kubelet.stop.set()


def queued_case(jobs: int, window: float) -> int:
    """`jobs` MigrationJobs, every slot busy with a job that never ends: what the operator
    costs while nothing can change but the clock."""
    busy = FAKE_NODES * FAKE_SLOTS
    with bench_nodes(run_seconds=None) as (bench, disk):
        start = time.time()
        create_jobs(bench.api, range(jobs), disk)
        created = time.time() - start
        last = [-1.0]

        def settled() -> bool:
            """Every job admitted, `busy` of them placed, and no write for 15 s."""
            text = scrape(bench)
            writes = metric(text, "hyper2kvm_api_writes_total")
            quiet = writes == last[0]
            last[0] = writes
            return quiet and metric(text, "hyper2kvm_queue_depth") == jobs - busy

        wait_for("the operator to settle", settled, timeout=3600, interval=15)
        ready = time.time() - start
        process = psutil.Process(bench.operator.pid)
        writes_before = metric(scrape(bench), "hyper2kvm_api_writes_total")
        cpu_before, clock = sum(process.cpu_times()[:2]), time.monotonic()
        scrapes = 0
        while time.monotonic() - clock < window:  # scraped as a Prometheus would, every 30 s
            scrape(bench)
            scrapes += 1
            time.sleep(min(SCRAPE_SECONDS, max(0.0, window - (time.monotonic() - clock))))
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        elapsed = time.monotonic() - clock
        writes = metric(scrape(bench), "hyper2kvm_api_writes_total") - writes_before
        rss = process.memory_info().rss
        with (Path("/proc") / str(bench.operator.pid) / "status").open() as status_file:
            peak = int(next(ln for ln in status_file if ln.startswith("VmHWM")).split()[1]) * 1024
        states = [j.get("status") or {} for j in list_jobs(bench.api)]
    phases: dict[str, int] = {}
    for state in states:
        label = f"{state.get('phase')}/{state.get('reason')}"
        phases[label] = phases.get(label, 0) + 1
    limit = chart_memory_limit()
    print(f"{jobs} jobs, {busy} slots on {FAKE_NODES} bench nodes, all busy: {phases}")
    print(f"created in {created:.0f} s; admitted, placed and told why they wait in {ready:.0f} s")
    print(f"operator CPU         {100 * cpu / elapsed:.1f}% of one core over {elapsed:.0f} s "
          f"({writes:.0f} API writes meanwhile; {scrapes} metrics scrapes)")  # fmt: skip
    print(f"operator RSS         {rss / (1 << 20):.0f} MiB (peak {peak / (1 << 20):.0f} MiB); "
          f"chart limit {limit / (1 << 20):.0f} MiB")  # fmt: skip
    return 0


def latency_case(jobs: int, run_seconds: float) -> int:
    """`jobs` MigrationJobs at once on the bench's nodes, each run taking `run_seconds`."""
    slots = FAKE_NODES * FAKE_SLOTS
    with bench_nodes(run_seconds) as (bench, disk):
        writes_before = operator_writes(bench.env)
        status_before = status_writes(bench.env)
        start = time.time()
        create_jobs(bench.api, range(jobs), disk)
        found = every_job_ended(bench.api, jobs, interval=1.0)
        wall = time.time() - start
        writes = operator_writes(bench.env) - writes_before - jobs  # minus the bench's creates
        statuses = status_writes(bench.env) - status_before
        operator_cpu = sum(psutil.Process(bench.operator.pid).cpu_times()[:2])
    failed = [j for j in found if j["status"]["phase"] != "Succeeded"]
    for job in failed[:3]:
        print(f"{job['metadata']['name']}: {job['status'].get('reason')}: "
              f"{job['status'].get('message')}")  # fmt: skip
    latencies = scheduling_latencies([j for j in found if j not in failed], slots)
    floor = -(-jobs // slots) * run_seconds
    print(f"{jobs} jobs of {run_seconds:.0f} s on {FAKE_NODES} bench nodes x {FAKE_SLOTS} slots; "
          f"{len(failed)} failed")  # fmt: skip
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"scheduling latency   p50 {p50:.2f} s   p99 {p99:.2f} s")
    rounds = [latencies[start : start + slots] for start in range(0, len(latencies), slots)]
    worst = [f"{max(batch):.2f}" for batch in rounds]
    print(f"  slowest start in each round of {slots} (queue order): {' '.join(worst)} s")
    print(f"API writes per job   {writes / jobs:.1f} (status writes {statuses / jobs:.1f})")
    print(f"wall time            {wall:.1f} s; floor {floor:.1f} s; ratio {wall / floor:.2f}")
    print(f"operator CPU         {operator_cpu:.1f} s")
    return 1 if failed else 0


def scheduling_latencies(jobs: list[dict[str, Any]], capacity: int) -> list[float]:
    """A job could run once it was queued and, with every slot busy, once enough earlier jobs
    had finished to free a slot for it: queue order is creation order here (equal priority)."""
    ordered = sorted(jobs, key=lambda j: (j["status"]["queuedTime"], j["metadata"]["name"]))
    finished = sorted(seconds(j["status"]["completionTime"]) for j in jobs)
    latencies = []
    for index, job in enumerate(ordered):
        history = {h["phase"]: seconds(h["time"]) for h in job["status"]["history"]}
        could_run = seconds(job["status"]["queuedTime"])
        if index >= capacity:
            could_run = max(could_run, finished[index - capacity])
        latencies.append(max(0.0, history["Scheduled"] - could_run))
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("real", "queued", "latency"), default="real")
    parser.add_argument("--jobs", type=int, help="default: 200, 20000 or 2000 by case")
    parser.add_argument("--window", type=float, default=60.0, help="queued: seconds measured")
    parser.add_argument("--run-seconds", type=float, default=10.0, help="latency: one job's run")
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        print("kubectl is missing", file=sys.stderr)
        return 1
    if args.case == "queued":
        return queued_case(args.jobs or 20_000, args.window)
    if args.case == "latency":
        return latency_case(args.jobs or 2_000, args.run_seconds)
    return real_case(args.jobs or 200)


if __name__ == "__main__":
    sys.exit(main())
