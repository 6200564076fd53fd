"""The placement loop's passes, over indices and an API server faked in memory."""

from __future__ import annotations

import asyncio
import contextvars
import time
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest

from hyper2kvm_operator import placer, reconcile
from hyper2kvm_operator.job_state import Body, Operator, Reservation
from hyper2kvm_operator.kube import KubeApi
from hyper2kvm_operator.placement import QueuedJob, WorkerNode
from hyper2kvm_operator.placer import RESERVATION_SECONDS
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings


class StatusWrites:
    """The one API call a waiting reason makes."""

    def __init__(self) -> None:
        self.written: list[tuple[str, dict[str, Any]]] = []

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.written.append((f"{namespace}/{name}", status))


class Unread:
    """A queue that must not be read."""

    def get(self, *_: object) -> list[placer.Queued]:
        raise AssertionError("the pass read the whole queue")


def operator(kube: StatusWrites) -> Operator:
    return Operator(
        settings=Settings(),
        kube=cast(KubeApi, kube),
        progress=cast(ProgressReader, None),
        clock=lambda: datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


def queued(name: str, priority: int = 0) -> placer.Queued:
    body: Body = {
        "metadata": {"namespace": "ns", "name": name, "generation": 1},
        "spec": {"priority": priority},
        "status": {"phase": "Queued", "reason": "Queued", "message": "waiting for a free slot"},
    }
    job = QueuedJob(key=f"ns/{name}", priority=priority, queued_at="2026-01-01T00:00:00Z")
    return placer.Queued(job, body)


def indices(slots: int, active: dict[str, list[str]], queue: object) -> placer.Indices:
    worker = WorkerNode("n1", {"hyper2kvm.io/worker": "true"}, slots=slots)
    return placer.Indices(
        nodes=cast(kopf.Index[str, WorkerNode], {"n1": [worker]}),
        active=cast(kopf.Index[str, str], active),
        queue=cast(kopf.Index[str, placer.Queued], queue),
        reading=cast(kopf.Index[str, str], {}),
        limits=cast(kopf.Index[str, int], {}),
    )


async def written_reasons(found: placer.Placer) -> None:
    if found.teller is not None:
        await found.teller


async def test_with_every_slot_busy_a_pass_reads_only_the_jobs_new_to_the_queue() -> None:
    kube = StatusWrites()
    found = placer.Placer(operator(kube))
    old = queued("old")
    found.place(indices(1, {"n1": ["ns/running"]}, {"queue": [old]}))
    await written_reasons(found)
    assert kube.written[0][0] == "ns/old"
    assert kube.written[0][1]["message"] == "all 1 slots on 1 eligible nodes are busy"

    fresh = queued("fresh")
    found.queued(fresh.job.key, fresh)
    found.place(indices(1, {"n1": ["ns/running"]}, Unread()))
    await written_reasons(found)
    assert [key for key, _ in kube.written] == ["ns/old", "ns/fresh"]

    found.place(indices(1, {"n1": ["ns/running"]}, Unread()))  # nothing new: nothing written
    await written_reasons(found)
    assert len(kube.written) == 2


async def test_free_slots_start_the_first_jobs_in_queue_order_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[str, str]] = []

    async def start(op: Operator, body: Body, node: str, logger: object) -> None:
        started.append((f"ns/{body['metadata']['name']}", node))

    monkeypatch.setattr(reconcile, "start", start)
    found = placer.Placer(operator(StatusWrites()))
    queue = {"queue": [queued("low"), queued("high", priority=5), queued("mid", priority=2)]}
    found.place(indices(3, {"n1": ["ns/running"]}, queue))
    await asyncio.gather(*found.tasks)
    assert started == [("ns/high", "n1"), ("ns/mid", "n1")]
    assert set(found.op.reservations) == {"ns/high", "ns/mid"}

    found.place(indices(3, {"n1": ["ns/running"]}, queue))  # the reservations hold the slots
    await asyncio.gather(*found.tasks)
    assert len(started) == 2


async def test_a_standby_replica_does_not_place() -> None:
    found = placer.Placer(operator(StatusWrites()))
    assert not found.op.acting()  # no follower runs: peering paused Kopf's handlers, or no job


async def test_a_placed_attempt_keeps_its_slot_while_the_index_lags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However long the index takes to show an attempt this operator recorded, its slot
    is not given twice."""
    op = operator(StatusWrites())
    op.reservations["ns/placed"] = Reservation("n1", time.monotonic() - 10 * RESERVATION_SECONDS)
    op.written["ns/placed"] = {"phase": "Scheduled", "node": "n1"}
    op.reservations["ns/lost"] = Reservation("n1", time.monotonic() - 10 * RESERVATION_SECONDS)
    op.written["ns/lost"] = {"phase": "Queued"}  # its start ended before the status said so
    op.reservations["ns/slow"] = Reservation("n1", time.monotonic() - 10 * RESERVATION_SECONDS)
    op.written["ns/slow"] = {"phase": "Queued"}  # its start still waits for the API server

    load, _ = placer.attempts_load(op, {}, starting={"ns/slow"})

    assert load == {"n1": 2}
    assert set(op.reservations) == {"ns/placed", "ns/slow"}


def test_a_slot_is_free_once_this_operator_saw_the_pod_end_or_wrote_the_job_done() -> None:
    """The index still shows the jobs running on n1; what this operator saw and wrote says
    two of them ended."""
    op = operator(StatusWrites())
    op.written["ns/done"] = {"phase": "Succeeded", "node": "n1"}
    op.released = {"ns/pod-ended", "ns/long-gone"}  # its status not yet written
    op.written["ns/retrying"] = {"phase": "Queued", "node": "n1"}  # waits for the index
    active = {"n1": {"ns/done", "ns/pod-ended", "ns/retrying", "ns/other"}}

    load, namespaces = placer.attempts_load(op, active)

    assert load == {"n1": 2}
    assert namespaces == {"ns": 2}
    assert op.released == {"ns/pod-ended"}  # the index no longer shows the other


async def test_a_job_just_admitted_is_placed_before_its_watch_shows_it_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []

    async def start(op: Operator, body: Body, node: str, logger: object) -> None:
        started.append(body["metadata"]["name"])

    monkeypatch.setattr(reconcile, "start", start)
    op = operator(StatusWrites())
    found = placer.Placer(op)
    fresh: Body = {
        "metadata": {
            "namespace": "ns",
            "name": "fresh",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {},
        "status": {"phase": "Pending"},  # as the watch last showed it
    }
    found.admitted(fresh)  # nothing written by this operator: not queued here
    assert not found.new
    op.written["ns/fresh"] = {"phase": "Queued", "queuedTime": "2026-01-01T00:00:01.000Z"}

    found.admitted(fresh)
    found.place(indices(1, {}, {}))  # the queue index does not show it yet
    await asyncio.gather(*found.tasks)

    assert started == ["fresh"]


async def test_tasks_the_loop_starts_run_in_the_context_of_kopfs_object_handling() -> None:
    """kopf.warn() finds its event queue only there; the loop itself runs without it."""
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    found = placer.Placer(operator(StatusWrites()))
    seen: list[str] = []

    async def look() -> None:
        seen.append(marker.get("none"))

    def handling() -> None:  # as an index handler of Kopf's object handling runs
        marker.set("object handling")
        found.queued("ns/some", None)

    contextvars.copy_context().run(handling)
    await found.spawn(look())

    assert seen == ["object handling"]
