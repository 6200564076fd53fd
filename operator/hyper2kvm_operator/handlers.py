"""Every Kopf decorator of the operator, and nothing else: each handler calls one use case."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from prometheus_client import start_http_server

from hyper2kvm_operator import (
    api,
    attempts,
    job_state,
    placement,
    placer,
    provider_api,
    providers,
    reconcile,
)
from hyper2kvm_operator.kube import CONCURRENT_CALLS, KubeApi
from hyper2kvm_operator.metrics import OperatorMetrics
from hyper2kvm_operator.progress_reader import ProgressReader
from hyper2kvm_operator.settings import Settings
from hyper2kvm_operator.worker_pod import MANAGED_BY

JOBS = (api.GROUP, api.VERSION, api.PLURAL)
PROVIDERS = (api.GROUP, api.VERSION, provider_api.PLURAL)
# An indexer's None keeps the object's previous entries; an empty mapping removes them.
NOT_INDEXED: dict[Any, Any] = {}
Logger = logging.Logger | logging.LoggerAdapter[Any]
_OPERATOR: job_state.Operator | None = None
_PLACER: placer.Placer | None = None


def op() -> job_state.Operator:
    assert _OPERATOR is not None, "the startup handler has not run"
    return _OPERATOR


def poke() -> None:
    """Tell the placement loop that something it reads changed."""
    if _PLACER is not None:
        _PLACER.poke()


COUNTED: list[str] = ["place"]  # handlers (and the placement loop) whose failures are counted


def counted(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Count a job handler's failures in hyper2kvm_reconcile_errors_total; Kopf retries them."""
    COUNTED.append(handler.__name__)

    @functools.wraps(handler)
    async def run(**kwargs: Any) -> None:
        try:
            await handler(**kwargs)
        except kopf.TemporaryError:
            raise  # a retry Kopf was asked for (a server not reachable yet), not an error
        except Exception:
            metrics = op().metrics
            if metrics is not None:
                metrics.reconcile_errors.labels(handler.__name__).inc()
            raise

    return run


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    global _OPERATOR
    config = Settings.from_environment()
    # Progress and the last-handled spec live in annotations: status belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="hyper2kvm.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="hyper2kvm.io", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "hyper2kvm.io/operator"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.peering.lifetime = config.peering_lifetime_seconds
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    metrics = OperatorMetrics(lambda: operator.view)
    for handler in COUNTED:  # zero series from the start: increase() sees the first error
        metrics.reconcile_errors.labels(handler)
    operator = job_state.Operator(
        settings=config,
        kube=KubeApi(api_client(), on_write=metrics.api_writes.inc),
        progress=ProgressReader(config.worker_port, config.progress_timeout_seconds),
        clock=lambda: datetime.now(UTC),
        metrics=metrics,
    )
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    _OPERATOR = operator
    logger.info("hyper2kvm operator configured: %s", config)


def api_client() -> kubernetes.client.ApiClient:
    """A client with a connection for each thread that calls the API at once."""
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONCURRENT_CALLS
    return kubernetes.client.ApiClient(configuration)


@kopf.on.startup()
async def learn_service_ranges(logger: Logger, **_: Any) -> None:
    """The Service ranges, denied to HTTP sources (a Pod's ranges come with its node)."""
    ranges = await op().kube.service_ranges()
    op().cluster_networks.update(ranges)
    if not ranges:
        logger.warning(
            "no ServiceCIDR found: add the cluster's Service range to policy.http.denyNetworks"
        )


@kopf.on.startup()
async def start_placing(**kwargs: Any) -> None:
    """The one placement loop, over Kopf's indices (live views the watch streams fill)."""
    global _PLACER
    _PLACER = placer.Placer(op())
    op().replan = _PLACER.poke
    indices = placer.Indices(
        nodes=kwargs["worker_nodes"],
        active=kwargs["active_jobs"],
        queue=kwargs["queued_jobs"],
        reading=kwargs["reading_jobs"],
        limits=kwargs["provider_limits"],
    )
    task = asyncio.create_task(_PLACER.run(indices), name="placement loop")
    op().background.add(task)
    task.add_done_callback(op().background.discard)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    for task in list(op().background if _OPERATOR is not None else ()):
        task.cancel()
    if _OPERATOR is not None:
        await _OPERATOR.progress.close()
        await asyncio.to_thread(_OPERATOR.logins.close)


# ---------------------------------------------------------------------------- indices


