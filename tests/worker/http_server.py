"""A local HTTP server with Range support (nbdkit's curl plugin needs it), optionally slow,
optionally HTTPS and asking for a session cookie as a vSphere datastore does."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@contextmanager
def serve(
    directory: Path,
    bytes_per_second: int | None = None,
    fail_first: int = 0,
    host: str = "127.0.0.1",
    redirects: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    cookie: str | None = None,
    served: list[int] | None = None,
    drop: tuple[int, int] = (0, 0),
) -> Iterator[str]:
    """Serve `directory` on `host` at a free port; yields the base URL.

    `redirects` maps request paths to the URL a 302 sends the client to.

    `fail_first` requests are answered 503 first: an outage that passes.

    `served`, when given, gets the number of body bytes sent appended for every GET.

    `drop` (after, count): once `after` body bytes have been sent in all, the next `count`
    GETs have their connection closed halfway through the body, as a link that drops.

    `tls` (certificate, key) serves HTTPS; with `cookie`, a request without exactly that
    Cookie header is answered 401, as vSphere answers an expired session.
    """
    failures = [fail_first]
    sent_total, drops_left = [0], [drop[1]]
    lock = threading.Lock()
    # One budget for all connections: clients read in parallel (nbdkit, qemu's coroutines).
    next_send = [time.monotonic()]

    def throttle(size: int) -> None:
        if not bytes_per_second:
            return
        with lock:
            start = max(next_send[0], time.monotonic())
            next_send[0] = start + size / bytes_per_second
        time.sleep(max(0.0, start - time.monotonic()))

    def outage() -> bool:
        with lock:
            if failures[0] > 0:
                failures[0] -= 1
                return True
            return False

    class Handler(BaseHTTPRequestHandler):
        def _target(self) -> Path | None:
            """The requested file, or None after sending the error (an outage, a 404) or a
            redirect."""
            if outage():
                self.send_error(503)
                return None
            if cookie is not None and self.headers.get("Cookie") != cookie:
                self.send_error(401)
                return None
            if redirects and self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            name = urllib.parse.unquote(self.path.lstrip("/").split("?", 1)[0])
            path = (directory / name).resolve()
            if path.is_file() and path.is_relative_to(directory.resolve()):
                return path
            self.send_error(404)
            return None

        def do_HEAD(self) -> None:
            target = self._target()
            if target is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(target.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            target = self._target()
            if target is None:
                return
            size = target.stat().st_size
            match = _RANGE.match(self.headers.get("Range", ""))
            start, end = 0, size - 1
            if match:
                start = int(match[1])
                end = min(int(match[2]) if match[2] else size - 1, size - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            with lock:
                dropping = sent_total[0] >= drop[0] and drops_left[0] > 0
                drops_left[0] -= dropping
            sent = 0
            with target.open("rb") as stream:
                stream.seek(start)
                remaining = end - start + 1
                if dropping:
                    remaining //= 2
                while remaining > 0:
                    chunk = stream.read(min(remaining, 64 * 1024))
                    if not chunk:
                        break
                    throttle(len(chunk))
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    remaining -= len(chunk)
                    sent += len(chunk)
            with lock:
                sent_total[0] += sent
                if served is not None:
                    served.append(sent)
            if dropping:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
