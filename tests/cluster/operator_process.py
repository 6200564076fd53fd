"""The operator as a real process on the host (`hyper2kvm-operator`), so tests can kill and
restart it; its worker Pods run the worker image on the cluster's nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# The tests' disks and outputs are host folders under the temporary directory.
TEST_POLICY = {"hostPaths": [{"prefix": "/tmp", "write": True}]}
TEST_SETTINGS = {
    # Images are imported into the nodes, never pulled.
    "HYPER2KVM_WORKER_PULL_POLICY": "Never",
    "HYPER2KVM_POLICY": json.dumps(TEST_POLICY),
    "HYPER2KVM_STATUS_INTERVAL": "1",
    "HYPER2KVM_BACKOFF_BASE": "1",
    "HYPER2KVM_BACKOFF_MAX": "2",
    "HYPER2KVM_PEERING_LIFETIME": "8",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        worker_image: str,
        priority: int = 100,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.log = log
        self.priority = priority
        self.env = {
            **os.environ,
            **TEST_SETTINGS,
            "KUBECONFIG": str(kubeconfig),
            "HYPER2KVM_WORKER_IMAGE": worker_image,
            **(settings or {}),
            "HYPER2KVM_METRICS_PORT": str(self.metrics_port),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        argv = [
            str(BIN / "hyper2kvm-operator"),
            "--liveness",
            "",
            "--verbose",
            "--priority",
            str(self.priority),
        ]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
