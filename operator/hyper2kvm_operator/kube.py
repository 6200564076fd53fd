"""The Kubernetes API adapter: every call the operator makes, retried and its writes counted.

The `kubernetes` client is synchronous, so calls run in threads; Kopf's event loop stays
free. The write count feeds the operator's metrics (the API budget of a job).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from hyper2kvm_operator import api

T = TypeVar("T")


_RETRIED_STATUSES = {429, 500, 502, 503, 504}


class Refused(Exception):
    """The API server refused to create an object; `message` is its own words."""

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"{kind} {name}: HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """A refusal that passes by itself: a namespace's ResourceQuota is full for now, or
        not yet counted."""
        quota = "exceeded quota" in self.message or "status unknown for quota" in self.message
        return self.status == 403 and quota


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in _RETRIED_STATUSES
    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError)


# Client calls block, so each runs on a thread: of a pool as large as the client's connection
# pool (asyncio's default pool has 6 threads on 2 cores, and a hundred jobs starting at once
# would queue behind them).
CONCURRENT_CALLS = 32
_CALLS = ThreadPoolExecutor(max_workers=CONCURRENT_CALLS, thread_name_prefix="kube-api")


async def _call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a client call in a thread, retrying what a busy or restarting API server causes."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(_transient),
        wait=wait_exponential_jitter(initial=0.2, max=5),
        stop=stop_after_attempt(6),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            call = functools.partial(function, *args, **kwargs)
            result: T = await asyncio.get_running_loop().run_in_executor(_CALLS, call)
            return result
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def _unless_missing(function: Callable[..., T], *args: Any) -> T | None:
    """`function(*args)` through `_call`; None when the object does not exist (404)."""
    try:
        return await _call(function, *args)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _decoded(data: Mapping[str, bytes | str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode("utf-8", "replace")
            for key, value in (data or {}).items()}  # fmt: skip


class NotServed(Exception):
    """The API server serves no such resource (its CRD is not installed)."""


class KubeApi:
    def __init__(self, api_client: k8s.ApiClient, on_write: Callable[[], None]) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._networking = k8s.NetworkingV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._on_write = on_write

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of `.status`: no resourceVersion, so it cannot conflict."""
        await self.patch_status(api.PLURAL, namespace, name, status)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a ConfigMap, Secret, PersistentVolumeClaim or Pod. When one of that name
        exists (a restart's retry, or somebody else's object), it is returned for the caller
        to judge (a Secret without its data); None when created. Refused when the API
        server will not have it (admission, quota, validation)."""
        self._on_write()
        meta = manifest["metadata"]
        namespace, name, kind = meta["namespace"], meta["name"], manifest["kind"]
        body = cast(Any, manifest)  # the client accepts plain manifests as well as its models
        calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Pod": (self._core.create_namespaced_pod, self._core.read_namespaced_pod),
            "ConfigMap": (
                self._core.create_namespaced_config_map,
                self._core.read_namespaced_config_map,
            ),
            "Secret": (self._core.create_namespaced_secret, self._core.read_namespaced_secret),
            "PersistentVolumeClaim": (
                self._core.create_namespaced_persistent_volume_claim,
                self._core.read_namespaced_persistent_volume_claim,
            ),
        }
        create, read = calls[kind]
        try:
            await _call(create, namespace, body)
        except ApiException as error:
            if error.status == 409:
                existing = self._plain(await _call(read, name, namespace))
                assert existing is not None
                existing.pop("data", None)  # a Secret's: its caller judges the owner only
                return existing
            if error.status in (400, 403, 422):
                raise Refused(kind, name, error.status, _api_message(error)) from error
            raise
        return None

    async def apply_network_policy(self, manifest: dict[str, Any]) -> None:
        """Create the NetworkPolicy, or bring an existing one of that name to `manifest`."""
        self._on_write()
        meta = manifest["metadata"]
        body = cast(Any, manifest)
        try:
            await _call(self._networking.create_namespaced_network_policy, meta["namespace"], body)
        except ApiException as error:
            if error.status != 409:
                raise
            await _call(
                self._networking.replace_namespaced_network_policy,
                meta["name"],
                meta["namespace"],
                body,
            )

    async def service_ranges(self) -> list[str]:
        """The cluster's Service ranges (ServiceCIDR objects); [] where the API has none."""
        try:
            found = await _call(self._networking.list_service_cidr)
        except ApiException as error:
            if error.status in (403, 404):
                return []
            raise
        return [cidr for item in found.items if item.spec for cidr in item.spec.cidrs or []]

    async def _read_secret(self, namespace: str, name: str) -> k8s.V1Secret | None:
        return await _unless_missing(self._core.read_namespaced_secret, name, namespace)

    async def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The labels of a Secret (None when it does not exist); its data is not kept."""
        secret = await self._read_secret(namespace, name)
        if secret is None:
            return None
        meta = secret.metadata
        return dict((meta.labels if meta is not None else None) or {})

    async def secret(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        """A Secret's labels and decoded data; None when it does not exist."""
        secret = await self._read_secret(namespace, name)
        if secret is None:
            return None
        labels = dict((secret.metadata.labels if secret.metadata is not None else None) or {})
        return labels, _decoded(secret.data)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        """A JSON merge patch of a hyper2kvm.io object's `.status`."""
        self._on_write()
        await _call(
            functools.partial(
                self._custom.patch_namespaced_custom_object_status,
                _content_type="application/merge-patch+json",
            ),
            api.GROUP,
            api.VERSION,
            namespace,
            plural,
            name,
            {"status": status},
        )

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod as the JSON the API server sent: followers read every running job's Pod
        each interval, and building the client's model on the way costs twice as much."""
        read = functools.partial(self._core.read_namespaced_pod, _preload_content=False)
        raw: Any = await _unless_missing(read, name, namespace)  # a urllib3 response
        if raw is None:
            return None
        try:
            return cast(dict[str, Any], json.loads(raw.data))
        finally:
            raw.release_conn()  # back to the pool now, not whenever the response is collected

    async def delete_pod(self, namespace: str, name: str, grace: int = 30) -> None:
        self._on_write()
        try:
            await _call(
                self._core.delete_namespaced_pod, name, namespace, grace_period_seconds=grace
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def owned_secret(
        self, namespace: str, name: str, owner_uid: str
    ) -> dict[str, str] | None:
        """A Secret's decoded data, only when the object of `owner_uid` controls it."""
        secret = await self._read_secret(namespace, name)
        if secret is None:
            return None
        owners = (secret.metadata.owner_references if secret.metadata is not None else None) or []
        if not any(ref.uid == owner_uid and ref.controller for ref in owners):
            return None
        return _decoded(secret.data)

    async def delete_secret(self, namespace: str, name: str) -> None:
        self._on_write()
        try:
            await _call(self._core.delete_namespaced_secret, name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    async def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A hyper2kvm.io object of the namespace; None when there is none of that name."""
        found = await _unless_missing(
            self._custom.get_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            plural,
            name,
        )
        return cast(dict[str, Any] | None, found)

    async def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._core.read_namespaced_persistent_volume_claim
        return self._plain(await _unless_missing(read, name, namespace))

    def _plain(self, model: Any) -> dict[str, Any] | None:
        """A client model as the plain mapping the API server sent; None stays None."""
        if model is None:
            return None
        result: dict[str, Any] = self._core.api_client.sanitize_for_serialization(model)
        return result

    async def annotate_claim(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Set (or, for None, remove) annotations of a claim: a merge patch of those alone."""
        self._on_write()
        await _call(
            self._core.patch_namespaced_persistent_volume_claim,
            name,
            namespace,
            {"metadata": {"annotations": dict(annotations)}},
        )

    async def create_virtual_machine(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a KubeVirt VirtualMachine; the one of that name when it exists (for the
        caller to judge), None when created. NotServed when KubeVirt is not installed."""
        self._on_write()
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        where = ("kubevirt.io", "v1", namespace, "virtualmachines")
        try:
            await _call(self._custom.create_namespaced_custom_object, *where, manifest)
        except ApiException as error:
            if error.status == 409:
                found = await _call(self._custom.get_namespaced_custom_object, *where, name)
                return cast(dict[str, Any], found)
            if error.status == 404:
                raise NotServed("virtualmachines.kubevirt.io") from error
            if error.status in (400, 403, 422):
                raise Refused("VirtualMachine", name, error.status, _api_message(error)) from error
            raise
        return None
