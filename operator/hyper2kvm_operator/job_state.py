"""The operator's memory of its jobs, and the one way it writes a job's status.

Every status write goes through `move` (a phase transition, with history and metrics) or
through the follower's progress patch; what was written is kept, since Kopf's view of the
object lags behind our own patches by one watch event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import kopf

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator import policy, status, tenancy
from hyper2kvm_operator.api import Phase
from hyper2kvm_operator.kube import KubeApi
from hyper2kvm_operator.metrics import JobView, OperatorMetrics, Snapshot
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings
from hyper2kvm_operator.vsphere.logins import Logins

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Reservation:
    """A slot taken by an attempt just placed (and, for a vSphere job, a read from its
    ESXi host), before the indices show the attempt."""

    node: str
    since: float  # monotonic seconds
    source_host: str | None = None  # "namespace/provider/host"


@dataclass
class Operator:
    """The operator's state in memory: what Kopf's indices do not hold."""

    settings: Settings
    kube: KubeApi
    progress: ProgressReader
    clock: Callable[[], datetime]
    rng: random.Random = field(default_factory=random.Random)
    # Slots taken by attempts just placed, until the index of active jobs shows them or the
    # attempt ends (placer.attempts_load).
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # Jobs whose attempt's worker Pod this operator saw end: their slot is free at once, not
    # only once the status saying so is written and watched (placer.attempts_load).
    released: set[str] = field(default_factory=set)
    view: Snapshot = field(default_factory=Snapshot)
    # The status as this operator last wrote it: Kopf's view of the object lags behind our
    # own patches by one watch event, and a history computed from it would lose entries.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set when a job's worker Pod changes, so its follower looks now instead of next interval.
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    slot_freed_at: float = 0.0
    # The NetworkPolicy in place per namespace, as last applied by this process.
    network_policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The cluster's own Pod and Service ranges, as found: HTTP sources never reach them.
    cluster_networks: set[str] = field(default_factory=set)
    # Each job's follower, by job, with the flag Kopf raises to stop it. Kopf stops them all
    # while peering pauses this replica: the placer acts only while one runs unstopped.
    followers: dict[str, kopf.DaemonStopped] = field(default_factory=dict)
    metrics: OperatorMetrics | None = None
    # The operator's own vSphere session per provider, and when each vSphere job's attempt
    # session was last kept alive (monotonic seconds).
    logins: Logins = field(default_factory=Logins)
    sessions_touched: dict[str, float] = field(default_factory=dict)
    # job -> the attempt whose session the server no longer knows
    sessions_lost: dict[str, int] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Worker Pods (namespace/name) still running, as their watch last showed them: a
    # follower looks here every interval, and reads the API only for a Pod not held here.
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    background: set[asyncio.Task[None]] = field(default_factory=set)  # held until done
    # Wakes the placement loop: an attempt ended, so a slot is free now, before the watch
    # shows the job's new phase.
    replan: Callable[[], None] = lambda: None

    def watched_pod(self, key: str, pod: dict[str, Any] | None) -> None:
        """A worker Pod's watch event (None: deleted). One that ended is not held: a finished
        job's Pod stays in the cluster, and its follower reads it from the API once."""
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is None or phase in ("Succeeded", "Failed"):
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod

    async def worker_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod as last watched, else as the API server has it now (None: there is none)."""
        watched = self.pods.get(f"{namespace}/{name}")
        return watched if watched is not None else await self.kube.read_pod(namespace, name)

    def policy(self) -> tenancy.Policy:
        """The admins' policy, with the cluster's own ranges denied to HTTP sources."""
        return self.settings.policy.denying(self.cluster_networks)

    def lock(self, key: str) -> asyncio.Lock:
        """The job's own lock: one attempt is prepared by one handler at a time."""
        return self.locks.setdefault(key, asyncio.Lock())

    def wake(self, key: str) -> None:
        self.wakeups.setdefault(key, asyncio.Event()).set()

    async def idle(self, key: str, stopped: kopf.DaemonStopped) -> None:
        """Wait, without waking on a timer, until the job's phase or worker Pod changes or
        Kopf stops its follower: a queued job costs no CPU however long it waits."""
        event = self.wakeups.setdefault(key, asyncio.Event())
        if not event.is_set():
            halted = asyncio.ensure_future(stopped.wait())

            def on_stop(done: asyncio.Future[Any]) -> None:
                if not done.cancelled():  # cancelled below: the next wait must not wake
                    event.set()

            halted.add_done_callback(on_stop)
            try:
                await event.wait()
            finally:
                halted.cancel()
        event.clear()

    def acting(self) -> bool:
        """Kopf runs this replica's job handlers: a follower runs and is not being stopped."""
        return any(not stopped for stopped in self.followers.values())

    async def pause(self, key: str, seconds: float) -> None:
        """Sleep up to `seconds`, or until the job's worker Pod changes."""
        event = self.wakeups.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    def now(self) -> str:
        return policy.format_time(self.clock())

    def record(
        self, key: str, phase: Phase, node: str | None = None, since: datetime | None = None
    ) -> None:
        """Mirror a job's phase into the metrics view.

        Called after this process wrote a transition (`move`) and when a job is first seen
        (`admit`, also on resume). An outcome is counted only for a transition written here:
        a restart re-reading finished jobs must not count them again.
        """
        job = self.view.jobs.get(key)
        wrote = (self.written.get(key) or {}).get("phase") == phase.value
        changed = job is None or job.phase != phase.value
        if job is None:
            job = self.view.jobs[key] = JobView(phase=phase.value)
        if changed:
            job.phase_since = (since or self.clock()).timestamp()
        job.phase, job.node = phase.value, node or job.node
        if changed and wrote and phase in status.TERMINAL and self.metrics is not None:
            self.metrics.outcomes.labels(phase.value).inc()


