"""The operator's one placement loop: it sleeps until the queue, the load, the nodes or a
provider's limits change (or a retry's backoff or a reservation runs out), then plans once
over the queue and starts every job the plan gives a slot.

A pass reads Kopf's indices. With no free slot it costs the active jobs and the nodes, not
the queue: it plans nothing and only gives the jobs new to the queue their waiting reason
(all of them only when what the reasons depend on changed). With free slots it plans over
the whole queue once, or over the new jobs only when nothing else changed since a plan
that placed nothing (`placement.plan_scope`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import kopf

from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator import placement, policy, provider_api, reconcile, status
from hyper2kvm_operator.api import Phase
from hyper2kvm_operator.job_state import Body, Operator, Reservation, key_of

RESERVATION_SECONDS = 30.0
PASS_GAP_SECONDS = 0.05  # a burst of watch events makes one pass, not one pass per event
RETRY_SECONDS = 1.0  # after a pass that failed
TELLERS = 8  # waiting reasons written at once
ACTIVE_PHASES = frozenset(phase.value for phase in status.ACTIVE)
TERMINAL_PHASES = frozenset(phase.value for phase in status.TERMINAL)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queued:
    """A queued job as the queue index holds it: its place in the queue, and the object
    (as of its last watch event) that starting it needs."""

    job: placement.QueuedJob
    body: Body


@dataclass(frozen=True)
class Indices:
    """Kopf's indices the placer reads; live views, filled by the watch streams."""

    nodes: kopf.Index[str, placement.WorkerNode]
    active: kopf.Index[str, str]  # node -> jobs holding a slot there
    queue: kopf.Index[str, Queued]  # "queue" -> every queued job
    reading: kopf.Index[str, str]  # "namespace/provider/host" -> jobs reading from it
    limits: kopf.Index[str, int]  # "namespace/provider" -> maxDisksPerHost


def attempts_load(
    op: Operator, active: Mapping[str, set[str]], starting: Set[str] = frozenset()
) -> tuple[dict[str, int], dict[str, int]]:
    """Attempts running per node and per namespace: the active jobs (as the operator wrote
    their status, never as Pods of anybody's say so) and the reservations not yet seen.

    A reservation holds until the index shows its attempt, however late: an overloaded API
    server takes minutes to answer a start's writes, and the index lags as long. Only one
    whose start is over without the attempt recorded lapses, after RESERVATION_SECONDS."""
    now = time.monotonic()
    for job, held in list(op.reservations.items()):
        if job in active.get(held.node, set()) or (
            now - held.since > RESERVATION_SECONDS and not _holding(op, job, starting)
        ):
            del op.reservations[job]
    op.released &= {key for found in active.values() for key in found}  # the rest is seen
    keys = {(node, key) for node, found in active.items() for key in found if not _ended(op, key)}
    keys |= {(held.node, key) for key, held in op.reservations.items()}
    load: dict[str, int] = {}
    namespaces: dict[str, int] = {}
    for node, key in keys:
        load[node] = load.get(node, 0) + 1
        namespace = placement.namespace_of(key)
        namespaces[namespace] = namespaces.get(namespace, 0) + 1
    op.view.active = load
    return load, namespaces


def _ended(op: Operator, job: str) -> bool:
    """This operator saw the attempt's Pod end, or wrote the job's end: its slot is free
    before the index shows it."""
    return job in op.released or (op.written.get(job) or {}).get("phase") in TERMINAL_PHASES


def _holding(op: Operator, job: str, starting: Set[str]) -> bool:
    """The job's start is under way, or this operator recorded its attempt as running."""
    return job in starting or (op.written.get(job) or {}).get("phase") in ACTIVE_PHASES


