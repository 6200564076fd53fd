"""The operator's configuration: one typed object, read once from the environment."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HYPER2KVM_{name}", default)


@dataclass(frozen=True)
class Settings:
    worker_image: str = "ghcr.io/hyper2kvm/worker:0.1.0"
    worker_command: tuple[str, ...] = ("hyper2kvm-worker",)
    worker_port: int = 8081
    default_slots: int = 2
    allow_privileged_fix: bool = False
    status_interval_seconds: float = 2.0
    progress_timeout_seconds: float = 2.0
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 600.0
    metrics_port: int = 8080
    worker_cpu_request: str = "500m"
    worker_memory_request: str = "256Mi"
    worker_memory_limit: str = "2Gi"
    fix_memory_limit: str = "4Gi"
    history_limit: int = 32
    peering_lifetime_seconds: int = 60  # how long a silent replica is trusted to be alive

    @classmethod
    def from_environment(cls) -> Settings:
        defaults = cls()
        return cls(
            worker_image=_env("WORKER_IMAGE", defaults.worker_image),
            worker_command=tuple(shlex.split(_env("WORKER_COMMAND", "hyper2kvm-worker"))),
            worker_port=int(_env("WORKER_PORT", str(defaults.worker_port))),
            default_slots=int(_env("DEFAULT_SLOTS", str(defaults.default_slots))),
            allow_privileged_fix=_env("ALLOW_PRIVILEGED_FIX", "false").lower() == "true",
            status_interval_seconds=float(_env("STATUS_INTERVAL", "2")),
            backoff_base_seconds=float(_env("BACKOFF_BASE", "10")),
            backoff_max_seconds=float(_env("BACKOFF_MAX", "600")),
            metrics_port=int(_env("METRICS_PORT", str(defaults.metrics_port))),
            peering_lifetime_seconds=int(_env("PEERING_LIFETIME", "60")),
        )
