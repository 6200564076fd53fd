"""The operator's Prometheus metrics: jobs by phase, progress, queue, node load, latencies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hyper2kvm_operator.api import Phase


@dataclass
class JobView:
    phase: str
    progress: float = 0.0  # 0..1
    throughput: float = 0.0  # bytes/s
    node: str | None = None
    # Unix time the job entered `phase`: "stuck" alerts compare it with the current time.
    phase_since: float = field(default_factory=time.time)


_FINISHED = (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.CANCELLED.value)


@dataclass
class Snapshot:
    jobs: dict[str, JobView] = field(default_factory=dict)  # namespace/name -> view
    slots: dict[str, int] = field(default_factory=dict)  # node -> slots
    active: dict[str, int] = field(default_factory=dict)  # node -> running worker Pods


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._snapshot()
        # Scraped on the HTTP server's thread while the operator's loop adds jobs: one copy,
        # made in a single step, is iterated instead of the live mapping.
        jobs = dict(now.jobs)
        phases = GaugeMetricFamily("hyper2kvm_jobs", "MigrationJobs by phase.", labels=["phase"])
        for phase in Phase:
            count = sum(1 for job in jobs.values() if job.phase == phase.value)
            phases.add_metric([phase.value], count)
        yield phases
        queued = sum(1 for job in jobs.values() if job.phase == Phase.QUEUED.value)
        yield GaugeMetricFamily("hyper2kvm_queue_depth", "Jobs waiting for a slot.", value=queued)
        progress = GaugeMetricFamily(
            "hyper2kvm_job_progress_ratio", "Progress of active jobs.", labels=["namespace", "job"]
        )
        rate = GaugeMetricFamily(
            "hyper2kvm_job_throughput_bytes_per_second",
            "Throughput of active jobs.",
            labels=["namespace", "job", "node"],
        )
        for key, job in jobs.items():
            if job.phase in (Phase.RUNNING.value, Phase.VERIFYING.value):
                namespace, name = key.split("/", 1)
                progress.add_metric([namespace, name], job.progress)
                rate.add_metric([namespace, name, job.node or ""], job.throughput)
        yield progress
        yield rate
        since = GaugeMetricFamily(
            "hyper2kvm_job_phase_since_timestamp_seconds",
            "Unix time an unfinished job entered its current phase.",
            labels=["namespace", "job", "phase"],
        )
        for key, job in sorted(jobs.items()):
            if job.phase not in _FINISHED:
                namespace, name = key.split("/", 1)
                since.add_metric([namespace, name, job.phase], job.phase_since)
        yield since
        slots = GaugeMetricFamily("hyper2kvm_node_slots", "Worker slots per node.", labels=["node"])
        busy = GaugeMetricFamily(
            "hyper2kvm_node_active_workers", "Worker Pods running per node.", labels=["node"]
        )
        for node, count in sorted(now.slots.items()):
            slots.add_metric([node], count)
            busy.add_metric([node], now.active.get(node, 0))
        yield slots
        yield busy


class OperatorMetrics:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(snapshot))
        self.reconcile_errors = Counter(
            "hyper2kvm_reconcile_errors", "Handler failures.", ["handler"], registry=self.registry
        )
        self.api_writes = Counter(
            "hyper2kvm_api_writes", "Kubernetes API writes.", registry=self.registry
        )
        self.scheduling_latency = Histogram(
            "hyper2kvm_scheduling_latency_seconds",
            "From a job being able to run to its worker Pod created.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.status_lag = Histogram(
            "hyper2kvm_progress_to_status_seconds",
            "From reading a worker's progress to its status being written.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.outcomes = Counter(
            "hyper2kvm_job_outcomes", "Finished jobs by phase.", ["phase"], registry=self.registry
        )
        # Exposed at 0 from the start: increase() then also sees a process's first outcome.
        for phase in _FINISHED:
            self.outcomes.labels(phase)
