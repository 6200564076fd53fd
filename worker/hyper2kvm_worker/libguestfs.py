"""Adapter for libguestfs: one appliance per job, driven through `guestfish --listen`.

The appliance is started once (`guestfish --listen`) and every operation is one
`guestfish --remote` call, run by the injectable ToolRunner, so a cancelled job stops
between calls and the whole process group (guestfish and its qemu) is killed on the way
out. KVM is used when it really runs a vCPU with the CPU model libguestfs asks for;
otherwise the appliance runs under TCG (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`), which
needs no privileges at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hyper2kvm_worker.errors import Reason, TransientFailure, WorkerError
from hyper2kvm_worker.tools import ToolRunner, require

_PID_LINE = re.compile(r"GUESTFISH_PID=(\d+)")
# 64 KiB of HLT with, at the x86 reset vector, `mov al,1; out 0xf4,al`: qemu's
# isa-debug-exit device then ends the process with status (1 << 1) | 1 = 3.
_PROBE_EXIT = 3
_PROBE_CODE = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4])
_PROBE_SECONDS = 30.0
_STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    why: str

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "tcg":
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        return env


def kvm_works(device: Path = Path("/dev/kvm")) -> bool:
    """True when qemu runs a vCPU under KVM with `-cpu max`, as the appliance will.

    Opening /dev/kvm is not enough: under some nested hypervisors qemu aborts on the first
    MSR it sets. A 64 KiB BIOS that exits through isa-debug-exit tells in a fraction of a
    second.
    """
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None or not os.access(device, os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="hyper2kvm-kvm-") as scratch:
        bios = Path(scratch) / "probe.bin"
        image = bytearray(b"\xf4" * 65536)
        image[-16 : -16 + len(_PROBE_CODE)] = _PROBE_CODE
        bios.write_bytes(bytes(image))
        argv = [
            qemu,
            *("-accel", "kvm", "-cpu", "max", "-machine", "pc", "-m", "16"),
            *("-nodefaults", "-no-user-config", "-display", "none"),
            *("-bios", str(bios), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"),
        ]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=_PROBE_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == _PROBE_EXIT


def choose_accelerator() -> Accelerator:
    if "force_tcg" in os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", ""):
        return Accelerator("tcg", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg is set")
    device = Path("/dev/kvm")
    if kvm_works(device):
        return Accelerator("kvm", f"{device} is usable")
    if not device.exists():
        return Accelerator("tcg", f"no {device} (not on this node, or not given to the Pod)")
    if not os.access(device, os.R_OK | os.W_OK):
        return Accelerator("tcg", f"{device} is not accessible to this user")
    return Accelerator("tcg", f"{device} is present but qemu cannot run a KVM vCPU here")


@dataclass(frozen=True)
class Drive:
    path: str
    format: str  # qcow2 or raw


class GuestFishError(TransientFailure):
    """One guestfish call failed; `detail` is libguestfs' own message."""

    def __init__(self, call: Sequence[str], detail: str) -> None:
        super().__init__(Reason.TOOL_FAILED, f"guestfish {' '.join(call)[:200]}: {detail}")
        self.detail = detail


