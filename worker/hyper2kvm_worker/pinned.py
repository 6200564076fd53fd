"""Source files opened once, checked as the kernel sees them, and handed to tools by descriptor.

A path that is checked and then opened by someone else can lead elsewhere by then: another
writer of the volume swaps in a symlink, or the tool's own name handling (qemu's) finds a
different file than the one checked. So each file a source reads is opened here, once,
with O_NOFOLLOW and O_NONBLOCK (a FIFO must not hang the worker), checked for what it is
(a regular file, inside its volume by the path the kernel reports for the open file), and
tools get `/proc/self/fd/N`: that same open file, whatever has happened to its name since.
While the files are pinned, every tool the worker starts inherits their descriptors.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from hyper2kvm_worker import tools
from hyper2kvm_worker.errors import BadInput, Reason

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Pinned descriptors are moved above the low numbers that tools hand out to their own
# children: systemd socket activation (nbdcopy starting qemu-nbd) puts its socket on fd 3.
_FIRST_FD = 100


def fd_path(fd: int) -> str:
    """The name under which a process that inherited `fd` opens the same file."""
    return f"/proc/self/fd/{fd}"


class PinnedFiles:
    """The files of a job's sources, each open once; a context manager that closes them."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def __enter__(self) -> PinnedFiles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def open(self, path: Path, root: Path, what: str) -> int:
        """The descriptor of `path` (already resolved and confined to `root`), opened now,
        or the one opened before for the same file."""
        if path in self._fds:
            return self._fds[path]
        try:
            fd = os.open(path, _FLAGS)
        except OSError as error:
            if error.errno == 40:  # ELOOP: the last component became a symlink
                raise BadInput(
                    Reason.UNSAFE_PATH, f"{what} {path} is a symbolic link now; refusing it"
                ) from None
            raise BadInput(Reason.SOURCE_NOT_FOUND, f"{what} {path}: {error.strerror}") from None
        try:
            _check(fd, path, root, what)
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_FD)
        finally:
            os.close(fd)
        fd = high
        self._fds[path] = fd
        tools.inherit(fd)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            tools.disinherit(fd)
            os.close(fd)
        self._fds.clear()


def _check(fd: int, path: Path, root: Path, what: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode)
            else "not a regular file"
        )
        raise BadInput(Reason.UNSAFE_PATH, f"{what} {path} is {kind}; only regular files are read")
    # Where the open file really is, whatever raced with the path that led to it.
    actual = Path(fd_path(fd)).readlink()
    if not actual.is_relative_to(root.resolve()):
        raise BadInput(
            Reason.UNSAFE_PATH,
            f"{what} {path} opened as {actual}, outside {root}; refusing to read it",
        )
