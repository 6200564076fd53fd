"""The worker's HTTP endpoints: /progress (JSON), /metrics (Prometheus text), /healthz.

This is how the operator follows a worker Pod: over the Pod IP, so the worker holds no
Kubernetes credentials at all.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from hyper2kvm_worker.metrics import ProgressCollector
from hyper2kvm_worker.protocol import Progress

MIN_FREE_BYTES = 256 << 20  # below this an output volume is reported unhealthy
# Anyone who reaches the Pod IP may connect: at most this many at once, each given this
# long to send its request, so idle connections cannot take every thread of the worker.
MAX_CONNECTIONS = 16
REQUEST_SECONDS = 5.0


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections is accepted (and the excess closed)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the operator asks again in a moment
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` into a bind address (IPv6 hosts in brackets)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator reads it over the Pod IP
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT")
    return host, int(port)


def health(volumes: list[Path]) -> tuple[bool, dict[str, object]]:
    me = psutil.Process(os.getpid())
    checks: dict[str, object] = {
        "pid": me.pid,
        "status": me.status(),
        "rss_bytes": me.memory_info().rss,
        "children": len(me.children(recursive=True)),
    }
    healthy = me.status() != psutil.STATUS_ZOMBIE
    free: dict[str, int] = {}
    for volume in volumes:
        try:
            free[str(volume)] = psutil.disk_usage(str(volume)).free
        except OSError:
            free[str(volume)] = -1
    checks["free_bytes"] = free
    if any(value < MIN_FREE_BYTES for value in free.values()):
        healthy = False
    return healthy, checks


class StatusServer:
    def __init__(
        self,
        address: tuple[str, int],
        job_name: str,
        snapshot: Callable[[], Progress],
        volumes: list[Path],
    ) -> None:
        registry = CollectorRegistry()
        registry.register(ProgressCollector(job_name, snapshot))

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_SECONDS  # a connection that sends nothing is closed

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/progress":
                    self._send(200, "application/json", snapshot().model_dump_json().encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/healthz":
                    ok, checks = health(volumes)
                    body = json.dumps({"healthy": ok, **checks}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /progress, /metrics, /healthz\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # requests are polled every few seconds; logging them is noise

        self._server = _BoundedServer(address, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
