"""Converting one disk: preflight checks, qemu-img, verification, and the atomic rename.

Nothing is ever written at the requested output path until the output is complete,
flushed to disk and (by default) proven equal to the source: the work happens in a
private hidden directory beside it (made by this process, writable by it alone), removed on
every failure and on cancellation. Nobody else writing the output directory can divert
the partial file (a symlink in its place, a file of the same name), and the final rename
is made through a descriptor of the output directory opened before the work, to a plain
name: it cannot land anywhere else.

A block device output (device_output.py) is the exception: it is written in place, raw,
and verified by reading it back; it has nothing to rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hyper2kvm_worker import device_output
from hyper2kvm_worker.digest import Digester
from hyper2kvm_worker.errors import BadInput, Reason, TransientFailure
from hyper2kvm_worker.paths import confine_new
from hyper2kvm_worker.protocol import (
    Compression,
    DeviceOutput,
    DiskResult,
    Limits,
    Output,
    OutputFormat,
    Preallocation,
    Source,
)
from hyper2kvm_worker.qemu_img import ConvertOptions, QemuImg
from hyper2kvm_worker.sources import OpenedSource, open_source
from hyper2kvm_worker.tools import ToolRunner

SPACE_MARGIN = 64 << 20  # leave room for the filesystem's own metadata


@dataclass(frozen=True)
class Observer:
    """How a conversion reports what it does; the job runner and the CLI supply these."""

    on_size: Callable[[int], None]
    on_phase: Callable[[str], None]
    on_bytes: Callable[[int], None]
    on_note: Callable[[str], None] = lambda _message: None  # what a person may want to know


class PendingOutput(Protocol):
    """A converted, verified output awaiting the job's end: committed once every disk is
    done, discarded when any fails."""

    def commit(self) -> None: ...

    def discard(self) -> None: ...


def create_options(output: Output) -> tuple[str, ...]:
    options: list[str] = []
    if output.format is OutputFormat.QCOW2:
        options.append("compat=1.1")
        if output.compression is not Compression.NONE:
            options.append(f"compression_type={output.compression.value}")
    if output.preallocation is not Preallocation.OFF:
        options.append(f"preallocation={output.preallocation.value}")
    return tuple(options)


def staging_prefix(final: Path) -> str:
    """The start of the name of every staging directory of `final` (a retry clears them)."""
    return f".{final.name}.hyper2kvm-"


@dataclass(frozen=True)
class StagedOutput:
    """The output while it is made: `partial`, in a private directory beside `final`."""

    partial: Path
    final: Path
    _parent_fd: int  # the output directory, opened before anything was written

    @classmethod
    def create(cls, final: Path) -> StagedOutput:
        """A new private directory beside `final` (mkdir never follows a symlink and fails
        on an existing name; mode 0700), after clearing what killed attempts left."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            parent_fd = os.open(final.parent, flags)
        except OSError as error:
            raise BadInput(
                Reason.UNSAFE_PATH, f"output directory {final.parent}: {error.strerror}"
            ) from None
        _clear_stale_staging(parent_fd, final)
        private = tempfile.mkdtemp(prefix=staging_prefix(final), dir=final.parent)
        return cls(partial=Path(private) / final.name, final=final, _parent_fd=parent_fd)

    def commit(self) -> None:
        # renameat: from the private directory to a plain name in the directory opened at
        # the start, whatever has since been done to the path that led there.
        private = os.open(self.partial.parent.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                          dir_fd=self._parent_fd)  # fmt: skip
        try:
            os.rename(self.partial.name, self.final.name, src_dir_fd=private,
                      dst_dir_fd=self._parent_fd)  # fmt: skip
        finally:
            os.close(private)
        _fsync_fd(self._parent_fd)
        self._remove_private()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()
        self._remove_private()

    def _remove_private(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.partial.parent.name, dir_fd=self._parent_fd)
        with contextlib.suppress(OSError):
            os.close(self._parent_fd)


def _clear_stale_staging(parent_fd: int, final: Path) -> None:
    """Staging directories (and the older single partial file) of killed attempts, ours only."""
    prefix = staging_prefix(final)
    for entry in os.scandir(parent_fd):
        if not entry.name.startswith(prefix):
            continue
        info = entry.stat(follow_symlinks=False)
        if info.st_uid != os.getuid():
            continue  # not this worker's: never touched
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=parent_fd)  # never follows a link inside it
        else:
            os.unlink(entry.name, dir_fd=parent_fd)  # unlink removes a link, not its target


