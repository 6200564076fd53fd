"""The operator's memory of its jobs: idle followers, what was written, watched Pods."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kopf._cogs.aiokits.aioenums import FlagSetter

from hyper2kvm_operator.job_state import Operator, caught_up, current_status
from hyper2kvm_operator.kube import KubeApi
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings


def operator() -> Operator:
    return Operator(
        settings=Settings(),
        kube=cast(KubeApi, None),
        progress=cast(ProgressReader, None),
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )


async def test_an_idle_follower_wakes_on_a_change_and_then_waits_again() -> None:
    op, flag = operator(), FlagSetter[kopf.DaemonStoppingReason]()
    stopped = cast(kopf.DaemonStopped, flag.async_waiter)
    waiting = asyncio.create_task(op.idle("ns/job", stopped))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    op.wake("ns/job")
    await asyncio.wait_for(waiting, 1)

    again = asyncio.create_task(op.idle("ns/job", stopped))
    await asyncio.sleep(0.05)  # the first wait's stop watcher, cancelled, woke nothing
    assert not again.done()
    flag.set()
    await asyncio.wait_for(again, 1)


def test_what_was_written_is_forgotten_once_the_watch_shows_it() -> None:
    op = operator()
    body = {"metadata": {"namespace": "ns", "name": "job"}, "status": {"phase": "Pending"}}
    op.written["ns/job"] = {"phase": "Queued", "retryAfter": None, "attempt": 0}
    caught_up(op, body)  # the watch is one event behind
    assert current_status(op, body)["phase"] == "Queued"

    caught_up(op, {**body, "status": {"phase": "Queued", "attempt": 0}})

    assert "ns/job" not in op.written


class OnePod:
    """An API server holding one Pod, counting its reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return {"metadata": {"name": name}, "status": {"phase": "Pending"}}


async def test_a_watched_worker_pod_is_looked_at_without_reading_the_api() -> None:
    op, kube = operator(), OnePod()
    op.kube = cast(KubeApi, kube)
    op.watched_pod("ns/watched", {"metadata": {"name": "watched"}, "status": {"phase": "Running"}})

    watched = await op.worker_pod("ns", "watched")
    unseen = await op.worker_pod("ns", "unseen")  # created, its watch event not here yet

    assert watched is not None and watched["status"]["phase"] == "Running"
    assert unseen is not None and unseen["status"]["phase"] == "Pending"
    assert kube.reads == 1


def test_only_running_worker_pods_are_held() -> None:
    """A finished job's Pod stays in the cluster: twenty thousand of them are not held."""
    op = operator()
    op.watched_pod("ns/a", {"status": {"phase": "Running"}})
    op.watched_pod("ns/b", {"status": {"phase": "Pending"}})
    op.watched_pod("ns/a", {"status": {"phase": "Succeeded"}})
    op.watched_pod("ns/b", None)  # deleted
    op.watched_pod("ns/c", {"status": {"phase": "Failed"}})

    assert op.pods == {}
