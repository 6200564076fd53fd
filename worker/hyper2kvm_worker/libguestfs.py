"""Adapter for libguestfs: one appliance per job, driven through `guestfish --listen`.

The appliance is started once (`guestfish --listen`) and every operation is one
`guestfish --remote` call, run by the injectable ToolRunner, so a cancelled job stops
between calls and the whole process group (guestfish and its qemu) is killed on the way
out. KVM is used when it really boots the appliance's kernel with the CPU model
libguestfs asks for; otherwise the appliance runs under TCG
(`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`), which needs no privileges at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hyper2kvm_worker.errors import Reason, TransientFailure, WorkerError
from hyper2kvm_worker.tools import ToolRunner, inherited, require

_PID_LINE = re.compile(r"GUESTFISH_PID=(\d+)")
# The first line a booting Linux kernel prints, once out of its real-mode setup code.
_KERNEL_BANNER = b"Linux version"
_PROBE_SECONDS = 5.0
_STOP_SECONDS = 30.0
# What a Debian node installs for supermin to find a kernel in /boot (the appliance's).
KERNEL_PACKAGE = "linux-image-amd64"
_APPLIANCE_FILES = ("kernel", "initrd", "root")  # a fixed appliance (LIBGUESTFS_PATH)


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    why: str

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "tcg":
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        return env


def kvm_works(device: Path = Path("/dev/kvm"), kernel: Path | None = None) -> bool:
    """True when qemu boots the appliance's kernel under KVM with `-cpu max`, as libguestfs will.

    Opening /dev/kvm is not enough, nor is running a vCPU in real mode: under some nested
    hypervisors qemu aborts on the first MSR it sets, under others the firmware runs and
    the kernel hangs as it leaves real mode, with qemu at 100% CPU. So the probe boots the
    very kernel the appliance will boot and waits for the line it prints once it runs
    (under KVM within a second; hung, or under TCG, never within the probe's time).
    """
    qemu = shutil.which("qemu-system-x86_64")
    kernel = kernel or appliance_kernel()
    if qemu is None or kernel is None or not os.access(device, os.R_OK | os.W_OK):
        return False
    argv = [
        qemu,
        *("-accel", "kvm", "-cpu", "max", "-machine", "pc", "-m", "256"),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *("-serial", "stdio", "-kernel", str(kernel)),
        *("-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1 edd=off"),
    ]
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        return _prints_within(process, _KERNEL_BANNER, _PROBE_SECONDS)
    finally:
        process.kill()
        process.wait()


def _prints_within(process: subprocess.Popen[bytes], marker: bytes, seconds: float) -> bool:
    """Whether `process` writes `marker` on stdout before `seconds` pass or it exits."""
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    seen = b""
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return False  # qemu exited without booting it
            seen = (seen + chunk)[-4096:]
    return True


def appliance_kernel(
    environ: Mapping[str, str] = os.environ,
    boot: Path = Path("/boot"),
    modules: Path = Path("/lib/modules"),
) -> Path | None:
    """The kernel libguestfs' appliance boots: the fixed appliance's, or the one supermin
    takes from this node (SUPERMIN_KERNEL, else the newest readable /boot/vmlinuz-VERSION
    with /lib/modules/VERSION beside it)."""
    fixed = environ.get("LIBGUESTFS_PATH")
    if fixed and (Path(fixed) / "kernel").is_file():
        return Path(fixed) / "kernel"
    if environ.get("SUPERMIN_KERNEL"):
        return Path(environ["SUPERMIN_KERNEL"])
    usable = [
        path
        for path in sorted(boot.glob("vmlinuz-*"))
        if os.access(path, os.R_OK) and (modules / path.name.removeprefix("vmlinuz-")).is_dir()
    ]
    return usable[-1] if usable else None


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
    return Accelerator(
        "tcg", f"{device} is present but the appliance kernel does not boot under KVM"
    )


def appliance_problem(
    environ: Mapping[str, str] = os.environ,
    boot: Path = Path("/boot"),
    modules: Path = Path("/lib/modules"),
) -> str | None:
    """What keeps libguestfs from having an appliance on this node, or None when nothing.

    Either LIBGUESTFS_PATH holds a fixed appliance, or supermin builds one from this
    node's own kernel (see appliance_kernel), which is exactly what supermin looks for.
    """
    fixed = environ.get("LIBGUESTFS_PATH")
    if fixed:
        directory = Path(fixed)
        if all((directory / name).is_file() for name in _APPLIANCE_FILES):
            return None
        if not (directory / "supermin.d").is_dir():
            return (
                f"LIBGUESTFS_PATH={fixed} holds no appliance (neither kernel, initrd and root "
                "nor supermin.d)"
            )
    kernel = appliance_kernel(environ, boot, modules)
    if kernel is not None:
        return None if os.access(kernel, os.R_OK) else f"SUPERMIN_KERNEL={kernel} is not readable"
    if any(boot.glob("vmlinuz-*")):
        return (
            f"no kernel in {boot} is both readable by this user and has {modules}/VERSION "
            "beside it: libguestfs' supermin cannot build its appliance"
        )
    return (
        f"no Linux kernel in {boot} for libguestfs' supermin appliance: install "
        f"{KERNEL_PACKAGE} on the node, or point LIBGUESTFS_PATH at a fixed appliance"
    )


@dataclass(frozen=True)
class Drive:
    path: str
    format: str  # qcow2 or raw
    discard: bool = False  # the guest's discards (fstrim) reach the image


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
            try:
                fish.call("run")
            except GuestFishError as error:
                raise fish._launch_failure(error) from error
            yield fish
        finally:
            fish._stop()

    def _start(self, drives: Sequence[Drive]) -> None:
        require("guestfish", "libguestfs-tools")
        argv = ["guestfish", "--listen"]
        # The command line cannot ask for discard: such drives are added once it listens.
        by_call = any(drive.discard for drive in drives)
        for drive in [] if by_call else drives:
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
            pass_fds=inherited(),  # pinned sources, which overlays may name (see pinned.py)
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
        for drive in drives if by_call else []:
            options = [f"format:{drive.format}"] + (["discard:besteffort"] if drive.discard else [])
            self.call("add-drive-opts", drive.path, *options)

    def _launch_failure(self, error: GuestFishError) -> TransientFailure:
        """Why the appliance did not start: what the node lacks, else libguestfs' words.

        libguestfs prints a failed launch to the listener's stderr, not to the `run` call's.
        """
        detail = appliance_problem() or self._listener_errors() or error.detail
        return TransientFailure(
            Reason.TOOL_FAILED, f"libguestfs could not start its appliance: {detail}"
        )

    def _listener_errors(self) -> str:
        if self._log is None:
            return ""
        # The listener writes through the same file offset: read, then put it back at the end.
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        self._log.seek(0, os.SEEK_END)
        errors = [line for line in text.splitlines() if line.startswith("libguestfs: error:")]
        return _error_text("\n".join(errors[-2:])) if errors else ""

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
