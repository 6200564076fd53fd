"""A test node agent: Nodes that exist, and Pods bound to them run as local processes.

It stands in for kubelet plus a container runtime and nothing else. The scheduler, the
controllers and the API server that decide where and whether a Pod runs are the real ones.

Per Pod: the first container's command + args run with the container's env (including
downward-API fields), in their own process group, under <state>/pods/<ns>_<name>_<uid>/.
The Pod gets its own loopback address 127.0.x.y as status.podIP. Volumes become host folders
(see volumes.py) and container paths are rewritten to them (see podspec.py). The process's
stdout and stderr go to <container>.log in the pod directory; the termination-message file is
<container>.termination-log there and its content ends up in the terminated container state.
Deleting a Pod sends SIGTERM to the group, then SIGKILL after the grace period, and the Pod
object is removed with grace 0 afterwards, as kubelet does.

The Nodes advertise 127.0.0.1 and the port of the agent's kubelet endpoint (kubelet_server.py),
so `kubectl logs` reaches those log files through the API server.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client as k8s_client
from tests.cluster.harness.kube import MERGE, Kube, KubeError, list_and_watch
from tests.cluster.harness.kubelet_server import ContainerLog, KubeletServer
from tests.cluster.harness.pod_process import PodProcess, now, now_micro
from tests.cluster.harness.provisioner import HostFolderProvisioner
from tests.cluster.harness.volumes import Volumes

Obj = dict[str, Any]
WORKER_LABEL = "hyper2kvm.io/worker"
LEASE_SECONDS = 40
_log = logging.getLogger("hyper2kvm.cluster.node_agent")


class NodeAgent:
    """Registers ``nodes`` and runs the Pods bound to them until stop()."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        state_dir: Path,
        *,
        nodes: tuple[str, ...] = ("hyper2kvm-node-1",),
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        default_storage_class: bool = True,
        remove_nodes_on_stop: bool = True,
        heartbeat_seconds: float = 10.0,
    ) -> None:
        self.kube = Kube(api_client)
        self.state_dir = state_dir.resolve()
        self.nodes = nodes
        self.labels = {WORKER_LABEL: "true", **(labels or {})}
        self.capacity = {"cpu": "4", "memory": "16Gi", "pods": "110", **(capacity or {})}
        self.default_storage_class = default_storage_class
        self.remove_nodes_on_stop = remove_nodes_on_stop
        self.heartbeat_seconds = heartbeat_seconds
        self.provisioner = HostFolderProvisioner(self.kube, self.state_dir / "pvc")
        self.volumes = Volumes(self.kube, self.state_dir / "pvc")
        self.kubelet = KubeletServer(
            self.container_log, self.state_dir / "kubelet", names=self.nodes
        )
        host = urllib.parse.urlsplit(api_client.configuration.host)
        self._api_env = {
            "KUBERNETES_SERVICE_HOST": host.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(host.port or 443),
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pods: dict[str, PodProcess] = {}
        self._ips: dict[str, str] = {}
        self._node_uids: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        # All processes are started from this one long-lived thread: their parent-death
        # signal follows the thread that forked them (see processes.spawn).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-agent-spawn")

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        version = self.kube.get("/version").get("gitVersion", "unknown")
        self.kubelet.start()
        try:
            for name in self.nodes:
                self._register(name, version)
                self._renew_lease(name)
        except BaseException:
            self.kubelet.stop()
            raise
        self.provisioner.ensure_storage_class(default=self.default_storage_class)
        loops = {
            "heartbeat": self._heartbeat_loop,
            "pods": lambda: list_and_watch(
                self.kube, "/api/v1/pods", self._on_pod, self._stop, on_error=self._warn
            ),
            "claims": lambda: list_and_watch(
                self.kube,
                "/api/v1/persistentvolumeclaims",
                self.provisioner.on_claim,
                self._stop,
                on_error=self._warn,
            ),
            "volumes": lambda: list_and_watch(
                self.kube,
                "/api/v1/persistentvolumes",
                self.provisioner.on_volume,
                self._stop,
                on_error=self._warn,
            ),
        }
        for name, loop in loops.items():
            thread = threading.Thread(target=loop, name=f"node-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            pod.shutdown(grace=5.0)
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()
        self.kubelet.stop()
        if self.remove_nodes_on_stop:
            for name in self.nodes:
                try:
                    self.kube.delete(f"/api/v1/nodes/{name}")
                except Exception as exc:  # noqa: BLE001 - the API may already be gone
                    _log.debug("removing node %s: %s", name, exc)
        self._spawner.shutdown(wait=True)

    def is_running(self, uid: str) -> bool:
        """Whether the process of the Pod with this uid is alive."""
        with self._lock:
            process = self._pods.get(uid)
        return process is not None and process.alive()

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.state_dir / "pods" / f"{namespace}_{name}_{uid[:8]}"

    def container_log(self, namespace: str, name: str) -> ContainerLog | None:
        """The log of the Pod ``namespace/name`` this agent runs (the kubelet endpoint's view).

        Of two Pods with that name (one being deleted, its successor), the live one wins,
        else the newer.
        """
        with self._lock:
            found = [p for p in self._pods.values() if (p.namespace, p.name) == (namespace, name)]
        if not found:
            return None
        process = next((p for p in reversed(found) if p.alive()), found[-1])
        return ContainerLog(process.cname, process.log_file, process.alive)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        _log.warning("node agent watch: %s", exc)

    # -- nodes ------------------------------------------------------------------------------

    def _register(self, name: str, version: str) -> None:
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        body: Obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        body["metadata"]["labels"] = labels
        try:
            node = self.kube.create("/api/v1/nodes", body)
        except KubeError as exc:
            if exc.status != 409:
                raise
            node = self.kube.patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}}, MERGE)
        self._node_uids[name] = node["metadata"]["uid"]
        stamp = now()

        def condition(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }

        status: Obj = {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "hyper2kvm test node agent is ready"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
            ],
            # The API server reaches the kubelet endpoint here (it prefers InternalIP: see
            # --kubelet-preferred-address-types in controlplane.py).
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port}},
            "nodeInfo": {
                "machineID": name,
                "systemUUID": node["metadata"]["uid"],
                "bootID": node["metadata"]["uid"],
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "containerRuntimeVersion": "hyper2kvm-node-agent://1",
                # The API server's version: version-skew checks then see a matching node.
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.kube.patch(f"/api/v1/nodes/{name}/status", {"status": status})

    def _renew_lease(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS}
        spec["renewTime"] = now_micro()
        try:
            self.kube.patch(path, {"spec": spec}, MERGE)
        except KubeError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": name}
            owner["uid"] = self._node_uids[name]
            meta = {"name": name, "namespace": "kube-node-lease", "ownerReferences": [owner]}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta}
            body["spec"] = spec
            self.kube.create(path.rsplit("/", 1)[0], body)

    def _heartbeat_loop(self) -> None:
        # The node lifecycle controller counts a renewed Lease as the node's heartbeat.
        while not self._stop.wait(self.heartbeat_seconds):
            for name in self.nodes:
                try:
                    self._renew_lease(name)
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    _log.warning("lease %s: %s", name, exc)

    # -- pods -------------------------------------------------------------------------------

    def _on_pod(self, event: str, pod: Obj) -> None:
        if pod.get("spec", {}).get("nodeName") not in self.nodes:
            return
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            running = self._pods.get(uid)
        try:
            if event == "DELETED":
                if running is not None:
                    running.shutdown(grace=0.0)
                    self._forget(uid)
            elif meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds") or 0
                if running is not None and running.alive():
                    threading.Thread(
                        target=running.terminate, args=(float(grace),), daemon=True
                    ).start()
                else:
                    self.force_delete(pod)
            elif running is None:
                self._admit(pod)
        except Exception as exc:  # noqa: BLE001 - one bad pod must not stop the agent
            _log.exception("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)

    def _admit(self, pod: Obj) -> None:
        meta, status = pod["metadata"], pod.get("status", {})
        phase = status.get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            return
        pod_ip = self._allocate_ip(meta["uid"])
        process = PodProcess(
            pod,
            kube=self.kube,
            volumes=self.volumes,
            directory=self.pod_dir(meta["namespace"], meta["name"], meta["uid"]),
            pod_ip=pod_ip,
            base_env={**os.environ, **self._api_env},
            spawner=self._spawner,
            on_gone=self._forget,
            force_delete=self.force_delete,
        )
        with self._lock:
            self._pods[meta["uid"]] = process
        if phase == "Running":
            # A Running pod that this agent never started was started by a previous agent
            # whose process is gone: report that, as kubelet would after losing a container.
            process.report_lost()
            return
        process.launch()

    def force_delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        body["preconditions"] = {"uid": meta["uid"]}
        try:
            self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except KubeError as exc:
            if exc.status != 409:  # 409: a newer pod of the same name, not ours to delete
                raise

    def _allocate_ip(self, uid: str) -> str:
        with self._lock:
            if uid in self._ips:
                return self._ips[uid]
            used = set(self._ips.values())
            for index in range(254 * 254):
                # 127.0.0.x stays for the host's own services; pods start at 127.0.1.1.
                candidate = f"127.0.{1 + index // 254}.{1 + index % 254}"
                if candidate not in used:
                    self._ips[uid] = candidate
                    return candidate
        raise RuntimeError("no free loopback address for a pod")

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._pods.pop(uid, None)
            self._ips.pop(uid, None)
