"""kubelet's log endpoint for the test node agent, so that `kubectl logs` works.

The API server answers GET /api/v1/namespaces/{ns}/pods/{name}/log by proxying to the
kubelet of the Pod's node: https://<node address>:<status.daemonEndpoints.kubeletEndpoint.Port>
/containerLogs/{ns}/{pod}/{container}. This server answers that path for the Pods the agent
runs, from the ``<container>.log`` file the agent writes (stdout and stderr together), and
/healthz. An unknown Pod is a 404; a container of the Pod that the agent does not run (it runs
only the first) is a 400 with the reason, as kubelet answers for a container that has not
started. Every other kubelet path (exec, attach, port-forward, /pods, /stats, /metrics...)
answers 404: the agent has no such thing to offer, so ``kubectl exec``, ``attach`` and
``port-forward`` do not work.

Query parameters, as kubelet reads them:

follow=true
    keep sending what is appended until the container's process has exited and the file is
    read to its end, the client goes away, or the server stops
tailLines=N, limitBytes=N
    only the last N lines of the file; stop after N bytes of output
timestamps=true
    best effort: the file holds no times, so each line is prefixed (RFC 3339, UTC) with the
    file's modification time when the line was already there at the request, and with the
    time it was read when it arrived while following
sinceSeconds, sinceTime
    best effort as well: the lines already written are sent only when the file was modified
    after the cutoff (without per-line times that is all that is known); follow sends the rest
previous=true, stream=Stdout|Stderr
    400: one file holds every run of the container and both of its streams

A test harness on loopback: the server binds 127.0.0.1 only, presents a self-signed serving
certificate (the local API server has no --kubelet-certificate-authority, so it does not
verify it) and authenticates no client; any local user could read these files anyway.
"""

from __future__ import annotations

import io
import logging
import os
import select
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from tests.cluster.harness.pki import self_signed_serving_pair

HOST = "127.0.0.1"
CHUNK = 64 * 1024
FOLLOW_POLL = 0.1
# Bounds a client that connects and sends nothing (or stops reading) to a handler thread.
SOCKET_TIMEOUT = 30.0
_log = logging.getLogger("hyper2kvm.cluster.kubelet")


@dataclass(frozen=True)
class ContainerLog:
    """The one container the agent runs for a Pod: its name, log file and liveness."""

    container: str
    path: Path
    running: Callable[[], bool]


