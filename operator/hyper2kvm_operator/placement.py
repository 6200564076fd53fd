"""Choosing where queued jobs run: highest priority first, then oldest, on the least-loaded node.

Pure: the operator feeds it what its in-memory indices hold (queued jobs, worker nodes,
active worker Pods per node) and gets back the placements to make now.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

WORKER_LABEL = "hyper2kvm.io/worker"
SLOTS_KEY = "hyper2kvm.io/slots"  # a node label or annotation overriding the default


@dataclass(frozen=True)
class WorkerNode:
    name: str
    labels: Mapping[str, str]
    slots: int
    ready: bool = True
    unschedulable: bool = False

    @property
    def usable(self) -> bool:
        return self.ready and not self.unschedulable and self.slots > 0


@dataclass(frozen=True)
class QueuedJob:
    key: str  # namespace/name
    priority: int
    queued_at: str  # RFC 3339 time the job entered the queue; string order is time order
    node_selector: Mapping[str, str] = field(default_factory=dict)
    not_before: str | None = None  # a retry's backoff: not placed before this time
    source_host: str | None = None  # "namespace/provider/host": the ESXi host it reads from


def node_slots(labels: Mapping[str, str], annotations: Mapping[str, str], default: int) -> int:
    """The node's slot count: its label, else its annotation, else the default."""
    for source in (labels, annotations):
        value = source.get(SLOTS_KEY, "")
        if value.isdigit():
            return int(value)
    return default


def is_worker(labels: Mapping[str, str], label: str = WORKER_LABEL) -> bool:
    return labels.get(label) == "true"


def queue_order(jobs: list[QueuedJob]) -> list[QueuedJob]:
    return sorted(jobs, key=lambda job: (-job.priority, job.queued_at, job.key))


def eligible(job: QueuedJob, node: WorkerNode) -> bool:
    return node.usable and all(node.labels.get(k) == v for k, v in job.node_selector.items())


