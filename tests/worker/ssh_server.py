"""A real OpenSSH server (on 127.0.0.1, or an address given) for the ssh source's tests:
its own host key, its own configuration, one client key allowed in; everything in a
temporary directory.

sshd runs as the user who runs the tests and lets only that user in (by the client key
made here), with SFTP served by sshd itself, as ESXi serves it.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.requirements import SSHD

_PRIVSEP = Path("/run/sshd")  # sshd started by root refuses to run without it
_START_SECONDS = 20.0


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    identity: Path  # the client's private key, allowed in
    known_hosts: Path  # the server's real host key, pinned
    host_key: Path

    def known_hosts_line(self, public_key: Path) -> str:
        key_type, key = public_key.read_text().split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key}\n"


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _config(directory: Path, host: str, port: int, host_key: Path, authorized: Path) -> Path:
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {host}\n"
        f"Port {port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"AllowUsers {getpass.getuser()}\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\n"
    )
    return config


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int) -> bool:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=1) as connection:
                return connection.recv(4).startswith(b"SSH-")
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def serve(directory: Path, host: str = "127.0.0.1") -> Iterator[SshServer]:
    """sshd on a free port of `host` (an IPv4 address) until the block ends; its log is
    `sshd.log`."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = keygen(directory / "host_key", "test host")
    identity = keygen(directory / "client_key", "test client")
    authorized = directory / "authorized_keys"
    authorized.write_text(identity.with_suffix(".pub").read_text())
    if os.geteuid() == 0 and not _PRIVSEP.is_dir():
        _PRIVSEP.mkdir(mode=0o755, exist_ok=True)
    for _ in range(3):  # another process may take the free port first
        port = _free_port(host)
        config = _config(directory, host, port, host_key, authorized)
        with (directory / "sshd.log").open("ab") as log:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log
            )
        if _wait_listening(process, host, port):
            break
        process.terminate()
        process.wait(10)
    else:
        raise AssertionError(f"sshd did not start: {(directory / 'sshd.log').read_text()}")
    server = SshServer(host, port, getpass.getuser(), identity, directory / "known_hosts",
                       host_key)  # fmt: skip
    server.known_hosts.write_text(server.known_hosts_line(host_key.with_suffix(".pub")))
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)
