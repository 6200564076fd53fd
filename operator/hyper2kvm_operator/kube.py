"""The Kubernetes API adapter: every call the operator makes, retried and its writes counted.

The `kubernetes` client is synchronous, so calls run in threads; Kopf's event loop stays
free. The write count feeds the operator's metrics (the API budget of a job).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
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


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in _RETRIED_STATUSES
    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError)


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
            result: T = await asyncio.to_thread(function, *args, **kwargs)
            return result
    raise AssertionError("unreachable: tenacity re-raises the last error")


class KubeApi:
    def __init__(self, api_client: k8s.ApiClient, on_write: Callable[[], None]) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._on_write = on_write

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of `.status`: no resourceVersion, so it cannot conflict."""
        self._on_write()
        await _call(
            functools.partial(
                self._custom.patch_namespaced_custom_object_status,
                _content_type="application/merge-patch+json",  # the client's default is JSON patch
            ),
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
            {"status": status},
        )

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a ConfigMap or Pod; False when it exists already (a restart's retry)."""
        self._on_write()
        namespace = manifest["metadata"]["namespace"]
        body = cast(Any, manifest)  # the client accepts plain manifests as well as its models
        try:
            if manifest["kind"] == "Pod":
                await _call(self._core.create_namespaced_pod, namespace, body)
            else:
                await _call(self._core.create_namespaced_config_map, namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod = await _call(self._core.read_namespaced_pod, name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        result: dict[str, Any] = self._core.api_client.sanitize_for_serialization(pod)
        return result

    async def delete_pod(self, namespace: str, name: str, grace: int = 30) -> None:
        self._on_write()
        try:
            await _call(
                self._core.delete_namespaced_pod, name, namespace, grace_period_seconds=grace
            )
        except ApiException as error:
            if error.status != 404:
                raise
