"""What the suite needs from the machine, and the Debian package that brings each piece.

Test modules declare their needs with `pytest.mark.needs(...)`; before any test runs, the
suite checks every need of the collected tests and stops with one line naming what to
install (`make setup` installs all of it), instead of failing test by test with a tool's
trace.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from hyper2kvm_worker import libguestfs

# A command the tests run (or the worker runs for them) -> the Debian package providing it.
COMMANDS = {
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "nbdkit": "nbdkit",
    "nbdcopy": "libnbd-bin",
    "nbdinfo": "libnbd-bin",
    "blkid": "util-linux",
    "mkswap": "util-linux",
    "setpriv": "util-linux",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "guestfish": "libguestfs-tools",
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "cryptsetup": "cryptsetup-bin",
    "promtool": "prometheus",
    "lua5.1": "lua5.1",
    "openssl": "openssl",
    "ssh-keygen": "openssh-client",
    # The local cluster's nodes and images (tests/cluster/harness)
    "kubectl": "kubectl",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "losetup": "mount",
    "runc": "runc",
    "iptables": "iptables",
    "buildah": "buildah",
    "gcc": "gcc",
}
CNI_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins puts them here


def _cni_plugins() -> str | None:
    missing = [name for name in ("bridge", "host-local", "loopback", "portmap")
               if not (CNI_PLUGINS / name).is_file()]  # fmt: skip
    return (
        f"containernetworking-plugins (no {', '.join(missing)} in {CNI_PLUGINS})"
        if missing
        else None
    )


SSHD = Path("/usr/sbin/sshd")  # outside a non-root user's PATH


def _sshd() -> str | None:
    return None if SSHD.is_file() else f"openssh-server (no {SSHD})"


# Needs that are not a command on PATH -> a check returning what is missing, or None.
CHECKS: dict[str, Callable[[], str | None]] = {
    "sshd": _sshd,
    # supermin builds libguestfs' appliance from the machine's kernel; the problem names
    # the package to install.
    "kernel": libguestfs.appliance_problem,
    "cni-plugins": _cni_plugins,
}
WORKER_TOOLS = ("qemu-img", "qemu-nbd", "nbdkit", "nbdcopy", "nbdinfo", "blkid")
CLUSTER_TOOLS = ("kubectl", "openssl", "setpriv", "nsenter", "unshare", "losetup", "runc",
                 "iptables", "cni-plugins", "buildah", "debootstrap", "gcc")  # fmt: skip


def known(need: str) -> bool:
    return need in COMMANDS or need in CHECKS


def missing(needs: Iterable[str]) -> list[str]:
    """What is missing for `needs`, each as the package to install (and why, for checks)."""
    lacking: dict[str, None] = {}
    for need in sorted(set(needs)):
        if need in CHECKS:
            problem = CHECKS[need]()
            if problem:
                lacking[problem] = None
        elif shutil.which(need) is None:
            lacking[f"{COMMANDS[need]} (for {need})"] = None
    return list(lacking)
