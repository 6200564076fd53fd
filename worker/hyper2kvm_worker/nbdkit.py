"""NBD servers on a private Unix socket: nbdkit for a source (HTTP URL, a disk inside an
OVA, a file over SSH, a file in a vSphere datastore), and qemu-nbd for an image qemu opens
with options only this process can give (a pinned source handed on to a process that
cannot inherit descriptors, such as the libguestfs appliance).

qemu then reads `nbd+unix:///?socket=...` as if it were a local file, so remote and
archived disks convert without being downloaded or extracted first.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from hyper2kvm_worker.errors import Reason, TransientFailure
from hyper2kvm_worker.tools import ToolRunner, require, stop_group

NBDKIT_PACKAGE = "nbdkit"
RANGE_READER = Path(__file__).with_name("range_reader.py")
# nbdkit's Python is the system's: on a PATH that leads to another Python (a virtualenv,
# pyenv), it would load that one's standard library and fail.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_START_TIMEOUT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 30.0
_SOCKET_BASE_MAX = 60  # + "/hyper2kvm-nbd-XXXXXXXX/nbd.sock" stays under 108


def _socket_base() -> str | None:
    """A writable directory short enough for a Unix socket path (108 bytes at most).

    TMPDIR comes first (a Pod's scratch volume); a long one (a deep host path) gives way
    to /tmp or /dev/shm.
    """
    for base in (tempfile.gettempdir(), "/tmp", "/dev/shm"):  # noqa: S108 - fallbacks only
        if len(base) <= _SOCKET_BASE_MAX and os.access(base, os.W_OK | os.X_OK):
            return base
    return None


@dataclass(frozen=True)
class ServeSpec:
    plugin: str
    params: tuple[str, ...]
    filters: tuple[str, ...] = ()
    description: str = field(default="", compare=False)  # for error messages, without secrets


class NbdServer:
    """One read-only NBD server on a private Unix socket; a context manager that always
    stops it. `command(socket)` is its command line; `tool` names it in messages."""

    def __init__(
        self,
        runner: ToolRunner,
        command: Callable[[Path], list[str]],
        tool: tuple[str, str],
        description: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self._runner = runner
        self._env = env
        self._command = command
        self._tool, self._package = tool
        self._description = description
        self._scratch = tempfile.TemporaryDirectory(prefix="hyper2kvm-nbd-", dir=_socket_base())
        self.socket = Path(self._scratch.name) / "nbd.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    def __enter__(self) -> NbdServer:
        require(self._tool, self._package)
        self._process = self._runner.spawn(
            self._command(self.socket), stdout=subprocess.DEVNULL, env=self._env
        )
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not self.socket.exists():
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                self._close()
                last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
                raise TransientFailure(
                    Reason.SOURCE_UNREACHABLE,
                    f"{self._tool} could not serve {self._description}: {last}",
                )
            if time.monotonic() > deadline:
                self._close()
                raise TransientFailure(
                    Reason.TOOL_FAILED,
                    f"{self._tool} did not start within {_START_TIMEOUT_SECONDS}s",
                )
            self._runner.cancel.raise_if_cancelled()
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()

    def errors(self) -> str:
        """Stop the server and return the last error it logged (nbdkit's plugins report a
        failed connection only there; the NBD client just sees no export)."""
        process = self._process
        if process is None or process.stderr is None:
            return ""
        stop_group(process)
        lines = process.stderr.read().decode(errors="replace").strip().splitlines()
        errors = [line for line in lines if "error:" in line] or lines
        return errors[-1].split("error:", 1)[-1].strip()[:300] if errors else ""

    def _close(self) -> None:
        if self._process is not None:
            stop_group(self._process)
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None
        self._scratch.cleanup()


def nbdkit_server(runner: ToolRunner, spec: ServeSpec) -> NbdServer:
    def command(socket: Path) -> list[str]:
        return [
            "nbdkit",
            "--foreground",
            "--readonly",
            "--exit-with-parent",
            "--unix",
            str(socket),
            *(f"--filter={name}" for name in spec.filters),
            spec.plugin,
            *spec.params,
        ]

    env = None
    if spec.plugin == "python":
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = _SYSTEM_PATH
    return NbdServer(runner, command, ("nbdkit", NBDKIT_PACKAGE), spec.description, env)


def qemu_nbd_server(runner: ToolRunner, image: str, fmt: str, description: str) -> NbdServer:
    """`image` as qemu opens it (guest-visible content), read-only, for any reader."""

    def command(socket: Path) -> list[str]:
        return ["qemu-nbd", "--read-only", "--persistent", "--shared=0", f"--format={fmt}",
                f"--socket={socket}", image]  # fmt: skip

    return NbdServer(runner, command, ("qemu-nbd", "qemu-utils"), description)


# Reopen a dropped connection (the retry filter) and retry one failed read (retry-request):
# a long copy survives a network blip; a server that stays away still fails in about a minute.
RETRY_FILTERS = ("retry", "retry-request")


def ssh_spec(
    host: str,
    port: int,
    user: str,
    path: str,
    identity: str,
    known_hosts: str,
    *,
    retry: bool,
) -> ServeSpec:
    """nbdkit's ssh plugin (SFTP), with the host key checked against `known_hosts` only:
    no local SSH configuration is read (config=), and the check is never turned off."""
    params = (
        f"host={host}", f"port={port}", f"user={user}", f"path={path}",
        f"identity={identity}", f"known-hosts={known_hosts}", "verify-remote-host=true",
        "config=", f"timeout={int(CONNECT_TIMEOUT_SECONDS)}",
    )  # fmt: skip
    return ServeSpec(
        plugin="ssh",
        params=params,
        filters=RETRY_FILTERS if retry else (),
        description=f"{user}@{host}:{port}{path}",
    )


# A failed read is repeated twice, 1 s apart (retry-request); then the connection is reopened
# and the read repeated every second for a minute (retry): a cut of a few seconds costs
# about its own length, and a server that stays away fails the read in about a minute.
HTTP_RETRY = (
    "retry-request-retries=2", "retry-request-delay=1",
    "retries=60", "retry-delay=1", "retry-exponential=no",
)  # fmt: skip


def http_spec(
    url: str,
    size: int,
    description: str,
    *,
    user: str | None = None,
    password_file: str | None = None,
    cookie_file: str | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
    https_only: bool = False,
) -> ServeSpec:
    """One file over HTTP(S) through range_reader.py, with the retry filters: `url` and
    nowhere else (redirects were followed and checked by http_probe), secrets read by the
    plugin from their files, never on a command line."""
    params = [str(RANGE_READER), f"url={url}", f"size={size}",
              f"protocols={'https' if https_only else 'http,https'}", *HTTP_RETRY]  # fmt: skip
    if user:
        params.append(f"user={user}")
    if password_file:
        params.append(f"password-file={password_file}")
    if cookie_file:
        params.append(f"cookie-file={cookie_file}")
    if ca_file:
        params.append(f"ca-file={ca_file}")
    if insecure:
        params.append("insecure=true")  # a pinned certificate: http_probe checked it
    return ServeSpec(
        plugin="python", params=tuple(params), filters=RETRY_FILTERS, description=description
    )


def tar_member_spec(archive: str, member: str) -> ServeSpec:
    return ServeSpec(
        plugin="file",
        params=(f"file={archive}", f"tar-entry={member}"),
        filters=("tar",),
        description=f"{member} in {archive}",
    )


def installed_modules(runner: ToolRunner, kind: str) -> list[str]:
    """Names of the installed nbdkit plugins or filters (`kind` is 'plugin' or 'filter')."""
    done = runner.run(["nbdkit", "--dump-config"])
    config = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    directory = Path(config.get(f"{kind}dir", ""))
    prefix, suffix = "nbdkit-", f"-{kind}.so"
    if not directory.is_dir():
        return []
    return sorted(
        entry.name[len(prefix) : -len(suffix)]
        for entry in directory.iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(suffix)
    )
