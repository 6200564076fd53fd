"""Prometheus metrics of a running job, built from the progress board at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hyper2kvm_worker.protocol import JobState, Progress


class ProgressCollector(Collector):
    def __init__(self, job: str, snapshot: Callable[[], Progress]) -> None:
        self._job = job
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        progress = self._snapshot()
        labels = ["job"]
        values = [self._job]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge("hyper2kvm_worker_progress_ratio", "Work done, 0 to 1.", progress.percent / 100)
        yield gauge("hyper2kvm_worker_bytes_done", "Bytes processed.", progress.bytes_done)
        yield gauge("hyper2kvm_worker_bytes_total", "Bytes to process.", progress.bytes_total)
        yield gauge(
            "hyper2kvm_worker_throughput_bytes_per_second",
            "Recent processing rate.",
            progress.rate_bytes_per_second,
        )
        if progress.eta_seconds is not None:
            yield gauge(
                "hyper2kvm_worker_eta_seconds", "Estimated time left.", progress.eta_seconds
            )
        state = GaugeMetricFamily(
            "hyper2kvm_worker_state", "1 for the job's current state.", labels=["job", "state"]
        )
        for candidate in JobState:
            state.add_metric(
                [self._job, candidate.value], 1.0 if candidate is progress.state else 0
            )
        yield state
        disk_bytes = GaugeMetricFamily(
            "hyper2kvm_worker_disk_bytes_done", "Bytes processed per disk.", labels=["job", "disk"]
        )
        for disk in progress.disks:
            disk_bytes.add_metric([self._job, disk.name], disk.bytes_done)
        yield disk_bytes