def check_not_a_source(final: Path, source_files: tuple[Path, ...]) -> None:
    """Refuse an output path that would replace a file some source reads: sources stay intact."""
    if final.resolve() in {path.resolve() for path in source_files}:
        raise BadInput(
            Reason.INVALID_JOB,
            f"output {final} is a file of a source disk; a source is never overwritten, "
            "choose another output path",
        )


class Converter:
    def __init__(self, runner: ToolRunner, limits: Limits | None = None) -> None:
        self._runner = runner
        self._limits = limits
        self._qemu_img = QemuImg(runner)
        self._digester = Digester(runner)

    def convert(
        self,
        name: str,
        source: Source,
        output: Output | DeviceOutput,
        verify: bool,
        observer: Observer,
        skip_free_space: bool = False,
    ) -> tuple[DiskResult, PendingOutput]:
        """Convert and verify; the caller commits or discards what this returns."""
        if isinstance(output, DeviceOutput):
            return self._convert_onto_device(
                name, source, output, verify, observer, skip_free_space
            )
        return self._convert_to_file(name, source, output, verify, observer, skip_free_space)

    @contextlib.contextmanager
    def _reading(
        self, source: Source, skip_free_space: bool, observer: Observer
    ) -> Iterator[tuple[OpenedSource, OpenedSource, int | None]]:
        """The source as opened (for its checks), what is read from it, and the bytes of
        free space taken as zero (None unless asked)."""
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(open_source(source, self._runner, self._limits))
            if not skip_free_space:
                yield opened, opened, None
                return
            from hyper2kvm_worker.free_space import skipping_free_space  # libguestfs: slow import

            observer.on_phase("trimming")
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hyper2kvm-")))
            free = stack.enter_context(skipping_free_space(opened, self._runner, scratch))
            observer.on_note(
                f"{free.zeroed} bytes free in {', '.join(free.trimmed) or 'no filesystem'} "
                "are taken as zero and not read"
            )
            yield opened, free.source, free.zeroed

    def _convert_to_file(
        self,
        name: str,
        source: Source,
        output: Output,
        verify: bool,
        observer: Observer,
        skip_free_space: bool,
    ) -> tuple[DiskResult, StagedOutput]:
        """Into a hidden partial file, renamed into place by its commit."""
        final = check_output(output)
        with self._reading(source, skip_free_space, observer) as (opened, read, zeroed):
            check_not_a_source(final, opened.files)
            options = ConvertOptions(
                source_format=read.format,
                output_format=output.format.value,
                create_options=create_options(output),
                compress=output.compression is not Compression.NONE,
            )
            # Two independent looks at the source, at once: they cost start-up time only.
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="preflight") as pool:
                damage = pool.submit(self._qemu_img.check, opened.image, opened.format)
                required = pool.submit(
                    self._qemu_img.measure,
                    opened.image,
                    opened.format,
                    options.output_format,
                    options.create_options,
                )
            size = int(opened.info["virtual-size"])
            _refuse_damaged(opened, damage.result())
            observer.on_size(size)
            _check_space(final.parent, required.result())
            staged = StagedOutput.create(final)
            try:
                digest = self._write(
                    read, staged.partial, str(staged.partial), options, size, verify, observer
                )
            except BaseException:
                staged.discard()
                raise
        result = DiskResult(
            name=name,
            output=str(final),
            format=output.format.value,
            virtual_size=size,
            file_size=staged.partial.stat().st_size,
            digest=digest,
            verified=verify,
            free_space_zeroed=zeroed,
        )
        return result, staged

    def _convert_onto_device(
        self,
        name: str,
        source: Source,
        output: DeviceOutput,
        verify: bool,
        observer: Observer,
        skip_free_space: bool,
    ) -> tuple[DiskResult, device_output.BlockDevice]:
        """Onto the device in place, raw; verified by reading the device back."""
        with self._reading(source, skip_free_space, observer) as (opened, read, zeroed):
            size = int(opened.info["virtual-size"])
            device = device_output.check_device(output, size)
            device.check_not_a_source(opened.files)
            _refuse_damaged(opened, self._qemu_img.check(opened.image, opened.format))
            observer.on_size(size)
            # Zero regions are skipped only when the device is seen to read as zero there.
            observer.on_phase("scanning")
            zero = device_output.reads_as_zero(device.path, size, self._runner.cancel)
            observer.on_note(
                f"{output.device} reads as zero: zero regions are not written"
                if zero
                else f"{output.device} holds data: zero regions are written too"
            )
            options = ConvertOptions(
                source_format=read.format,
                output_format=OutputFormat.RAW.value,
                existing_target=True,
                target_is_zero=zero,
            )
            readback = device_output.readback_image(device.path, size)
            digest = self._write(read, device.path, readback, options, size, verify, observer)
        result = DiskResult(
            name=name,
            output=output.device,
            format=OutputFormat.RAW.value,
            virtual_size=size,
            digest=digest,
            verified=verify,
            zero_skipped=zero,
            free_space_zeroed=zeroed,
        )
        return result, device

    def _write(
        self,
        opened: OpenedSource,
        target: Path,
        readback: str,
        options: ConvertOptions,
        size: int,
        verify: bool,
        observer: Observer,
    ) -> str | None:
        """Convert into `target` (a file or a device), flush it, and return the digest of
        the image `readback` names on it (None without verify)."""
        workers = 2 + len(opened.checks)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            source_digest: Future[str] | None = None
            abort_source_digest = self._runner.cancel.child()
            # The source's own integrity checks read it while it converts, whatever `verify`.
            checks = [pool.submit(check.verify, abort_source_digest) for check in opened.checks]
            if verify:
                # The source is hashed while qemu-img converts: the two use different cores.
                source_digester = Digester(ToolRunner(abort_source_digest))
                source_digest = pool.submit(
                    source_digester.digest,
                    opened.image,
                    opened.format,
                    opened.data_file,
                    lambda _done: None,
                )
            observer.on_phase("converting")
            try:
                self._qemu_img.convert(
                    opened.image,
                    str(target),
                    options,
                    lambda percent: observer.on_bytes(int(size * percent / 100)),
                )
            except BaseException:
                abort_source_digest.cancel()  # do not wait for a digest nobody needs
                raise
            observer.on_bytes(size)
            flushed = pool.submit(_fsync_file, target)
            try:
                for check in checks:
                    check.result()  # raises on a damaged source: the output is discarded
            except BaseException:
                abort_source_digest.cancel()
                raise
            if not verify or source_digest is None:
                flushed.result()
                return None
            observer.on_phase("verifying")
            output_digest = self._digester.digest(
                readback, options.output_format, target, observer.on_bytes
            )
            expected = source_digest.result()
            flushed.result()
        if output_digest != expected:
            raise TransientFailure(
                Reason.VERIFICATION_FAILED,
                f"the converted image differs from {opened.label} "
                f"({output_digest} != {expected}); nothing was written, retry the job",
            )
        return output_digest