def namespace_of(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class SourceLimits:
    """What the sources bear: jobs reading from each ESXi host now, and each host's limit
    (its provider's maxDisksPerHost; a worker reads a job's disks one after another, so a
    job reads one disk at a time)."""

    active: Mapping[str, int] = field(default_factory=dict)
    limit: Callable[[str], int] = lambda _: 0  # 0: no limit

    def full(self, host: str | None, reading: Mapping[str, int]) -> bool:
        if host is None:
            return False
        limit = self.limit(host)
        return bool(limit) and reading.get(host, 0) >= limit


def place(
    queue: list[QueuedJob],
    nodes: list[WorkerNode],
    active: Mapping[str, int],
    namespace_active: Mapping[str, int] | None = None,
    namespace_slots: Callable[[str], int] = lambda _: 0,
    sources: SourceLimits | None = None,
) -> list[tuple[QueuedJob, WorkerNode]]:
    """Placements for as many queued jobs as free slots allow, in queue order.

    A job no node can take now is skipped, not waited on: a job with a narrow selector
    never holds back jobs that could run elsewhere, and a namespace at its own limit
    (`namespace_slots`, 0: none) or an ESXi host at its own never holds back others.
    """
    sources = sources or SourceLimits()
    load = {node.name: active.get(node.name, 0) for node in nodes}
    in_namespace = dict(namespace_active or {})
    reading = dict(sources.active)
    placements = []
    for job in queue_order(queue):
        namespace = namespace_of(job.key)
        limit = namespace_slots(namespace)
        if limit and in_namespace.get(namespace, 0) >= limit:
            continue
        if sources.full(job.source_host, reading):
            continue
        candidates = [n for n in nodes if eligible(job, n) and load[n.name] < n.slots]
        if not candidates:
            continue
        best = min(candidates, key=lambda n: (load[n.name] / n.slots, load[n.name], n.name))
        load[best.name] += 1
        in_namespace[namespace] = in_namespace.get(namespace, 0) + 1
        if job.source_host is not None:
            reading[job.source_host] = reading.get(job.source_host, 0) + 1
        placements.append((job, best))
    return placements


def why_waiting(
    job: QueuedJob,
    nodes: list[WorkerNode],
    label: str = WORKER_LABEL,
    namespace_active: Mapping[str, int] | None = None,
    namespace_slots: Callable[[str], int] = lambda _: 0,
    sources: SourceLimits | None = None,
) -> str:
    """A person-readable reason a job is still queued."""
    namespace = namespace_of(job.key)
    limit = namespace_slots(namespace)
    running = (namespace_active or {}).get(namespace, 0)
    if limit and running >= limit:
        return (
            f"namespace {namespace} has {running} jobs running, its limit (policy.namespaceSlots)"
        )
    sources = sources or SourceLimits()
    if job.source_host is not None and sources.full(job.source_host, sources.active):
        host = job.source_host.split("/", 2)[-1]
        return (
            f"ESXi host {host} is read by {sources.active.get(job.source_host, 0)} jobs, its "
            "provider's limit (maxDisksPerHost)"
        )
    workers = [node for node in nodes if node.usable]
    if not workers:
        return f"no ready node is labelled {label}=true"
    matching = [node for node in workers if eligible(job, node)]
    if not matching:
        return f"no ready worker node matches nodeSelector {dict(job.node_selector)}"
    return f"all {sum(n.slots for n in matching)} slots on {len(matching)} eligible nodes are busy"


def free_slots(nodes: list[WorkerNode], load: Mapping[str, int]) -> int:
    """Slots no attempt holds on the usable nodes: 0 means no queued job can start now."""
    return sum(max(0, node.slots - load.get(node.name, 0)) for node in nodes if node.usable)


def waiting_signature(
    nodes: list[WorkerNode],
    namespace_active: Mapping[str, int],
    namespace_slots: Callable[[str], int],
    sources: SourceLimits,
) -> tuple[object, ...]:
    """All that `why_waiting` reads beyond the job itself: while it stays equal, no queued
    job's reason changes, and only jobs new to the queue need one."""
    workers = tuple(
        sorted((n.name, tuple(sorted(n.labels.items())), n.slots, n.usable) for n in nodes)
    )
    full_namespaces = tuple(
        sorted(
            (namespace, count)
            for namespace, count in namespace_active.items()
            if namespace_slots(namespace) and count >= namespace_slots(namespace)
        )
    )
    full_hosts = tuple(
        sorted(
            (host, count)
            for host, count in sources.active.items()
            if sources.full(host, sources.active)
        )
    )
    return workers, full_namespaces, full_hosts


class WaitingReasons:
    """`why_waiting` for many queued jobs at once: jobs in one namespace, reading one host,
    with one node selector wait for the same reason, which is worked out once."""

    def __init__(
        self,
        nodes: list[WorkerNode],
        label: str,
        namespace_active: Mapping[str, int],
        namespace_slots: Callable[[str], int],
        sources: SourceLimits,
    ) -> None:
        self._args = (nodes, label, namespace_active, namespace_slots, sources)
        self._known: dict[tuple[object, ...], str] = {}

    def of(self, job: QueuedJob) -> str:
        group = (namespace_of(job.key), job.source_host, tuple(sorted(job.node_selector.items())))
        if group not in self._known:
            self._known[group] = why_waiting(job, *self._args)
        return self._known[group]


class Scope(enum.Enum):
    """Which queued jobs a placement pass plans over."""

    NONE = "none"  # no slot is free, or nothing changed since a plan that placed nothing
    NEW = "new"  # only the jobs that entered (or changed in) the queue since the last plan
    ALL = "all"


def plan_scope(free: int, inputs_changed: bool, due: bool, changed_jobs: bool) -> Scope:
    """What a pass must plan over. With the load, nodes and limits as at the last plan
    (which placed nothing, or the load would differ), every job then unplaced still cannot
    start: only the jobs changed since can. A retry's backoff running out (`due`) or any
    change to the inputs calls for the whole queue."""
    if free <= 0:
        return Scope.NONE
    if inputs_changed or due:
        return Scope.ALL
    return Scope.NEW if changed_jobs else Scope.NONE
