"""A small JSON view of the Kubernetes API on top of the ``kubernetes`` client's ApiClient.

The harness works on objects as plain dicts with the API's own field names (status.podIP,
valueFrom.fieldRef...), which keeps the node agent close to what kubelet reads and writes.
The ApiClient still does the connection handling, TLS and authentication.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

Obj = dict[str, Any]
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def api_client_from_kubeconfig(path: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient for the current context of ``path`` (default: $KUBECONFIG)."""
    api = k8s_config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    return cast(k8s_client.ApiClient, api)


class KubeError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body
        super().__init__(f"{method} {path}: HTTP {status}: {self.message}")


class Kube:
    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self.api_client = api_client

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        query: dict[str, str | int] | None = None,
        content_type: str = "application/json",
        timeout: float | None = 30.0,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(*params, _request_timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        query: dict[str, str | int] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        resp = self._call(method, path, body=body, query=query, content_type=content_type)
        data = resp.read()
        text = data.decode() if isinstance(data, bytes) else str(data)
        if not 200 <= resp.status < 300:
            raise KubeError(method, path, resp.status, text)
        return cast(Obj, json.loads(text)) if text else {}

    def get(self, path: str, **query: str | int) -> Obj:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Obj, content_type: str = STRATEGIC) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> Obj | None:
        """Delete; a missing object is not an error (the goal is that it is gone)."""
        try:
            return self.request("DELETE", path, body=body)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int) -> Iterator[Obj]:
        """Watch events ({"type", "object"}) from ``resource_version``; ends at the timeout."""
        query: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        resp = self._call("GET", path, query=query, timeout=timeout_seconds + 10)
        if resp.status != 200:
            raise KubeError("WATCH", path, resp.status, resp.read().decode(errors="replace"))
        try:
            # One JSON event per line; a chunk may end in the middle of a line.
            pending = b""
            for chunk in resp.response.stream(amt=None, decode_content=False):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if line.strip():
                        yield cast(Obj, json.loads(line))
        finally:
            resp.response.release_conn()


def list_and_watch(
    kube: Kube,
    path: str,
    handle: Callable[[str, Obj], None],
    stop: threading.Event,
    *,
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Feed ``handle(event_type, object)`` with every object and change under ``path`` until
    ``stop`` is set: a list first (as ADDED), then watches resumed from the last resourceVersion,
    relisting when the server says the version is too old (410 Gone).

    Watches are short so that ``stop`` is noticed within seconds.
    """
    resource_version = ""
    while not stop.is_set():
        try:
            if not resource_version:
                listing = kube.get(path)
                resource_version = listing["metadata"]["resourceVersion"]
                for item in listing.get("items", []):
                    handle("ADDED", item)
            for event in kube.watch(path, resource_version, timeout_seconds=5):
                obj = event.get("object", {})
                if event.get("type") == "ERROR":
                    # 410 Gone: our version was compacted away; start from a fresh list.
                    resource_version = ""
                    break
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if event.get("type") != "BOOKMARK":
                    handle(str(event.get("type")), obj)
                if stop.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - a broken connection must not end the loop
            if stop.is_set():
                return
            if on_error is not None:
                on_error(exc)
            stop.wait(1.0)
