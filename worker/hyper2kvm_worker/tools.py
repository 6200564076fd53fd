"""Running external tools (qemu-img, nbdkit, ...) so that they can always be stopped.

Every child runs in its own process group: cancelling a job kills the whole group, so a
tool's own children (nbdkit's curl threads, qemu-nbd under nbdcopy) never outlive it.
The runner is an object so tests and adapters can inject another one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from hyper2kvm_worker.errors import Cancelled, Reason, TransientFailure

_TERM_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.2
# Descriptors every child inherits while they are here (pinned source files, see pinned.py):
# the tools open `/proc/self/fd/N` instead of a path someone could have changed.
_INHERITED: set[int] = set()
_INHERITED_LOCK = threading.Lock()


def inherit(fd: int) -> None:
    with _INHERITED_LOCK:
        _INHERITED.add(fd)


def disinherit(fd: int) -> None:
    with _INHERITED_LOCK:
        _INHERITED.discard(fd)


def inherited() -> tuple[int, ...]:
    with _INHERITED_LOCK:
        return tuple(sorted(_INHERITED))


class CancelToken:
    """Set once, from a signal handler or another thread; long operations poll it."""

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._event = threading.Event()
        self._parent = parent

    def child(self) -> CancelToken:
        """A token cancelled with this one, that can also be cancelled on its own."""
        return CancelToken(self)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.cancelled)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled()


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.returncode}"


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TransientFailure(
            Reason.TOOL_FAILED, f"{tool} is not installed on this node; install {package}"
        )
    return path


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_TERM_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class ToolRunner:
    """Runs commands to completion, streaming their output, and honours a CancelToken."""

    def __init__(self, cancel: CancelToken | None = None) -> None:
        self.cancel = cancel or CancelToken()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout: int = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        self.cancel.raise_if_cancelled()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            pass_fds=inherited(),
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        on_output: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Completed:
        """Run to the end; `on_output` sees stdout in chunks as it comes (for progress)."""
        process = self.spawn(argv, env=env)
        stdout_parts: list[str] = []
        stderr_parts: list[bytes] = []
        readers = [
            threading.Thread(
                target=_pump_text, args=(process.stdout, stdout_parts, on_output), daemon=True
            ),
            threading.Thread(target=_pump_bytes, args=(process.stderr, stderr_parts), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            while True:
                try:
                    process.wait(_POLL_SECONDS)  # returns the moment the tool exits
                    break
                except subprocess.TimeoutExpired:
                    if self.cancel.cancelled:
                        stop_group(process)
                        raise Cancelled() from None
        finally:
            stop_group(process)
            for reader in readers:
                reader.join()
        return Completed(
            argv=tuple(argv),
            returncode=process.returncode,
            stdout="".join(stdout_parts),
            stderr=b"".join(stderr_parts).decode(errors="replace"),
        )


def _pump_text(
    stream: IO[bytes] | None, sink: list[str], on_output: Callable[[str], None] | None
) -> None:
    if stream is None:
        return
    # os.read returns what is there now, so progress lines arrive as qemu-img prints them.
    while chunk := os.read(stream.fileno(), 65536):
        text = chunk.decode(errors="replace")
        sink.append(text)
        if on_output is not None:
            on_output(text)


def _pump_bytes(stream: IO[bytes] | None, sink: list[bytes]) -> None:
    if stream is not None:
        while chunk := stream.read(65536):
            sink.append(chunk)
