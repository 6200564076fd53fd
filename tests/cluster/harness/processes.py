"""Child processes of the harness: spawning, readiness waits and teardown."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# setpriv ties each child to its parent: if the test process dies without a teardown
# (SIGKILL, a crashed interpreter), the kernel kills the children instead of leaving
# an etcd or an API server running on the machine.
_SETPRIV = shutil.which("setpriv")


class WaitTimeout(RuntimeError):
    """A condition did not hold before its deadline."""


class WaitAborted(RuntimeError):
    """Raised by a probe when waiting longer cannot help (the process being waited on died)."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns something other than None (or False) and return it.

    Exceptions from the probe count as "not yet" (except WaitAborted, which ends the wait);
    the last one is reported on timeout so a failing readiness check says why.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
        except WaitAborted:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not yet"
            last_error = exc
            result = None
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f": last error: {last_error!r}" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    tie_to_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group with stdout and stderr going to ``log_path``.

    The call must come from a thread that outlives the child when ``tie_to_parent`` is set:
    the kernel's parent-death signal follows the spawning thread, not the process.
    """
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if tie_to_parent and _SETPRIV else []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], *, grace: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit status."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Children the process left behind in its group go too.
    _signal_group(proc, signal.SIGKILL)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group may already be gone: nothing left to signal is the goal.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
