"""The offline_fix use case: repair converted Linux guests so they boot on KVM.

A real run fixes the job's converted, verified outputs while they are still staged under
their hidden names (the sources are never opened for writing), then hashes the fixed
images so the result's digest is that of what is committed. A dry run attaches
copy-on-write qcow2 overlays of the sources, made in a scratch directory and deleted
afterwards, mounts them read-only and only reports.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hyper2kvm_worker import libguestfs, nbdkit
from hyper2kvm_worker.conversion import StagedOutput
from hyper2kvm_worker.digest import Digester
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.events import EventSink
from hyper2kvm_worker.guest_fixes import GuestFixer
from hyper2kvm_worker.guest_inspection import GuestInspector, mount_all
from hyper2kvm_worker.guest_plan import Outcome, Status, dry_outcome
from hyper2kvm_worker.libguestfs import Drive, GuestFish
from hyper2kvm_worker.protocol import DiskResult, Job
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.reporting import ProgressBoard
from hyper2kvm_worker.sources import open_source
from hyper2kvm_worker.tools import ToolRunner


class OfflineFix:
    def __init__(
        self,
        runner: ToolRunner,
        sink: EventSink,
        board: ProgressBoard,
        choose_accelerator: Callable[[], libguestfs.Accelerator] = libguestfs.choose_accelerator,
    ) -> None:
        self._runner = runner
        self._sink = sink
        self._board = board
        self._choose_accelerator = choose_accelerator
        self.report: dict[str, Any] = {}

    def fix_staged(
        self, job: Job, converted: list[DiskResult], staged: list[StagedOutput]
    ) -> list[DiskResult]:
        """Fix the staged outputs in place; results carry the fixed images' digests."""
        formats = [disk.output.format.value for disk in job.disks if disk.output is not None]
        drives = [
            Drive(str(output.partial), fmt) for output, fmt in zip(staged, formats, strict=True)
        ]
        outcomes, summary = self._fix(job, drives)
        results = []
        for result, output, fmt in zip(converted, staged, formats, strict=True):
            self._board.start_phase(result.name, "digesting")
            digest = Digester(self._runner).digest(
                str(output.partial),
                fmt,
                output.partial,
                functools.partial(self._board.advance, result.name),
            )
            self._board.finish_disk(result.name)
            fixed = result.model_copy(
                update={"digest": digest, "file_size": output.partial.stat().st_size}
            )
            if result.name == self._root_disk(job):
                fixed = fixed.model_copy(update={"inspection": summary, "fixes": outcomes})
            self._sink.emit("disk", **fixed.model_dump(exclude_none=True))
            results.append(fixed)
        return results

    def dry_run(self, job: Job) -> list[DiskResult]:
        """Report what a real run would change; writes nothing but a scratch overlay."""
        with contextlib.ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hyper2kvm-")))
            drives = []
            sizes = {}
            for disk in job.disks:
                opened = stack.enter_context(open_source(disk.source, self._runner, job.limits))
                # The appliance's qemu inherits no descriptors, so it reads a pinned source
                # through a qemu-nbd that opens it exactly as qemu-img would.
                served = stack.enter_context(
                    nbdkit.qemu_nbd_server(self._runner, opened.image, opened.format, opened.label)
                )
                overlay = scratch / f"{disk.name}.overlay.qcow2"
                qemu_img = QemuImg(self._runner)
                qemu_img.create_overlay(served.uri, "raw", overlay)
                drives.append(Drive(str(overlay), "qcow2"))
                sizes[disk.name] = int(qemu_img.info(str(overlay))["virtual-size"])
                self._board.set_size(disk.name, sizes[disk.name])
            outcomes, summary = self._fix(job, drives)
        results = []
        for disk in job.disks:
            self._board.finish_disk(disk.name)
            result = DiskResult(name=disk.name, virtual_size=sizes[disk.name])
            if disk.name == self._root_disk(job):
                result = result.model_copy(update={"inspection": summary, "fixes": outcomes})
            results.append(result)
        return results

    def _root_disk(self, job: Job) -> str:
        root = str(self.report.get("guest", {}).get("root", "/dev/sda"))
        index = ord(root[len("/dev/sd")]) - ord("a") if root.startswith("/dev/sd") else 0
        return job.disks[min(index, len(job.disks) - 1)].name

    def _fix(self, job: Job, drives: list[Drive]) -> tuple[dict[str, str], dict[str, object]]:
        dry = job.fix.dry_run
        for disk in job.disks:
            self._board.start_phase(disk.name, "fixing")
        accelerator = self._choose_accelerator()
        self._sink.emit("fix", step="appliance", accelerator=accelerator.name, why=accelerator.why)
        with GuestFish.open(self._runner, accelerator, drives) as fish:
            with _step(self._sink, "inspect"):
                info = GuestInspector(fish).inspect()
            self.report = {"guest": info.report(), "dry_run": dry}
            self._sink.emit("report", operation="offline_fix", guest=info.report())
            fixer = GuestFixer(fish, info, job.fix)
            with _step(self._sink, "plan"):
                plans = fixer.plan()
            needed = any(plan.actions and plan.error is None for plan in plans)
            if needed and not dry:
                mount_all(fish, info.mountpoints, read_only=False)
            results: list[Outcome] = []
            for plan in plans:
                if dry or not needed:
                    outcome = dry_outcome(plan)
                else:
                    self._sink.emit("fix", step=plan.name, status="started")
                    outcome = fixer.apply(plan)
                results.append(outcome)
                self._sink.emit("fix", step=plan.name, **outcome.report())
            fish.call("umount-all")
            fish.call("sync")
        self.report["fixes"] = [outcome.report() for outcome in results]
        self._sink.emit("report", operation="offline_fix", **self.report)
        statuses = {outcome.name: outcome.status.value for outcome in results}
        return statuses, info.summary()

    def failure(self) -> BadInput | None:
        """Why a real run must not commit its outputs: a fix failed, so the guest may not boot."""
        reasons = [
            f"{entry['fix']}: {entry['details'][-1] if entry['details'] else 'failed'}"
            for entry in self.report.get("fixes", [])
            if entry["status"] == Status.FAILED
        ]
        if not reasons:
            return None
        return BadInput(
            Reason.UNSUPPORTED,
            f"offline_fix could not repair the guest ({'; '.join(reasons)}); "
            "nothing was written at the output paths",
        )


@contextlib.contextmanager
def _step(sink: EventSink, name: str) -> Iterator[None]:
    sink.emit("fix", step=name, status="started")
    yield
    sink.emit("fix", step=name, status="done")
