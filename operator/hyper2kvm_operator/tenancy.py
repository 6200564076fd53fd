"""What a tenant's MigrationJob may ask for: the policy cluster admins set, and its checks.

Pure. Admins own the policy (the chart's `policy` values, given to the operator as one
JSON document); a job cannot grant itself more. The operator checks every job against it
when the job is admitted and again before each attempt's Pod is made, and fails a job that
breaks a rule at once, with a message naming the rule (`policy.<rule>`). What only the
worker can see (a disk's declared size, the address an HTTP name resolves to, redirects)
goes to the worker as limits in its job.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyper2kvm_operator import api

ALL_NAMESPACES = "*"
# Never reachable by an HTTP source unless the admin allows them by name: the node and
# its metadata services, and addresses that are not an address at all.
DENIED_NETWORKS = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "::1/128",
    "fe80::/10",
    "fc00::/7",  # unique-local IPv6, often cluster-internal
)
_UNITS = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "m": 0.001,
}  # fmt: skip


class PolicyError(ValueError):
    """The policy document itself is wrong (an admin's mistake, reported at start-up)."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("1536Mi", "2", "500m", "1e3") as a number."""
    text = str(value).strip()
    for suffix, factor in sorted(_UNITS.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return float(text[: -len(suffix)]) * factor
    try:
        return float(text)
    except ValueError:
        raise PolicyError(f"{value!r} is not a quantity") from None


@dataclass(frozen=True)
class HostPathGrant:
    """Files under `prefix` may be read (and written, with `write`) by jobs of `namespaces`."""

    prefix: str
    namespaces: frozenset[str] = frozenset({ALL_NAMESPACES})
    write: bool = False

    def covers(self, namespace: str, path: str, writing: bool) -> bool:
        if writing and not self.write:
            return False
        if ALL_NAMESPACES not in self.namespaces and namespace not in self.namespaces:
            return False
        return path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/")


@dataclass(frozen=True)
class Policy:
    host_paths: tuple[HostPathGrant, ...] = ()  # none: hostPath is off
    privileged_fix_namespaces: frozenset[str] = frozenset()
    max_priority: int = 100
    max_disks: int = 16
    max_timeout_seconds: int = 7 * 86400
    max_virtual_size: int = 16 << 40
    max_resources: Mapping[str, str] = field(default_factory=lambda: {"cpu": "4", "memory": "8Gi"})
    namespace_slots: int = 0  # concurrent attempts per namespace; 0: no limit
    namespace_slot_overrides: Mapping[str, int] = field(default_factory=dict)
    http_allow: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    http_deny: tuple[str, ...] = DENIED_NETWORKS
    credential_label: str = "hyper2kvm.io/credentials"

    def denying(self, networks: Iterable[str]) -> Policy:
        """This policy with `networks` (the cluster's own ranges, as found) also denied."""
        extra = tuple(sorted(set(networks) - set(self.http_deny)))
        return dataclasses.replace(self, http_deny=self.http_deny + extra) if extra else self

    def slots_for(self, namespace: str) -> int:
        """How many attempts of one namespace may run at once (0: no limit)."""
        return self.namespace_slot_overrides.get(namespace, self.namespace_slots)

    def privileged_fix(self, namespace: str) -> bool:
        allowed = self.privileged_fix_namespaces
        return ALL_NAMESPACES in allowed or namespace in allowed

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """The chart's `policy` values, as JSON; absent keys take the defaults above."""
        if not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise PolicyError(f"HYPER2KVM_POLICY is not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise PolicyError("HYPER2KVM_POLICY must be a JSON object")
        try:
            return _policy(raw)
        except (KeyError, TypeError, ValueError) as error:
            raise PolicyError(f"HYPER2KVM_POLICY: {error}") from None


def _policy(raw: dict[str, Any]) -> Policy:
    defaults = Policy()
    grants = []
    for entry in raw.get("hostPaths") or []:
        prefix = posixpath.normpath(str(entry["prefix"]))
        if not prefix.startswith("/") or prefix == "/":
            raise ValueError(f"hostPaths prefix {entry['prefix']!r}: an absolute folder, not /")
        names = entry.get("namespaces") or [ALL_NAMESPACES]
        grants.append(HostPathGrant(prefix, frozenset(map(str, names)), bool(entry.get("write"))))
    http = raw.get("http") or {}
    for network in [*http.get("allowNetworks", []), *http.get("denyNetworks", [])]:
        ipaddress.ip_network(network, strict=False)  # a bad one fails at start-up, not later
    max_size = raw.get("maxVirtualSize")
    return Policy(
        host_paths=tuple(grants),
        privileged_fix_namespaces=frozenset(map(str, raw.get("privilegedFixNamespaces") or [])),
        max_priority=int(raw.get("maxPriority", defaults.max_priority)),
        max_disks=int(raw.get("maxDisks", defaults.max_disks)),
        max_timeout_seconds=int(raw.get("maxTimeoutSeconds", defaults.max_timeout_seconds)),
        max_virtual_size=int(quantity(max_size)) if max_size else defaults.max_virtual_size,
        max_resources={str(k): str(v) for k, v in (raw.get("maxResources") or {}).items()}
        or dict(defaults.max_resources),
        namespace_slots=int(raw.get("namespaceSlots", 0)),
        namespace_slot_overrides={
            str(k): int(v) for k, v in (raw.get("namespaceSlotOverrides") or {}).items()
        },
        http_allow=tuple(http.get("allowNetworks") or defaults.http_allow),
        http_deny=tuple(DENIED_NETWORKS) + tuple(http.get("denyNetworks") or ()),
        credential_label=str(raw.get("credentialLabel", defaults.credential_label)),
    )


@dataclass(frozen=True)
class Violation:
    rule: str  # the policy key, as the chart's values name it
    message: str

    def __str__(self) -> str:
        return f"{self.message} (policy.{self.rule})"


def unmarked_secret(
    name: str, namespace: str, labels: Mapping[str, str] | None, label: str, use: str
) -> str:
    """Why Secret `name` may not be used for `use`, or "" when it may. Only Secrets their
    owner marked (`label`=true) are: any other Secret of the namespace (a service's password)
    would otherwise reach a server of the job's or the provider's choosing."""
    if labels is None:
        return f"Secret {name} does not exist in namespace {namespace}"
    if labels.get(label) != "true":
        return (
            f"Secret {name} is not marked for migrations: label it {label}=true "
            f"(policy.credentialLabel) {use}"
        )
    return ""


def violations(namespace: str, spec: api.MigrationJobSpec, policy: Policy) -> list[Violation]:
    """Every rule `spec` breaks, in the order a person would fix them."""
    found = list(_host_path_violations(namespace, spec, policy))
    if spec.priority > policy.max_priority:
        found.append(
            Violation(
                "maxPriority",
                f"priority {spec.priority} is above this cluster's {policy.max_priority}",
            )
        )
    if len(spec.disks) > policy.max_disks:
        found.append(
            Violation("maxDisks", f"{len(spec.disks)} disks; at most {policy.max_disks} per job")
        )
    if spec.timeoutSeconds > policy.max_timeout_seconds:
        found.append(
            Violation(
                "maxTimeoutSeconds",
                f"timeoutSeconds {spec.timeoutSeconds} is above {policy.max_timeout_seconds}",
            )
        )
    found += _resource_violations(spec, policy)
    return found


def _host_path_violations(
    namespace: str, spec: api.MigrationJobSpec, policy: Policy
) -> Iterator[Violation]:
    for disk, path, writing in _host_paths(spec):
        if any(grant.covers(namespace, path, writing) for grant in policy.host_paths):
            continue
        what = "writes to" if writing else "reads"
        granted = [g for g in policy.host_paths if g.covers(namespace, g.prefix, False)]
        if not granted:
            message = f"{disk} {what} the node's {path}, and hostPath is off for {namespace}"
        else:
            message = (
                f"{disk} {what} the node's {path}, under no host folder namespace "
                f"{namespace} may {'write' if writing else 'read'}"
            )
        yield Violation("hostPaths", message)


def _host_paths(spec: api.MigrationJobSpec) -> Iterator[tuple[str, str, bool]]:
    for disk in spec.disks:
        source = disk.source
        for host in (source.hostPath, source.ova.hostPath if source.ova else None):
            if host is not None:
                yield f"disk {disk.name}", posixpath.normpath(host.path), False
        if disk.output is not None and disk.output.hostPath is not None:
            yield f"disk {disk.name}", posixpath.normpath(disk.output.hostPath.path), True
    if spec.output is not None and spec.output.hostPath is not None:
        yield "the source VM's output", posixpath.normpath(spec.output.hostPath.path), True


def _resource_violations(spec: api.MigrationJobSpec, policy: Policy) -> list[Violation]:
    found = []
    wanted = spec.resources
    for kind in ("requests", "limits"):
        values = getattr(wanted, kind, None) if wanted is not None else None
        for name, value in (values.model_dump(exclude_none=True) if values else {}).items():
            ceiling = policy.max_resources.get(name)
            if ceiling is None:
                continue
            try:
                above = quantity(value) > quantity(ceiling)
            except PolicyError:
                found.append(
                    Violation(
                        "maxResources", f"resources.{kind}.{name} {value!r} is not a quantity"
                    )
                )
                continue
            if above:
                found.append(
                    Violation(
                        "maxResources",
                        f"resources.{kind}.{name} {value} is above this cluster's {ceiling}",
                    )
                )
    return found