def _refuse_damaged(opened: OpenedSource, damage: str | None) -> None:
    if damage is not None:
        raise BadInput(Reason.INVALID_IMAGE, f"{opened.label} is damaged: {damage}")


def check_output(output: Output) -> Path:
    """The output's final path, after every check that can be made before converting."""
    root = Path(output.root)
    if not root.is_dir():
        raise BadInput(Reason.OUTPUT_NOT_WRITABLE, f"output volume {root} is not a directory")
    final = confine_new(root, output.path, "output")
    try:
        # Folders inside the output volume are made as needed (`vm1/disk0.qcow2`), as a
        # person naming that path expects; confine_new has kept the path inside the volume.
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(
            Reason.OUTPUT_NOT_WRITABLE, f"cannot create output directory {final.parent}: {exc}"
        ) from exc
    if not os.access(final.parent, os.W_OK | os.X_OK):
        # In a Pod the user is the image's: hostPath and NFS folders keep their own owner.
        raise BadInput(
            Reason.OUTPUT_NOT_WRITABLE,
            f"output directory {final.parent} is not writable by uid {os.getuid()} "
            f"gid {os.getgid()}: give that user or group write access to it",
        )
    if final.exists() and not output.overwrite:
        raise BadInput(
            Reason.OUTPUT_EXISTS,
            f"{final} already exists; pass --overwrite (overwrite: true in a job) to replace it",
        )
    if final.is_dir():
        raise BadInput(Reason.OUTPUT_EXISTS, f"{final} is a directory")
    return final


def _check_space(directory: Path, required: int) -> None:
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if free < required + SPACE_MARGIN:
        raise BadInput(
            Reason.INSUFFICIENT_SPACE,
            f"{directory} has {free >> 20} MiB free but the output needs up to "
            f"{(required + SPACE_MARGIN) >> 20} MiB; free space or choose another volume",
        )


def _fsync_file(path: Path) -> None:
    # On a block device too: fsync of any descriptor of it flushes the whole device.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        os.fsync(fd)
