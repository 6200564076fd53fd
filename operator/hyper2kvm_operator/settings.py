"""The operator's configuration: one typed object, read once from the environment."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hyper2kvm_operator.tenancy import Policy


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HYPER2KVM_{name}", default)


def _quantities(name: str, default: Mapping[str, str]) -> Mapping[str, str]:
    """A JSON object of resource quantities, e.g. {"cpu": "500m", "memory": "256Mi"}."""
    raw = _env(name, "")
    if not raw:
        return default
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(isinstance(v, str | int) for v in value.values()):
        raise ValueError(f"HYPER2KVM_{name} must be a JSON object of quantities, got {raw!r}")
    return MappingProxyType({str(k): str(v) for k, v in value.items()})


def _tolerations(raw: str) -> tuple[Mapping[str, Any], ...]:
    """A JSON list of Pod tolerations, as in a Pod spec."""
    if not raw:
        return ()
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError(f"HYPER2KVM_WORKER_TOLERATIONS must be a JSON list of objects: {raw!r}")
    return tuple(MappingProxyType(t) for t in value)


def _frozen(**values: str) -> Mapping[str, str]:
    return MappingProxyType(values)


@dataclass(frozen=True)
class Settings:
    worker_image: str = "ghcr.io/hyper2kvm/worker:0.1.0"
    worker_command: tuple[str, ...] = ("hyper2kvm-worker",)
    worker_port: int = 8081
    worker_pull_policy: str | None = None
    # Secrets named here must exist in every namespace where jobs run (Pods are namespaced).
    worker_pull_secrets: tuple[str, ...] = ()
    worker_tolerations: tuple[Mapping[str, Any], ...] = ()  # for every worker Pod
    node_label: str = "hyper2kvm.io/worker"  # worker nodes carry it with the value "true"
    default_slots: int = 2
    policy: Policy = field(default_factory=Policy)  # what tenants may ask for (tenancy.py)
    # A NetworkPolicy for the worker Pods of every namespace with jobs (network_policy.py):
    # ingress only from the operator's Pods, which it selects by these.
    network_policy: bool = False
    operator_namespace: str = ""
    operator_labels: Mapping[str, str] = field(default_factory=dict)
    status_interval_seconds: float = 2.0
    progress_timeout_seconds: float = 2.0
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 600.0
    metrics_port: int = 8080
    worker_requests: Mapping[str, str] = field(
        default_factory=lambda: _frozen(cpu="500m", memory="256Mi")
    )
    worker_limits: Mapping[str, str] = field(default_factory=lambda: _frozen(memory="2Gi"))
    fix_memory_limit: str = "4Gi"
    # Worker scratch: a shared existing claim, else a claim per Pod of scratch_size, else
    # an emptyDir on the node.
    scratch_claim: str | None = None
    scratch_size: str | None = None
    scratch_limit: str = "10Gi"  # an emptyDir scratch's sizeLimit
    scratch_storage_class: str | None = None
    history_limit: int = 32
    peering_lifetime_seconds: int = 60  # how long a silent replica is trusted to be alive
    # How often a running vSphere attempt's session is touched (vCenter's idle timeout is 30
    # minutes); a session found gone ends the attempt, to be retried with a new one.
    vsphere_keepalive_seconds: float = 120.0

    @classmethod
    def from_environment(cls) -> Settings:
        defaults = cls()
        return cls(
            worker_image=_env("WORKER_IMAGE", defaults.worker_image),
            worker_command=tuple(shlex.split(_env("WORKER_COMMAND", "hyper2kvm-worker"))),
            worker_port=int(_env("WORKER_PORT", str(defaults.worker_port))),
            worker_pull_policy=_env("WORKER_PULL_POLICY", "") or None,
            worker_pull_secrets=tuple(_env("WORKER_PULL_SECRETS", "").replace(",", " ").split()),
            worker_tolerations=_tolerations(_env("WORKER_TOLERATIONS", "")),
            node_label=_env("NODE_LABEL", defaults.node_label),
            default_slots=int(_env("DEFAULT_SLOTS", str(defaults.default_slots))),
            policy=Policy.from_json(_env("POLICY", "")),
            network_policy=_env("NETWORK_POLICY", "false").lower() == "true",
            operator_namespace=_env("OPERATOR_NAMESPACE", ""),
            operator_labels=_quantities("OPERATOR_LABELS", {}),
            status_interval_seconds=float(_env("STATUS_INTERVAL", "2")),
            backoff_base_seconds=float(_env("BACKOFF_BASE", "10")),
            backoff_max_seconds=float(_env("BACKOFF_MAX", "600")),
            metrics_port=int(_env("METRICS_PORT", str(defaults.metrics_port))),
            worker_requests=_quantities("WORKER_REQUESTS", defaults.worker_requests),
            worker_limits=_quantities("WORKER_LIMITS", defaults.worker_limits),
            fix_memory_limit=_env("FIX_MEMORY_LIMIT", defaults.fix_memory_limit),
            scratch_claim=_env("SCRATCH_CLAIM", "") or None,
            scratch_size=_env("SCRATCH_SIZE", "") or None,
            scratch_limit=_env("SCRATCH_LIMIT", defaults.scratch_limit),
            scratch_storage_class=_env("SCRATCH_STORAGE_CLASS", "") or None,
            peering_lifetime_seconds=int(_env("PEERING_LIFETIME", "60")),
            vsphere_keepalive_seconds=float(_env("VSPHERE_KEEPALIVE", "120")),
        )
