"""The operator under load: 200 inspect jobs at once on 4 nodes of 5 slots each.

Against the local test cluster with real nodes (`hack/cluster.sh`): worker Pods run the
worker image in containers. Prints
scheduling latency (from the moment a job could run to its worker Pod, p50/p99), progress-
to-status latency (the operator's histogram), API writes per job (counted by the API
server), the operator's peak RSS, and the wall time against the floor: the same 200 worker
runs as local processes with the same parallelism, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NODES, SLOTS = 4, 5
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}


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


def manifests(count: int, disk: Path) -> str:
    docs = [
        {
            "apiVersion": "hyper2kvm.io/v1alpha1",
            "kind": "MigrationJob",
            "metadata": {"name": f"load-{i:03d}", "namespace": "default"},
            "spec": {
                "operation": "inspect",
                "disks": [{"name": "disk0", "source": {"hostPath": {"path": str(disk)}}}],
            },
        }
        for i in range(count)
    ]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        print("kubectl is missing", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="hyper2kvm-opbench-"))
    work.chmod(0o755)  # the disk is read through hostPath by the worker image's user
    state = work / "cluster"
    env = {**os.environ, "HYPER2KVM_CLUSTER_NODES": str(NODES)}
    disk = work / "small.vmdk"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            str(disk),
            "64M",
        ],
        check=True,
    )
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
        nodes = kubectl(env, "get", "nodes", "-o", "name").split()
        for node in nodes:
            kubectl(env, "label", "--overwrite", node, f"hyper2kvm.io/slots={SLOTS}")
        kubectl(env, "apply", "-f", str(REPO / "crds"))
        kubectl(env, "wait", "--for=condition=Established", "crd/migrationjobs.hyper2kvm.io")
        kubectl(
            env,
            "apply",
            "-f",
            "-",
            stdin=json.dumps(
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": "hyper2kvm"},
                }
            ),
        )
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
        }
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [str(BIN / "hyper2kvm-operator"), "--liveness", ""],
            env=operator_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(3)
        writes_before = operator_writes(env)

        start, busy_before = time.time(), busy_cpu_seconds()
        kubectl(env, "apply", "-f", "-", stdin=manifests(args.jobs, disk))
        jobs: list[dict[str, Any]] = []
        while True:
            listing = json.loads(kubectl(env, "get", "mj", "-n", "default", "-o", "json"))
            jobs = listing["items"]
            done = [
                j for j in jobs if (j.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            ]
            if len(done) == args.jobs:
                break
            time.sleep(0.5)
        wall, busy = time.time() - start, busy_cpu_seconds() - busy_before
        operator_cpu = sum(psutil.Process(operator.pid).cpu_times()[:2])
        with (Path("/proc") / str(operator.pid) / "status").open() as status_file:
            peak = next(line for line in status_file if line.startswith("VmHWM"))
        peak_rss = int(peak.split()[1]) * 1024
        failed = [j["metadata"]["name"] for j in jobs if j["status"]["phase"] != "Succeeded"]
        writes = operator_writes(env) - writes_before - args.jobs  # minus the bench's own creates
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            metrics_text = response.read().decode()
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        subprocess.run(
            [str(REPO / "hack/cluster.sh"), "down", str(state)],
            env=env,
            capture_output=True,
            check=False,
        )

    # A job could run once it was queued and, with every slot busy, once enough earlier jobs
    # had finished to free a slot for it: queue order is creation order here (equal priority).
    capacity = NODES * SLOTS
    ordered = sorted(jobs, key=lambda j: (j["status"]["queuedTime"], j["metadata"]["name"]))
    finished = sorted(seconds(j["status"]["completionTime"]) for j in jobs)
    latencies = []
    for index, job in enumerate(ordered):
        history = {h["phase"]: seconds(h["time"]) for h in job["status"]["history"]}
        could_run = seconds(job["status"]["queuedTime"])
        if index >= capacity:
            could_run = max(could_run, finished[index - capacity])
        latencies.append(max(0.0, history["Scheduled"] - could_run))
    floor_busy_before = busy_cpu_seconds()
    floor = floor_seconds(args.jobs, disk)
    floor_busy = busy_cpu_seconds() - floor_busy_before
    shutil.rmtree(work, ignore_errors=True)

    print(f"{args.jobs} inspect jobs on {NODES} nodes x {SLOTS} slots; {len(failed)} failed")
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"scheduling latency   p50 {p50:.2f} s   p99 {p99:.2f} s")
    lag50 = histogram_quantile(metrics_text, "hyper2kvm_progress_to_status_seconds", 0.5)
    lag99 = histogram_quantile(metrics_text, "hyper2kvm_progress_to_status_seconds", 0.99)
    print(f"progress to status   p50 {lag50 or 0:.3f} s   p99 {lag99 or 0:.3f} s (histogram)")
    print(f"API writes per job   {writes / args.jobs:.1f}")
    print(f"operator peak RSS    {peak_rss / (1 << 20):.0f} MiB")
    print(f"wall time            {wall:.1f} s; floor {floor:.1f} s; ratio {wall / floor:.2f}")
    # On a machine the workers already saturate, the control plane's CPU is wall time.
    print(
        f"CPU busy, all cores  {busy:.1f} s (operator {operator_cpu:.1f} s); "
        f"floor {floor_busy:.1f} s; {psutil.cpu_count()} cores"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