def source_limits(
    op: Operator, reading: Mapping[str, set[str]], limits: Mapping[str, int]
) -> placement.SourceLimits:
    """Jobs reading from each ESXi host: the active ones and the reservations not yet seen."""
    counts = {host: len(keys) for host, keys in reading.items()}
    for key, held in op.reservations.items():
        host = held.source_host
        if host is not None and key not in reading.get(host, set()):
            counts[host] = counts.get(host, 0) + 1

    def limit(host: str) -> int:
        provider = host.rsplit("/", 1)[0]  # "namespace/provider/host"
        return limits.get(provider, provider_api.DEFAULT_MAX_DISKS_PER_HOST)

    return placement.SourceLimits(active=counts, limit=limit)


class Placer:
    """The loop and what it remembers between passes."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.changed = asyncio.Event()
        self.new: dict[str, Queued] = {}  # jobs queued or changed since the last pass
        self.starting: set[str] = set()  # jobs whose start is under way
        self.inputs: object = None  # what the last plan read besides the queue
        self.signature: object = None  # what the waiting reasons last given depend on
        self.due: str | None = None  # the earliest retryAfter not yet reached
        self.telling: dict[str, tuple[Body, str]] = {}  # waiting reasons to write
        self.teller: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        # A context of Kopf's object handling, where kopf.warn() finds its event queue: the
        # loop itself runs in the startup context, which has none.
        self.context: contextvars.Context | None = None

    def poke(self) -> None:
        """Something a plan reads changed: pass again soon."""
        self.changed.set()

    def queued(self, key: str, entry: Queued | None) -> None:
        """A job's watch event, with its queue entry (None: not queued). Called from Kopf's
        handling of the job, whose context the tasks the loop spawns then run in."""
        if self.context is None:
            self.context = contextvars.copy_context()
        if entry is not None:
            self.new[key] = entry
        else:
            self.new.pop(key, None)
        self.changed.set()

    def admitted(self, body: Body) -> None:
        """A job this operator just queued is placed now, not once its watch shows it: with
        thousands of jobs created at once, the watch runs seconds behind."""
        key = key_of(body)
        written = self.op.written.get(key)
        if written is not None:
            seen = {**body, "status": written}
            found = reconcile.queue_entry(seen)
            if found is not None:
                self.queued(key, Queued(found, seen))

    async def run(self, indices: Indices) -> None:
        while True:
            # While peering pauses this replica (or it has no job), only a change wakes it.
            await self._sleep(self._next_deadline() if self.op.acting() else None)
            if not self.op.acting():
                continue
            try:
                self.place(indices)
            except Exception:
                logger.exception("placement pass failed")
                if self.op.metrics is not None:
                    self.op.metrics.reconcile_errors.labels("place").inc()
                await asyncio.sleep(RETRY_SECONDS)
            await asyncio.sleep(PASS_GAP_SECONDS)

    async def _sleep(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        self.changed.clear()

    def _next_deadline(self) -> float | None:
        """Seconds until a retry's backoff or a reservation runs out, if any will."""
        deadlines = [
            held.since + RESERVATION_SECONDS - time.monotonic()
            for key, held in self.op.reservations.items()
            if not _holding(self.op, key, self.starting)
        ]
        if self.due is not None:
            deadlines.append(policy.parse_time(self.due).timestamp() - time.time())
        return max(0.0, min(deadlines)) + 0.01 if deadlines else None

    def place(self, indices: Indices) -> None:
        """One pass: start what the plan gives a slot, say why the others wait."""
        op = self.op
        nodes = [node for name in indices.nodes for node in indices.nodes[name]]
        active = {node: set(indices.active[node]) for node in indices.active}
        reading = {host: set(indices.reading[host]) for host in indices.reading}
        limits = {name: value for name in indices.limits for value in indices.limits[name]}
        load, namespaces = attempts_load(op, active, self.starting)
        sources = source_limits(op, reading, limits)
        op.view.slots = {node.name: node.slots for node in nodes}
        slots_for = op.settings.policy.slots_for
        new, self.new = self.new, {}
        now = op.now()
        due = self.due is not None and self.due <= now
        if due:
            self.due = None
        inputs = (nodes, load, namespaces, sources.active, limits)
        scope = placement.plan_scope(
            placement.free_slots(nodes, load), inputs != self.inputs, due, bool(new)
        )
        if scope is not placement.Scope.NONE:
            self.inputs = inputs
            entries = self._queue(indices, new) if scope is placement.Scope.ALL else new.values()
            runnable = {entry.job.key: entry for entry in self._runnable(entries, now)}
            chosen = placement.place(
                [entry.job for entry in runnable.values()],
                nodes,
                load,
                namespaces,
                slots_for,
                sources,
            )
            for job, node in chosen:
                self._start(runnable[job.key], node.name)
        reasons = placement.WaitingReasons(
            nodes, op.settings.node_label, namespaces, slots_for, sources
        )
        signature = placement.waiting_signature(nodes, namespaces, slots_for, sources)
        waiting: Iterable[Queued] = new.values()
        if signature != self.signature:
            self.signature = signature
            waiting = self._queue(indices, new)
        self._tell(waiting, reasons, now)

    def _queue(self, indices: Indices, new: Mapping[str, Queued]) -> list[Queued]:
        """The whole queue: the index, and the jobs queued since that it may not show yet."""
        entries = {entry.job.key: entry for entry in indices.queue.get("queue", [])}
        entries.update(new)
        return list(entries.values())

    def _runnable(self, entries: Iterable[Queued], now: str) -> Iterable[Queued]:
        """Jobs that may start now: past their backoff, not starting, and still queued as
        this operator last wrote them (the index is one event behind its own writes)."""
        for entry in entries:
            key, not_before = entry.job.key, entry.job.not_before
            if not_before is not None and not_before > now:
                self.due = not_before if self.due is None else min(self.due, not_before)
                continue
            written = self.op.written.get(key, {}).get("phase", Phase.QUEUED.value)
            if key not in self.starting and written == Phase.QUEUED.value:
                yield entry

    def _start(self, entry: Queued, node: str) -> None:
        key = entry.job.key
        self.op.reservations[key] = Reservation(node, time.monotonic(), entry.job.source_host)
        self.starting.add(key)
        self.spawn(self._starting(entry, node))

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        context = None if self.context is None else self.context.copy()
        task = asyncio.create_task(work, context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _starting(self, entry: Queued, node: str) -> None:
        try:
            await reconcile.start(self.op, entry.body, node, logger)
        except Exception:
            self.op.reservations.pop(entry.job.key, None)
            logger.exception("starting %s failed", entry.job.key)
            if self.op.metrics is not None:
                self.op.metrics.reconcile_errors.labels("place").inc()
        finally:
            self.starting.discard(entry.job.key)
            self.poke()  # a reservation held or given back, or a job to retry

    def _tell(self, entries: Iterable[Queued], reasons: placement.WaitingReasons, now: str) -> None:
        """Queue a reason for each waiting job whose status does not say it yet."""
        for entry in entries:
            job = entry.job
            if job.key in self.starting or (job.not_before is not None and job.not_before > now):
                continue
            why = reasons.of(job)
            written: dict[str, Any] = self.op.written.get(job.key) or dict(
                entry.body.get("status") or {}
            )
            queued = written.get("phase", Phase.QUEUED.value) == Phase.QUEUED.value
            if queued and written.get("message") != why and written.get("reason") != cond.RETRYING:
                self.telling[job.key] = (entry.body, why)
        if self.telling and (self.teller is None or self.teller.done()):
            self.teller = self.spawn(self._write_reasons())

    async def _write_reasons(self) -> None:
        """Write the queued reasons, a few at a time, apart from the pass: a reason for
        each of thousands of new jobs never holds up a placement."""
        while self.telling:
            batch = [self.telling.popitem() for _ in range(min(TELLERS, len(self.telling)))]
            done = await asyncio.gather(
                *(reconcile.tell_waiting(self.op, body, why) for _, (body, why) in batch),
                return_exceptions=True,
            )
            for (key, _), outcome in zip(batch, done, strict=True):
                if isinstance(outcome, Exception):
                    logger.error("writing why %s waits failed: %s", key, outcome)
                    if self.op.metrics is not None:
                        self.op.metrics.reconcile_errors.labels("place").inc()