def event_target(body: Body) -> kopf.Body:
    return cast(kopf.Body, body)  # Kopf only reads the object's reference from it


def key_of(body: Body) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def current_status(op: Operator, body: Body) -> dict[str, Any]:
    return op.written.get(key_of(body)) or dict(body.get("status") or {})


def caught_up(op: Operator, body: Body) -> None:
    """Forget what was written to the job once its watch shows it: the object then says
    the same, and twenty thousand idle jobs need not be held twice."""
    written = op.written.get(key_of(body))
    state = body.get("status") or {}
    if written is not None and all(state.get(name) == value for name, value in written.items()):
        del op.written[key_of(body)]


def phase_of(op: Operator, body: Body) -> Phase | None:
    value = current_status(op, body).get("phase")
    return Phase(value) if value else None


async def move(
    op: Operator, body: Body, phase: Phase, reason: str, message: str = "", **fields: Any
) -> None:
    current = current_status(op, body)
    patch = status.transition(
        current,
        phase,
        op.now(),
        body["metadata"].get("generation"),
        reason,
        message,
        op.settings.history_limit,
    )
    patch.update(fields)
    meta = body["metadata"]
    await op.kube.patch_job_status(meta["namespace"], meta["name"], patch)
    op.written[key_of(body)] = {**current, **patch}
    op.record(key_of(body), phase, fields.get("node"))
    op.wake(key_of(body))  # its follower, idle while the job is queued, looks again


async def fail_now(op: Operator, body: Body, reason: str, message: str) -> None:
    await move(op, body, Phase.FAILED, reason, message[:1024])
    kopf.warn(event_target(body), reason=reason, message=message[:1024])


async def retry_or_fail(op: Operator, body: Body, reason: str, message: str) -> None:
    state = current_status(op, body)
    attempt = int(state.get("attempt") or 1)
    retries = int(body["spec"].get("retries", 0))
    if attempt > retries:
        text = f"attempt {attempt} failed ({reason}: {message}); no retries left"
        await move(op, body, Phase.FAILED, cond.RETRIES_EXHAUSTED, text)
        kopf.warn(event_target(body), reason=cond.RETRIES_EXHAUSTED, message=text)
        return
    delay = policy.backoff_seconds(
        attempt, op.settings.backoff_base_seconds, op.settings.backoff_max_seconds, op.rng
    )
    text = f"attempt {attempt} failed ({reason}: {message}); retrying in {delay:.0f}s"
    await move(
        op,
        body,
        Phase.QUEUED,
        cond.RETRYING,
        text,
        retryAfter=policy.after(op.clock(), delay),
        queuedTime=state.get("queuedTime"),
    )
    kopf.warn(event_target(body), reason=cond.RETRYING, message=text)
