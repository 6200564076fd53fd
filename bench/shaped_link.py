"""A web server behind a link of known rate and latency, for the remote benchmarks.

nginx (Debian's nginx-light) serves a folder inside a network namespace of the bench's own,
reached over a veth pair whose far end is rate-limited with tc's token bucket (this kernel
has tbf but no netem). Latency is added by a small proxy in front of nginx, inside the
namespace: every chunk a client sends (the requests) is held `latency` seconds before it is
passed on, so each HTTP request costs one round trip more; responses flow back with
splice(2), untouched. Stopping the proxy for a while cuts the link: open connections are
reset and new ones refused, as when a datastore or a router drops.

Run as a module, this file is that proxy: `shaped_link.py proxy LISTEN_PORT TARGET_PORT MS`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_PORT = 8080  # nginx, inside the namespace
PROXY_PORT = 80  # what clients reach through the link
PIPE_SIZE = 1 << 20

NGINX_CONF = """\
daemon off;
user root;  # the disks are kept in the invoking user's cache
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@dataclass
class ShapedLink:
    namespace: str
    address: str  # the server's side of the link
    latency_ms: float
    work: Path
    proxy: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"http://{self.address}:{PROXY_PORT}/{name}"

    def start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, __file__, "proxy",
             str(PROXY_PORT), str(SERVER_PORT), str(self.latency_ms)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((self.address, PROXY_PORT)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the latency proxy did not start")

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.send_signal(signal.SIGKILL)
            self.proxy.wait()
            self.proxy = None

    def cut(self, seconds: float) -> None:
        """The link goes away for `seconds`: connections reset, new ones refused."""
        self.stop_proxy()
        time.sleep(seconds)
        self.start_proxy()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@contextlib.contextmanager
def shaped_link(
    root: Path, work: Path, rate: str, latency_ms: float, index: int = 0
) -> Iterator[ShapedLink]:
    """nginx serving `root` at `rate` (tc syntax, e.g. 1gbit) and `latency_ms` per request."""
    namespace = f"h2kbench{os.getpid()}x{index}"
    outside, inside = f"h2kb{os.getpid() % 100000}o", f"h2kb{os.getpid() % 100000}i"
    subnet = 10 + (os.getpid() + index) % 200
    here, there = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    _ip("netns", "add", namespace)
    nginx = None
    link = ShapedLink(namespace, there, latency_ms, work)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("addr", "add", f"{here}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{there}/30", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        # The server's sending side is the bottleneck, as a datastore's uplink would be.
        subprocess.run(
            ["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", inside, "root",
             "tbf", "rate", rate, "burst", "512kb", "latency", "20ms"],
            check=True,
        )  # fmt: skip
        (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, port=SERVER_PORT, root=root))
        nginx = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "nginx", "-c", str(work / "nginx.conf"),
             "-e", str(work / "nginx-error.log")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        link.start_proxy()
        yield link
    finally:
        link.stop_proxy()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


# ----------------------------------------------------------------------------- the proxy


def _forward_delayed(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Client to server: each chunk waits `delay` before it is passed on."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            time.sleep(delay)
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _forward_spliced(source: socket.socket, sink: socket.socket) -> None:
    """Server to client, through a pipe in the kernel: the data is never copied to Python."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(write_end, 1031, PIPE_SIZE)  # F_SETPIPE_SZ
    try:
        while True:
            moved = os.splice(source.fileno(), write_end, PIPE_SIZE)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _serve_one(client: socket.socket, target_port: int, delay: float) -> None:
    with client, socket.create_connection(("127.0.0.1", target_port)) as server:
        for end in (client, server):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_forward_spliced, args=(server, client), daemon=True)
        back.start()
        _forward_delayed(client, server, delay)
        back.join()


def proxy(listen_port: int, target_port: int, latency_ms: float) -> None:
    listener = socket.create_server(("0.0.0.0", listen_port), backlog=128)  # noqa: S104
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=_serve_one, args=(client, target_port, latency_ms / 1000), daemon=True
        ).start()


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    proxy(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
