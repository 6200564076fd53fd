"""The NetworkPolicy of the worker Pods of one namespace (pure).

Workers talk to the sources a job names and to nothing else: egress only to DNS and to the
networks the policy lets HTTP sources reach (minus those it denies), ingress only from the
operator's Pods, on the progress port. Volumes are not Pod traffic (kubelet mounts them),
so NFS and block storage need no rule here. It takes effect where the cluster's network
plugin enforces NetworkPolicies; elsewhere it is inert.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from hyper2kvm_operator.tenancy import Policy
from hyper2kvm_operator.worker_pod import MANAGED_BY, WORKER_LABELS

NAME = "hyper2kvm-workers"
# The cluster DNS as most distributions label it (CoreDNS keeps kube-dns's label).
DNS_SELECTOR = {"k8s-app": "kube-dns"}


def egress_blocks(policy: Policy) -> list[dict[str, Any]]:
    """ipBlocks of the allowed networks, each with the denied networks inside it excepted."""
    denied = [ipaddress.ip_network(n, strict=False) for n in policy.http_deny]
    blocks = []
    for text in policy.http_allow:
        allowed = ipaddress.ip_network(text, strict=False)
        inside = sorted(
            str(n)
            for n in denied
            if n.version == allowed.version and n.subnet_of(allowed)  # type: ignore[arg-type]
        )
        block: dict[str, Any] = {"cidr": str(allowed)}
        if inside:
            block["except"] = inside
        blocks.append({"ipBlock": block})
    return blocks


def manifest(
    namespace: str,
    policy: Policy,
    operator_namespace: str,
    operator_labels: Mapping[str, str],
    progress_port: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "podSelector": {"matchLabels": dict(WORKER_LABELS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
                            },
                            "podSelector": {"matchLabels": dict(operator_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": progress_port}],
                }
            ],
            "egress": [
                {
                    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": DNS_SELECTOR}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {"to": egress_blocks(policy)},
            ],
        },
    }
