"""One Pod's container as a local process, and the status kubelet would report for it."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster.harness.kube import Kube
from tests.cluster.harness.podspec import (
    VOLUME_MAP_ENV,
    PathMap,
    PodConfigError,
    command_line,
    container_env,
    mount_table,
)
from tests.cluster.harness.processes import spawn, stop_process
from tests.cluster.harness.volumes import Volumes

Obj = dict[str, Any]
# kubelet's limit for one container's termination message.
MESSAGE_LIMIT = 4096
# kubelet starts its restart back-off at 10s; a test cluster has no reason to wait that long.
RESTART_DELAY = 1.0
CONFIG_RETRY = 2.0
# Variables of the agent's own environment that describe the agent, not a container.
_AGENT_ONLY_ENV = ("KUBECONFIG",)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_log = logging.getLogger("hyper2kvm.cluster.pod")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodProcess:
    def __init__(
        self,
        pod: Obj,
        *,
        kube: Kube,
        volumes: Volumes,
        directory: Path,
        pod_ip: str,
        base_env: Mapping[str, str],
        spawner: Executor,
        on_gone: Callable[[str], None],
        force_delete: Callable[[Obj], None],
    ) -> None:
        self.pod = pod
        self.kube = kube
        self.volumes = volumes
        self.directory = directory
        self.pod_ip = pod_ip
        self.base_env = {k: v for k, v in base_env.items() if k not in _AGENT_ONLY_ENV}
        self.spawner = spawner
        self.on_gone = on_gone
        self.force_delete = force_delete
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.container: Obj = pod["spec"]["containers"][0]
        self.cname: str = self.container["name"]
        self.restart_policy: str = pod["spec"].get("restartPolicy", "Always")
        self.log_file = directory / f"{self.cname}.log"
        self.termination_file = directory / f"{self.cname}.termination-log"
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._deleting = False
        self._shutting_down = threading.Event()
        self._restarts = 0
        self._started_at = ""
        self._last_state: Obj = {}
        self._monitor: threading.Thread | None = None
        self._argv: list[str] = []
        self._env: dict[str, str] = {}
        self._cwd = directory

    # -- control ----------------------------------------------------------------------------

    def alive(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        started = now()
        self._patch(
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "startTime": started,
                "conditions": [
                    _condition("PodReadyToStartContainers", True),
                    _condition("Initialized", True),
                    _condition("ContainersReady", False, "ContainersNotReady"),
                    _condition("Ready", False, "ContainersNotReady"),
                ],
                "containerStatuses": [self._status({"waiting": {"reason": "ContainerCreating"}})],
            }
        )
        self._monitor = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self._monitor.start()

    def terminate(self, grace: float) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after ``grace``; the monitor then removes the Pod."""
        with self._lock:
            if self._deleting:
                return  # a later update of the same deleting Pod; one SIGTERM is enough
            self._deleting = True
            proc = self._proc
        if proc is None:
            self.force_delete(self.pod)
            self.on_gone(self.uid)
            return
        stop_process(proc, grace=grace)

    def shutdown(self, grace: float) -> None:
        """The agent stops: end the process without restarting it."""
        self._shutting_down.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            stop_process(proc, grace=grace)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=10)

    def report_lost(self) -> None:
        terminated = {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "the node agent restarted and no longer has this container's process",
            "startedAt": now(),
            "finishedAt": now(),
        }
        self._report_final(terminated, failed=True)

    # -- process ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        # Downward-API fields see the addresses this launch just reported.
        view = dict(self.pod)
        view["status"] = {
            **self.pod.get("status", {}),
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
        }
        table = mount_table(self.container, self.volumes.host_dirs(view, self.directory))
        message_path = self.container.get("terminationMessagePath") or "/dev/termination-log"
        table.add(message_path, str(self.termination_file))
        env = container_env(view, self.container, self._lookup)
        env = {k: table.rewrite(v) for k, v in env.items()}
        self._argv = command_line(self.container, env, table)
        working_dir = self.container.get("workingDir")
        self._cwd = Path(table.rewrite(working_dir)) if working_dir else self.directory
        self._env = {
            **self.base_env,
            "HOSTNAME": self.name,
            **env,
            VOLUME_MAP_ENV: table.to_json(),
            **self._service_account_env(table),
        }

    def _service_account_env(self, table: PathMap) -> dict[str, str]:
        """KUBECONFIG naming the Pod's own service-account token, when one is mounted.

        In-cluster clients read the token at a fixed path that a process cannot be pointed
        elsewhere from, and they fall back to $KUBECONFIG: this kubeconfig carries the same
        projected token and CA, so the Pod talks to the API server as its service account.
        """
        token = table.rewrite(f"{SERVICE_ACCOUNT_DIR}/token")
        if token.startswith(SERVICE_ACCOUNT_DIR):
            return {}
        ca = table.rewrite(f"{SERVICE_ACCOUNT_DIR}/ca.crt")
        host = self.base_env.get("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        port = self.base_env.get("KUBERNETES_SERVICE_PORT", "443")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "in-cluster",
                    "cluster": {"server": f"https://{host}:{port}", "certificate-authority": ca},
                }
            ],
            "users": [{"name": "pod", "user": {"tokenFile": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "in-cluster", "user": "pod"}}],
            "current-context": "pod",
        }
        path = self.directory / "service-account.kubeconfig"
        path.write_text(json.dumps(config))
        return {"KUBECONFIG": str(path)}

    def _lookup(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/{kind}/{name}")

    def _start_process(self) -> bool:
        """Start the container's process; False when it could not be started at all."""
        self.termination_file.write_bytes(b"")
        future = self.spawner.submit(
            spawn, self._argv, log_path=self.log_file, cwd=self._cwd, env=self._env
        )
        try:
            proc = future.result()
        except OSError as exc:  # e.g. the command or the working directory does not exist
            failed = {"exitCode": 128, "reason": "StartError", "message": str(exc)}
            failed.update({"startedAt": now(), "finishedAt": now()})
            self._best_effort(functools.partial(self._report_final, failed, failed=True))
            return False
        with self._lock:
            self._proc = proc
            deleting = self._deleting
        self._started_at = now()
        if deleting or self._shutting_down.is_set():
            stop_process(proc, grace=0.0)
            return True
        running = self._status({"running": {"startedAt": self._started_at}}, ready=True)
        self._patch(
            {
                "phase": "Running",
                "conditions": [_condition("ContainersReady", True), _condition("Ready", True)],
                "containerStatuses": [running],
            }
        )
        return True

    def _run(self) -> None:
        # Like kubelet, retry a configuration the node cannot satisfy yet (a Secret that is
        # created after the Pod) until it can, or until the Pod goes away.
        reported = ""
        while True:
            with self._lock:
                deleting = self._deleting
            if deleting or self._shutting_down.is_set():
                return
            try:
                self._prepare()
                break
            except Exception as exc:  # noqa: BLE001 - reported in the Pod and retried
                if str(exc) != reported:
                    reported = str(exc)
                    reason = (
                        "CreateContainerConfigError"
                        if isinstance(exc, PodConfigError)
                        else "CreateContainerError"
                    )
                    waiting = {"reason": reason, "message": reported}
                    status = {"containerStatuses": [self._status({"waiting": waiting})]}
                    self._best_effort(functools.partial(self._patch, status))
            if self._shutting_down.wait(CONFIG_RETRY):
                return
        if self._start_process():
            self._watch_exit()

    def _watch_exit(self) -> None:
        while True:
            with self._lock:
                proc = self._proc
            assert proc is not None
            code = proc.wait()
            exit_code = code if code >= 0 else 128 - code
            terminated = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "message": self._message(exit_code),
                "startedAt": self._started_at,
                "finishedAt": now(),
                "containerID": self._container_id(),
            }
            with self._lock:
                deleting = self._deleting
            report = functools.partial(self._report_final, terminated, failed=exit_code != 0)
            if deleting:
                self._best_effort(report)
                self._best_effort(functools.partial(self.force_delete, self.pod))
                self.on_gone(self.uid)
                return
            if self._shutting_down.is_set() or not self._restarts_after(exit_code):
                self._best_effort(report)
                return
            self._restarts += 1
            self._last_state = {"terminated": terminated}
            backoff = {"reason": "CrashLoopBackOff", "message": f"exit code {exit_code}"}
            waiting = {"containerStatuses": [self._status({"waiting": backoff})]}
            self._best_effort(functools.partial(self._patch, waiting))
            if self._shutting_down.wait(RESTART_DELAY):
                return
            if not self._start_process():
                return

    def _restarts_after(self, exit_code: int) -> bool:
        return self.restart_policy == "Always" or (
            self.restart_policy == "OnFailure" and exit_code != 0
        )

    def _message(self, exit_code: int) -> str:
        try:
            data = self.termination_file.read_bytes()[:MESSAGE_LIMIT]
        except OSError:
            data = b""
        policy = self.container.get("terminationMessagePolicy", "File")
        if not data and exit_code != 0 and policy == "FallbackToLogsOnError":
            try:
                lines = self.log_file.read_bytes().splitlines()[-80:]
            except OSError:
                lines = []
            data = b"\n".join(lines)[-2048:]
        return data.decode(errors="replace")

    # -- status -----------------------------------------------------------------------------

    def _container_id(self) -> str:
        with self._lock:
            pid = self._proc.pid if self._proc is not None else 0
        return f"hyper2kvm://{self.uid}-{pid}"

    def _status(self, state: Obj, *, ready: bool = False) -> Obj:
        status: Obj = {
            "name": self.cname,
            "image": self.container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": self._restarts,
            "state": state,
            "lastState": self._last_state,
        }
        if "waiting" not in state:
            status["containerID"] = self._container_id()
        return status

    def _report_final(self, terminated: Obj, *, failed: bool) -> None:
        self._patch(
            {
                "phase": "Failed" if failed else "Succeeded",
                "conditions": [
                    _condition("ContainersReady", False, "PodCompleted"),
                    _condition("Ready", False, "PodCompleted"),
                ],
                "containerStatuses": [self._status({"terminated": terminated})],
            }
        )

    def _patch(self, status: Obj) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        # The uid makes the patch fail instead of touching a newer Pod of the same name.
        self.kube.patch(path, {"metadata": {"uid": self.uid}, "status": status})

    def _best_effort(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the Pod may be gone already
            _log.debug("pod %s/%s: %s", self.namespace, self.name, exc)


def _condition(kind: str, ok: bool, reason: str = "") -> Obj:
    condition: Obj = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastTransitionTime": now(),
    }
    if reason:
        condition["reason"] = reason
    return condition