@kopf.index("nodes")
def worker_nodes(
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[str, placement.WorkerNode]:
    poke()  # a node's change, even one that is no worker now (it may have been one)
    if not placement.is_worker(labels, op().settings.node_label):
        return NOT_INDEXED
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (status.get("conditions") or [])
    )
    slots = placement.node_slots(labels, annotations, op().settings.default_slots)
    node = placement.WorkerNode(
        name=name,
        labels=dict(labels),
        slots=slots,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
    )
    return {name: node}


@kopf.on.event("nodes")
def node_pod_ranges(spec: kopf.Spec, **_: Any) -> None:
    """Every node's Pod range joins the networks HTTP sources may not reach."""
    op().cluster_networks.update(str(cidr) for cidr in spec.get("podCIDRs") or [])


@kopf.index(*JOBS)
def active_jobs(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Jobs whose attempt holds a slot, by the node it was placed on. Counted from the
    status only the operator writes, not from Pods: anyone may label a Pod of their own."""
    node = reconcile.active_node(body)
    poke()
    return NOT_INDEXED if node is None else {node: job_state.key_of(body)}


@kopf.on.event("pods", labels=MANAGED_BY)
def worker_pod_changed(
    type: str | None,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    **_: Any,
) -> None:
    """Keep the worker Pods as the watch sees them, for the followers to look at instead of
    reading each Pod every interval; a worker that ended wakes its job's follower now."""
    op().watched_pod(f"{namespace}/{name}", None if type == "DELETED" else dict(body))
    if status.get("phase") not in ("Succeeded", "Failed"):
        return
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == api.KIND and owner.get("controller"):
            op().wake(f"{namespace}/{owner.get('name')}")


@kopf.index(*JOBS)
def reading_jobs(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Jobs whose attempt reads from an ESXi host, by "namespace/provider/host"."""
    host = reconcile.source_host(body) if reconcile.active_node(body) else None
    return NOT_INDEXED if host is None else {host: job_state.key_of(body)}


@kopf.index(*PROVIDERS)
def provider_limits(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str, int]:
    limit = spec.get("maxDisksPerHost") or provider_api.DEFAULT_MAX_DISKS_PER_HOST
    poke()
    return {f"{namespace}/{name}": int(limit)}


@kopf.index(*JOBS)
def queued_jobs(body: kopf.Body, **_: Any) -> dict[str, placer.Queued]:
    job_state.caught_up(op(), body)
    found = reconcile.queue_entry(body)
    entry = None if found is None else placer.Queued(found, body)
    if _PLACER is not None:
        _PLACER.queued(job_state.key_of(body), entry)
    return NOT_INDEXED if entry is None else {"queue": entry}


# ---------------------------------------------------------------------------- jobs


@kopf.on.resume(*JOBS)
@kopf.on.create(*JOBS)
@counted
async def admit(body: kopf.Body, **_: Any) -> None:
    await reconcile.admit(op(), body)
    if _PLACER is not None:
        _PLACER.admitted(body)


@kopf.on.delete(*JOBS, optional=True)
async def forget(body: kopf.Body, **_: Any) -> None:
    await reconcile.forget(op(), body)
    poke()  # its slot, if it held one, is free (Kopf drops its index entries unannounced)


@kopf.on.field(*JOBS, field="spec.cancel", new=True)
@counted
async def cancel(body: kopf.Body, **_: Any) -> None:
    await reconcile.cancel_queued(op(), body)


# One daemon for each job's whole life, not filtered by phase: Kopf never re-spawns a daemon
# that returned, and one stopped by a filter may miss the next attempt's quick restart.
@kopf.daemon(*JOBS, cancellation_timeout=10.0)
@counted
async def follow(body: kopf.Body, stopped: kopf.DaemonStopped, logger: Logger, **_: Any) -> None:
    poke()  # a running follower is what lets the placer act (job_state.Operator.acting)
    await attempts.follow(op(), body, stopped, logger)


# ---------------------------------------------------------------------------- providers


@kopf.timer(*PROVIDERS, interval=providers.CHECK_INTERVAL_SECONDS)
@counted
async def check_provider(body: kopf.Body, **_: Any) -> None:
    await providers.check(op(), body, providers.vsphere_probe)


@kopf.on.update(*PROVIDERS, field="spec")
@counted
async def recheck_changed_provider(body: kopf.Body, **_: Any) -> None:
    await providers.check(op(), body, providers.vsphere_probe)
