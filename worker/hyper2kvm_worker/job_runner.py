"""Running one Worker Job Protocol v1 job through its state machine to a Result."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyper2kvm_worker import device_output
from hyper2kvm_worker.conversion import (
    Converter,
    Observer,
    PendingOutput,
    StagedOutput,
    check_not_a_source,
    check_output,
)
from hyper2kvm_worker.describe import describe
from hyper2kvm_worker.errors import BadInput, Cancelled, ExitCode, Reason, WorkerError
from hyper2kvm_worker.events import EventSink
from hyper2kvm_worker.hardware import Hardware
from hyper2kvm_worker.protocol import (
    DeviceOutput,
    Disk,
    DiskResult,
    ErrorInfo,
    Job,
    JobState,
    Operation,
    Output,
    Result,
)
from hyper2kvm_worker.reporting import ProgressBoard
from hyper2kvm_worker.sources import open_source
from hyper2kvm_worker.states import StateMachine
from hyper2kvm_worker.tools import ToolRunner

PROGRESS_EVENT_SECONDS = 1.0


class JobRunner:
    def __init__(
        self, job: Job, runner: ToolRunner, sink: EventSink, clock: Callable[[], float]
    ) -> None:
        self.job = job
        self._runner = runner
        self._sink = sink
        self._machine = StateMachine(clock)
        passes = 1
        if job.writes_outputs:
            passes = 2 if job.verify else 1
            # offline_fix hashes the fixed output once more for its digest
            passes += job.operation is Operation.OFFLINE_FIX
        self.board = ProgressBoard([disk.name for disk in job.disks], passes, clock)
        self.reports: dict[str, dict[str, Any]] = {}
        self._ticker_stop = threading.Event()

    def run(self) -> Result:
        """Never raises for job failures: they end in the Result (and the exit code)."""
        results: list[DiskResult] = []
        staged: list[PendingOutput] = []
        error: ErrorInfo | None = None
        hardware: Hardware | None = None
        ticker = threading.Thread(target=self._tick, name="progress-events", daemon=True)
        ticker.start()
        try:
            self._move(JobState.VALIDATING)
            self._validate()
            if self.job.writes_outputs:
                described = describe(self.job)
                hardware = described.hardware
                if described.note:
                    self._sink.emit("log", level="warning", message=described.note)
            self._move(JobState.RUNNING)
            if self.job.writes_outputs or self.job.operation is Operation.INSPECT:
                for disk in self.job.disks:
                    results.append(self._run_disk(disk, staged))
            if self.job.operation is Operation.OFFLINE_FIX:
                results, failure = self._offline_fix(results, staged)
                if failure is not None:
                    raise failure
            # Outputs appear together, only once every disk is converted and verified: a
            # retried job never finds half of its outputs already there.
            self._runner.cancel.raise_if_cancelled()
            while staged:
                staged[0].commit()
                staged.pop(0)
            self._move(JobState.SUCCEEDED)
        except WorkerError as failure:
            error = ErrorInfo(
                reason=failure.reason.value,
                message=failure.message[:1024],
                permanent=failure.permanent,
            )
            final = JobState.CANCELLED if isinstance(failure, Cancelled) else JobState.FAILED
            self._move(final, failure.reason.value, failure.message)
        except Exception as bug:  # noqa: BLE001 - any bug must still end the job with a result
            self._sink.emit("log", level="error", message=traceback.format_exc())
            error = ErrorInfo(
                reason=Reason.INTERNAL.value,
                message=f"internal error: {type(bug).__name__}: {bug}"[:1024],
                permanent=False,
            )
            self._move(JobState.FAILED, Reason.INTERNAL.value, error.message)
        finally:
            for output in staged:
                output.discard()
            self._ticker_stop.set()
            ticker.join()
        self._sink.emit("progress", **self.board.snapshot().model_dump())
        return Result(
            job=self.job.name,
            state=self._machine.state,
            disks=results,
            error=error,
            history=list(self._machine.history),
            hardware=hardware,
        )

    @staticmethod
    def exit_code(result: Result) -> ExitCode:
        if result.state is JobState.SUCCEEDED:
            return ExitCode.OK
        if result.state is JobState.CANCELLED:
            return ExitCode.CANCELLED
        if result.error is not None and result.error.reason == Reason.INTERNAL.value:
            return ExitCode.INTERNAL
        if result.error is not None and result.error.permanent:
            return ExitCode.PERMANENT
        return ExitCode.TRANSIENT

    def _move(self, state: JobState, reason: str | None = None, message: str | None = None) -> None:
        if self._machine.state == state:
            return
        self._machine.move(state, reason)
        self.board.set_state(state)
        fields: dict[str, Any] = {"state": state.value}
        if reason:
            fields["reason"] = reason
        if message:
            fields["message"] = message
        self._sink.emit("state", **fields)

    def _validate(self) -> None:
        """Check every disk before writing anything, so disk 3's typo fails before disk 1."""
        onto_devices = any(isinstance(disk.output, DeviceOutput) for disk in self.job.disks)
        if onto_devices and self.job.operation is Operation.OFFLINE_FIX:
            raise BadInput(
                Reason.UNSUPPORTED, "offline_fix of a block device output is not supported yet"
            )
        source_files: list[Path] = []
        finals: list[Path] = []
        checked: list[device_output.BlockDevice] = []
        for disk in self.job.disks:
            self._runner.cancel.raise_if_cancelled()
            output = disk.output if self.job.writes_outputs else None
            if isinstance(output, Output):
                finals.append(check_output(output))
            with open_source(disk.source, self._runner, self.job.limits) as opened:
                source_files.extend(opened.files)
                if isinstance(output, DeviceOutput):
                    size = int(opened.info["virtual-size"])
                    checked.append(device_output.check_device(output, size))
        for final in finals:
            check_not_a_source(final, tuple(source_files))
        for device in checked:
            device.check_not_a_source(tuple(source_files))
        if len({device.rdev for device in checked}) != len(checked):
            raise BadInput(Reason.INVALID_JOB, "two disks write the same device (by two names)")

    def _run_disk(self, disk: Disk, staged: list[PendingOutput]) -> DiskResult:
        if self.job.operation is Operation.INSPECT:
            self.board.start_phase(disk.name, "inspecting")
            from hyper2kvm_worker.inspection import Inspector, summary  # inspect jobs only

            report = Inspector(self._runner, self.job.limits).inspect(disk.source)
            self.reports[disk.name] = report
            self._sink.emit("report", disk=disk.name, inspection=report)
            self.board.set_size(disk.name, int(report["virtual_size"]))
            self.board.finish_disk(disk.name)
            return DiskResult(
                name=disk.name, virtual_size=int(report["virtual_size"]), inspection=summary(report)
            )
        assert disk.output is not None  # the protocol guarantees it for convert

        def on_phase(phase: str) -> None:
            self.board.start_phase(disk.name, phase)
            self._move(JobState.VERIFYING if phase == "verifying" else JobState.RUNNING)

        observer = Observer(
            on_size=lambda size: self.board.set_size(disk.name, size),
            on_phase=on_phase,
            on_bytes=lambda done: self.board.advance(disk.name, done),
            on_note=lambda message: self._sink.emit(
                "log", level="info", disk=disk.name, message=message
            ),
        )
        result, output = Converter(self._runner, self.job.limits).convert(
            disk.name, disk.source, disk.output, self.job.verify, observer
        )
        staged.append(output)
        if self.job.operation is Operation.CONVERT:
            self.board.finish_disk(disk.name)
            self._sink.emit("disk", **result.model_dump(exclude_none=True))
        return result

    def _offline_fix(
        self, converted: list[DiskResult], staged: list[PendingOutput]
    ) -> tuple[list[DiskResult], WorkerError | None]:
        """The fixed disks' results, and why the outputs must not be committed (if so)."""
        # Imported here: libguestfs' modules cost start-up time the other operations skip.
        from hyper2kvm_worker.offline_fix import OfflineFix

        self._move(JobState.RUNNING)
        fixer = OfflineFix(self._runner, self._sink, self.board)
        if self.job.fix.dry_run:
            results, failure = fixer.dry_run(self.job), None
        else:
            # Only staged files reach here: _validate refuses offline_fix onto a device.
            files = [output for output in staged if isinstance(output, StagedOutput)]
            results, failure = fixer.fix_staged(self.job, converted, files), fixer.failure()
        self.reports.update({disk.name: fixer.report for disk in self.job.disks})
        return results, failure

    def _tick(self) -> None:
        while not self._ticker_stop.wait(PROGRESS_EVENT_SECONDS):
            if self._machine.state in (JobState.RUNNING, JobState.VERIFYING):
                self._sink.emit("progress", **self.board.snapshot().model_dump())
