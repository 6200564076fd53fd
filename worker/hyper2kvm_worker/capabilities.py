"""What this node can do: tool versions, nbdkit plugins and filters, KVM, free space."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil

from hyper2kvm_worker import libguestfs, nbdkit
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.tools import ToolRunner

# What the worker itself relies on; a node missing one of these cannot run every job.
NEEDED_PLUGINS = ("file", "python", "ssh")
NEEDED_FILTERS = ("tar", "retry", "retry-request")


def _version(runner: ToolRunner, argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    done = runner.run(argv)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def kvm_usable(device: Path = Path("/dev/kvm")) -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _qcow2_compressions(runner: ToolRunner) -> list[str]:
    if shutil.which("qemu-img") is None:
        return []
    supported = []
    with tempfile.TemporaryDirectory(prefix="hyper2kvm-caps-") as scratch:
        for kind in ("zlib", "zstd"):
            image = Path(scratch) / f"{kind}.qcow2"
            done = QemuImg(runner).create(
                image, "qcow2", size="1M", options=(f"compression_type={kind}",)
            )
            if done.returncode == 0:
                supported.append(kind)
    return supported


def _space(path: Path) -> dict[str, Any]:
    try:
        usage = psutil.disk_usage(str(path))
    except OSError as error:
        return {"path": str(path), "error": error.strerror}
    return {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}


def report(runner: ToolRunner, locations: list[Path]) -> dict[str, Any]:
    has_nbdkit = shutil.which("nbdkit") is not None
    plugins = nbdkit.installed_modules(runner, "plugin") if has_nbdkit else []
    filters = nbdkit.installed_modules(runner, "filter") if has_nbdkit else []
    scratch = Path(tempfile.gettempdir())
    caps: dict[str, Any] = {
        "qemu_img": _version(runner, ["qemu-img", "--version"]),
        "qemu_nbd": _version(runner, ["qemu-nbd", "--version"]),
        "nbdkit": _version(runner, ["nbdkit", "--version"]),
        "nbdkit_plugins": plugins,
        "nbdkit_filters": filters,
        "nbdcopy": _version(runner, ["nbdcopy", "--version"]),
        "libguestfs": _version(runner, ["guestfish", "--version"]),
        "qcow2_compression": _qcow2_compressions(runner),
        "kvm": kvm_usable(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "scratch": _space(scratch),
        "locations": [_space(path) for path in locations],
    }
    missing = [
        *(name for name in ("qemu_img", "qemu_nbd", "nbdkit", "nbdcopy") if caps[name] is None),
        *(f"nbdkit-plugin-{name}" for name in NEEDED_PLUGINS if name not in plugins),
        *(f"nbdkit-filter-{name}" for name in NEEDED_FILTERS if name not in filters),
    ]
    caps["ready"] = not missing
    caps["missing"] = missing
    caps.update(_offline_fix(caps["libguestfs"] is not None))
    return caps


def _offline_fix(has_libguestfs: bool) -> dict[str, Any]:
    """Whether offline_fix can start libguestfs' appliance here, and if not, what is lacking."""
    if not has_libguestfs:
        lacking = ["guestfish is not installed: install libguestfs-tools"]
    else:
        problem = libguestfs.appliance_problem()
        lacking = [problem] if problem else []
    return {"offline_fix_ready": not lacking, "offline_fix_missing": lacking}
