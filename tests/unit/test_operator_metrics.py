"""The operator's metrics: what a scrape shows for jobs in each phase, and how phases are timed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hyper2kvm_operator.api import Phase
from hyper2kvm_operator.job_state import Operator
from hyper2kvm_operator.kube import KubeApi
from hyper2kvm_operator.metrics import JobView, OperatorMetrics, Snapshot
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings

SINCE = "hyper2kvm_job_phase_since_timestamp_seconds"
FINISHED = {Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED}


def one_job_per_phase() -> Snapshot:
    jobs = {
        f"ns-{phase.value.lower()}/vm-{index}": JobView(
            phase=phase.value,
            progress=0.5,
            throughput=1024.0,
            node="n1",
            phase_since=1000.0 + index,
        )
        for index, phase in enumerate(Phase)
    }
    return Snapshot(jobs=jobs, slots={"n1": 2}, active={"n1": 1})


def scrape(metrics: OperatorMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], from the text a Prometheus server would read."""
    text = generate_latest(metrics.registry).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def test_phase_since_is_exposed_for_unfinished_jobs_only() -> None:
    samples = scrape(OperatorMetrics(one_job_per_phase))
    exposed = {
        (labels["namespace"], labels["job"], labels["phase"]): v for labels, v in samples[SINCE]
    }
    expected = {
        (f"ns-{phase.value.lower()}", f"vm-{index}", phase.value): 1000.0 + index
        for index, phase in enumerate(Phase)
        if phase not in FINISHED
    }
    assert exposed == expected
    assert {phase for _, _, phase in exposed}.isdisjoint(p.value for p in FINISHED)


def test_phase_since_is_absent_without_unfinished_jobs() -> None:
    snapshot = Snapshot(jobs={"a/done": JobView(phase=Phase.SUCCEEDED.value, phase_since=5.0)})
    samples = scrape(OperatorMetrics(lambda: snapshot))
    assert SINCE not in samples
    assert (({"phase": "Succeeded"}, 1.0)) in samples["hyper2kvm_jobs"]


def test_existing_metrics_keep_their_names_and_labels() -> None:
    metrics = OperatorMetrics(one_job_per_phase)
    metrics.reconcile_errors.labels("admit").inc()
    metrics.api_writes.inc()
    metrics.scheduling_latency.observe(0.3)
    metrics.status_lag.observe(0.02)
    samples = scrape(metrics)
    assert {labels["phase"] for labels, _ in samples["hyper2kvm_jobs"]} == {p.value for p in Phase}
    assert samples["hyper2kvm_queue_depth"] == [({}, 1.0)]
    assert sorted(labels["job"] for labels, _ in samples["hyper2kvm_job_progress_ratio"]) == [
        "vm-3",  # Running
        "vm-4",  # Verifying
    ]
    throughput = samples["hyper2kvm_job_throughput_bytes_per_second"]
    assert [sorted(labels) for labels, _ in throughput] == [["job", "namespace", "node"]] * 2
    assert samples["hyper2kvm_node_slots"] == [({"node": "n1"}, 2.0)]
    assert samples["hyper2kvm_node_active_workers"] == [({"node": "n1"}, 1.0)]
    assert samples["hyper2kvm_reconcile_errors_total"] == [({"handler": "admit"}, 1.0)]
    assert samples["hyper2kvm_api_writes_total"] == [({}, 1.0)]
    assert samples["hyper2kvm_scheduling_latency_seconds_count"] == [({}, 1.0)]
    assert samples["hyper2kvm_progress_to_status_seconds_count"] == [({}, 1.0)]


def test_outcomes_start_at_zero_for_every_finished_phase() -> None:
    samples = scrape(OperatorMetrics(Snapshot))
    outcomes = {labels["phase"]: value for labels, value in samples["hyper2kvm_job_outcomes_total"]}
    assert outcomes == {"Succeeded": 0.0, "Failed": 0.0, "Cancelled": 0.0}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def operator(clock: Clock) -> Operator:
    op = Operator(
        settings=Settings(),
        kube=cast(KubeApi, None),  # record() touches neither the API nor the workers
        progress=cast(ProgressReader, None),
        clock=clock,
    )
    op.metrics = OperatorMetrics(lambda: op.view)
    return op


def write(op: Operator, key: str, phase: Phase, node: str | None = None) -> None:
    """What `move` does around `record`: the status written first, then recorded."""
    op.written[key] = {**op.written.get(key, {}), "phase": phase.value}
    op.record(key, phase, node)


def outcomes(op: Operator) -> dict[str, float]:
    assert op.metrics is not None
    samples = scrape(op.metrics)["hyper2kvm_job_outcomes_total"]
    return {labels["phase"]: value for labels, value in samples}


def test_record_times_each_phase_from_the_operator_clock() -> None:
    clock = Clock()
    op = operator(clock)
    start = clock.now.timestamp()
    write(op, "vms/web", Phase.QUEUED)
    assert op.view.jobs["vms/web"].phase_since == start
    clock.advance(30)
    write(op, "vms/web", Phase.QUEUED)  # same phase again: the clock keeps running
    assert op.view.jobs["vms/web"].phase_since == start
    write(op, "vms/web", Phase.SCHEDULED, node="n1")
    assert op.view.jobs["vms/web"].phase_since == start + 30
    clock.advance(5)
    write(op, "vms/web", Phase.RUNNING)
    job = op.view.jobs["vms/web"]
    assert (job.phase, job.node, job.phase_since) == ("Running", "n1", start + 35)
    assert op.metrics is not None
    since = scrape(op.metrics)[SINCE]
    assert since == [({"namespace": "vms", "job": "web", "phase": "Running"}, start + 35)]


def test_outcomes_count_transitions_not_jobs_seen_again_after_a_restart() -> None:
    clock = Clock()
    op = operator(clock)
    write(op, "vms/a", Phase.RUNNING)
    write(op, "vms/a", Phase.FAILED)
    write(op, "vms/a", Phase.FAILED)
    write(op, "vms/b", Phase.CANCELLED)  # cancelled before it was ever queued
    assert outcomes(op) == {"Succeeded": 0.0, "Failed": 1.0, "Cancelled": 1.0}

    restarted = operator(clock)
    restarted.record("vms/a", Phase.FAILED)  # `admit` on resume: read, not written
    restarted.record("vms/c", Phase.RUNNING)
    assert outcomes(restarted) == {"Succeeded": 0.0, "Failed": 0.0, "Cancelled": 0.0}
    assert restarted.metrics is not None
    assert [labels["job"] for labels, _ in scrape(restarted.metrics)[SINCE]] == ["c"]