class GuestFish:
    """A running appliance with the job's drives attached, in order (/dev/sda, /dev/sdb, ...)."""

    def __init__(self, runner: ToolRunner, accelerator: Accelerator) -> None:
        self._runner = runner
        self._env = accelerator.environment()
        self._pid: int | None = None
        self._group: int | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, runner: ToolRunner, accelerator: Accelerator, drives: Sequence[Drive]
    ) -> Iterator[GuestFish]:
        fish = cls(runner, accelerator)
        try:
            fish._start(drives)
            fish.call("run")
            yield fish
        finally:
            fish._stop()

    def _start(self, drives: Sequence[Drive]) -> None:
        require("guestfish", "libguestfs-tools")
        argv = ["guestfish", "--listen"]
        for drive in drives:
            argv += [f"--format={drive.format}", "-a", drive.path]
        self._runner.cancel.raise_if_cancelled()
        # The listener daemonises but keeps the stdio it was given: stderr goes to a file
        # (a pipe would never reach end-of-file), stdout is read up to the PID line only.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the appliance runs
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            env=self._env,
        )
        self._group = process.pid  # the daemonised listener stays in this process group
        assert process.stdout is not None
        with process.stdout:
            line = process.stdout.readline().decode(errors="replace")
        process.wait()
        match = _PID_LINE.search(line)
        if process.returncode != 0 or match is None:
            self._log.seek(0)
            message = self._log.read().decode(errors="replace").strip()[-300:]
            raise TransientFailure(Reason.TOOL_FAILED, f"guestfish --listen failed: {message}")
        self._pid = int(match.group(1))

    def _stop(self) -> None:
        """Shut the appliance down cleanly, or at once when the job is cancelled."""
        try:
            if self._pid is not None and not self._runner.cancel.cancelled:
                with contextlib.suppress(WorkerError):
                    self._remote(["exit"])
                _wait_gone(self._pid, _STOP_SECONDS)
        finally:
            self._pid = None
            if self._group is not None:  # the listener and its qemu, whatever state they are in
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._group, signal.SIGKILL)
            if self._log is not None:
                self._log.close()

    def call(self, *args: str) -> str:
        """Run one guestfish command; its stdout, or GuestFishError with libguestfs' reason."""
        return self._remote(list(args))

    def _remote(self, args: list[str]) -> str:
        if self._pid is None:
            raise TransientFailure(Reason.INTERNAL, "the libguestfs appliance is not running")
        done = self._runner.run(["guestfish", f"--remote={self._pid}", "--", *args], env=self._env)
        if done.returncode != 0:
            raise GuestFishError(args, _error_text(done.stderr))
        return done.stdout

    # -- conveniences over `call`, the ones the inspection and the fixes use

    def lines(self, *args: str) -> list[str]:
        return [line for line in self.call(*args).splitlines() if line]

    def true(self, *args: str) -> bool:
        return self.call(*args).strip() == "true"

    def is_file(self, path: str) -> bool:
        return self.true("is-file", path, "followsymlinks:true")

    def is_dir(self, path: str) -> bool:
        return self.true("is-dir", path, "followsymlinks:true")

    def exists(self, path: str) -> bool:
        return self.true("exists", path)

    def is_symlink(self, path: str) -> bool:
        return self.true("is-symlink", path)

    def listdir(self, path: str) -> list[str]:
        return sorted(self.lines("ls", path)) if self.is_dir(path) else []

    def read_text(self, path: str) -> str | None:
        """The file's text (as UTF-8, undecodable bytes replaced), or None if it is missing."""
        if not self.is_file(path):
            return None
        with tempfile.TemporaryDirectory(prefix="hyper2kvm-fish-") as scratch:
            local = Path(scratch) / "file"
            self.call("download", path, str(local))
            return local.read_bytes().decode(errors="replace")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Replace `path` with `text`; new files get `mode`, existing ones keep theirs."""
        with tempfile.TemporaryDirectory(prefix="hyper2kvm-fish-") as scratch:
            local = Path(scratch) / "file"
            local.write_text(text, encoding="utf-8")
            existed = self.is_file(path)
            self.call("upload", str(local), path)
        if not existed:
            self.call("chmod", f"0{mode or 0o644:o}", path)

    def sh(self, script: str) -> str:
        """Run a /bin/sh script inside the guest (its own tools, its own root)."""
        return self.call("sh", script)


def _error_text(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(lines) if lines else "failed without a message"
    return re.sub(r"^libguestfs: error: ", "", text)[-600:]


def _wait_gone(pid: int, seconds: float) -> None:
    """Wait for a process that is not our child (the daemonised listener) to end."""
    waited = 0.0
    while waited < seconds:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
        waited += 0.1