# (namespace, pod name) -> the Pod's container log, or None for a Pod the agent does not run.
Lookup = Callable[[str, str], ContainerLog | None]


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    timestamps: bool = False
    since: float | None = None  # a POSIX time

    @classmethod
    def parse(cls, query: str, now: float) -> LogOptions:
        params = urllib.parse.parse_qs(query)

        def last(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        def flag(name: str) -> bool:
            value = last(name)
            return value is not None and value.lower() in ("true", "1")

        def number(name: str, minimum: int) -> int | None:
            value = last(name)
            if value is None:
                return None
            try:
                parsed = int(value)
            except ValueError:
                raise BadRequest(f"{name}={value!r} is not an integer") from None
            if parsed < minimum:
                raise BadRequest(f"{name} must be at least {minimum}, not {parsed}")
            return parsed

        if flag("previous"):
            raise BadRequest(
                "previous=true is not available: the test node agent keeps one log file for "
                "every run of a container"
            )
        stream = last("stream")
        if stream not in (None, "", "All"):
            raise BadRequest(
                f"stream={stream} is not available: the test node agent writes stdout and "
                "stderr to one file (stream=All)"
            )
        since: float | None = None
        since_seconds = number("sinceSeconds", 1)
        if since_seconds is not None:
            since = now - since_seconds
        since_time = last("sinceTime")
        if since_time:
            try:
                since = datetime.fromisoformat(since_time.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise BadRequest(f"sinceTime={since_time!r} is not an RFC 3339 time") from None
        return cls(
            follow=flag("follow"),
            tail_lines=number("tailLines", 0),
            limit_bytes=number("limitBytes", 1),
            timestamps=flag("timestamps"),
            since=since,
        )


def rfc3339(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tail_offset(file: IO[bytes], size: int, lines: int) -> int:
    """Where the last ``lines`` lines of the first ``size`` bytes of ``file`` begin.

    A final newline ends the last line; an unterminated last line counts as a line too.
    """
    if lines <= 0:
        return size
    found = 0
    end = size
    while end > 0:
        start = max(0, end - CHUNK)
        file.seek(start)
        block = file.read(end - start)
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            if start + index != size - 1:  # not the newline that ends the file
                found += 1
                if found == lines:
                    return start + index + 1
        end = start
    return 0


class _Output:
    """Writes the log to the response as HTTP/1.1 chunks, with the limits and prefixes."""

    def __init__(self, stream: io.BufferedIOBase, options: LogOptions) -> None:
        self.stream = stream
        self.timestamps = options.timestamps
        self.remaining = options.limit_bytes
        self.line_start = True

    @property
    def full(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def write(self, data: bytes, stamp: float) -> None:
        if self.timestamps:
            prefix = f"{rfc3339(stamp)} ".encode()
            *ended, rest = data.split(b"\n")
            pieces = [line + b"\n" for line in ended] + ([rest] if rest else [])
            prefixed = []
            for piece in pieces:
                prefixed.append(prefix + piece if self.line_start else piece)
                self.line_start = piece.endswith(b"\n")
            data = b"".join(prefixed)
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
        if data:
            self.stream.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.stream.flush()

    def close(self) -> None:
        self.stream.write(b"0\r\n\r\n")
        self.stream.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, lookup: Lookup, context: ssl.SSLContext, stop: threading.Event) -> None:
        super().__init__((HOST, 0), _Handler)
        self.lookup = lookup
        self.stopping = stop
        # The handshake happens in the handler's thread, so a slow client holds only that one.
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("kubelet endpoint: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def setup(self) -> None:
        self.request.settimeout(SOCKET_TIMEOUT)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("kubelet endpoint: " + format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(part) for part in url.path.split("/")]
        if url.path == "/healthz":
            self._text(200, "ok")
        elif len(parts) == 5 and parts[0] == "" and parts[1] == "containerLogs":
            self._logs(parts[2], parts[3], parts[4], url.query)
        else:
            self._text(
                404,
                f"{url.path} is not served: the test node agent answers only /containerLogs "
                "and /healthz (no exec, attach or port-forward)",
            )

    def _text(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _logs(self, namespace: str, pod: str, container: str, query: str) -> None:
        found = self.server.lookup(namespace, pod)
        if found is None:
            self._text(404, f'pod "{namespace}/{pod}" is not run by the test node agent')
            return
        if container != found.container:
            # The API server lets only containers of the Pod's spec through; one the agent
            # does not run never starts, which kubelet answers with 400 "waiting to start"
            # (a 404's text would not reach the client: the API server replaces it).
            self._text(
                400,
                f'container "{container}" in pod "{namespace}/{pod}" is not run by the test '
                f'node agent: it runs only the first container, "{found.container}"',
            )
            return
        try:
            options = LogOptions.parse(query, datetime.now(UTC).timestamp())
        except BadRequest as exc:
            self._text(400, str(exc))
            return
        try:
            file = found.path.open("rb")
        except FileNotFoundError:
            self._text(
                400,
                f'container "{container}" in pod "{namespace}/{pod}" is waiting to start: '
                "its process has not been started yet",
            )
            return
        with file:
            self._stream(file, found, options)

    def _stream(self, file: IO[bytes], found: ContainerLog, options: LogOptions) -> None:
        info = os.fstat(file.fileno())
        size, written = info.st_size, info.st_mtime
        start = 0
        if options.since is not None and written < options.since:
            start = size
        if options.tail_lines is not None:
            start = max(start, tail_offset(file, size, options.tail_lines))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        out = _Output(self.wfile, options)
        try:
            file.seek(start)
            position = start
            while position < size and not out.full:
                data = file.read(min(CHUNK, size - position))
                if not data:
                    break
                position += len(data)
                out.write(data, written)
            while options.follow and not out.full:
                # Liveness first: when the process had exited, one more empty read means
                # everything it wrote has been sent.
                running = found.running()
                data = file.read(CHUNK)
                if data:
                    out.write(data, datetime.now(UTC).timestamp())
                    continue
                if not running or self.server.stopping.wait(FOLLOW_POLL) or self._client_gone():
                    break
            out.close()
        except OSError as exc:  # the client went away (the API server closed the stream)
            _log.debug("kubelet endpoint: log stream ended: %s", exc)

    def _client_gone(self) -> bool:
        """Whether the peer closed the connection, checked without blocking."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return bool(sock.recv(1) == b"")
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # TLS bytes that are not (yet) data: still connected
        except OSError:
            return True
        finally:
            sock.settimeout(SOCKET_TIMEOUT)


class KubeletServer:
    """Serves /containerLogs and /healthz over HTTPS on 127.0.0.1 until stop()."""

    def __init__(self, lookup: Lookup, directory: Path, *, names: Sequence[str] = ()) -> None:
        self.lookup = lookup
        self.directory = directory
        self.names = tuple(names)
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the kubelet endpoint is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        sans = ["IP:127.0.0.1", "DNS:localhost", *(f"DNS:{name}" for name in self.names)]
        pair = self_signed_serving_pair(
            self.directory, "serving", subject="/CN=hyper2kvm-node-agent", sans=sans
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        context.set_alpn_protocols(["http/1.1"])
        self._stop.clear()
        self._server = _Server(self.lookup, context, self._stop)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="node-agent-kubelet",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end the log streams that are following."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
