"""Running one Worker Job Protocol v1 job through its state machine to a Result."""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
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
from hyper2kvm_worker.tools import CancelToken, ToolRunner

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
        self._lock = threading.RLock()  # the board and the state, shared by disks at work
        self._phases: dict[str, str] = {}  # the phase of each disk at work

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
            if self.job.operation is Operation.INSPECT:
                results = [self._inspect_disk(disk) for disk in self.job.disks]
            elif self.job.writes_outputs:
                results = self._convert_disks(staged)
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

    def _inspect_disk(self, disk: Disk) -> DiskResult:
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

    def _convert_disks(self, staged: list[PendingOutput]) -> list[DiskResult]:
        """Every disk, up to `parallel_disks(job)` at once; the first failure stops the
        others and is the job's. Outputs are staged in the disks' order."""
        disks = self.job.disks
        tokens = [self._runner.cancel.child() for _ in disks]
        done: dict[int, tuple[DiskResult, PendingOutput]] = {}
        width = parallel_disks(self.job)
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="disk") as pool:
            futures = [pool.submit(self._convert_disk, disk, token)
                       for disk, token in zip(disks, tokens, strict=True)]  # fmt: skip
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in finished and f.exception() is not None]
            if failed:
                for token in tokens:
                    token.cancel()
                wait(futures)
            for index, future in enumerate(futures):
                if future.done() and not future.cancelled() and future.exception() is None:
                    done[index] = future.result()
        staged.extend(done[index][1] for index in sorted(done))  # discarded on failure
        if failed:
            raise _first_failure(failed, futures)
        return [done[index][0] for index in range(len(disks))]

    def _convert_disk(self, disk: Disk, cancel: CancelToken) -> tuple[DiskResult, PendingOutput]:
        assert disk.output is not None  # the protocol guarantees it for convert

        def on_phase(phase: str) -> None:
            with self._lock:
                self.board.start_phase(disk.name, phase)
                self._phases[disk.name] = phase
                # Verifying once every disk at work verifies; converting while any converts.
                verifying = all(p == "verifying" for p in self._phases.values())
                self._move(JobState.VERIFYING if verifying else JobState.RUNNING)

        def on_bytes(done: int) -> None:
            with self._lock:
                self.board.advance(disk.name, done)

        def on_size(size: int) -> None:
            with self._lock:
                self.board.set_size(disk.name, size)

        observer = Observer(
            on_size=on_size,
            on_phase=on_phase,
            on_bytes=on_bytes,
            on_note=lambda message: self._sink.emit(
                "log", level="info", disk=disk.name, message=message
            ),
        )
        result, output = Converter(ToolRunner(cancel), self.job.limits).convert(
            disk.name, disk.source, disk.output, self.job.verify, observer,
            self.job.skip_free_space,
        )  # fmt: skip
        with self._lock:
            self._phases.pop(disk.name, None)
            if self.job.operation is Operation.CONVERT:
                self.board.finish_disk(disk.name)
                self._sink.emit("disk", **result.model_dump(exclude_none=True))
        return result, output

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
                with self._lock:
                    snapshot = self.board.snapshot().model_dump()
                self._sink.emit("progress", **snapshot)


def parallel_disks(job: Job) -> int:
    """How many of the job's disks convert at once: the job's say, else one per CPU this
    process may use (its cgroup's quota, or the CPUs it may run on), at least one."""
    if job.parallel_disks is not None:
        return min(job.parallel_disks, len(job.disks))
    return max(1, min(len(job.disks), usable_cpus()))


def usable_cpus() -> int:
    cpus = len(os.sched_getaffinity(0))
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
            if int(quota) > 0:
                cpus = min(cpus, max(1, int(quota) // int(period)))
        except (OSError, ValueError):
            pass
    return cpus


def _first_failure(failed: list[Future[Any]], futures: list[Future[Any]]) -> BaseException:
    """The failure that stopped the job, not the cancellations it caused in other disks."""
    later = [f for f in futures if f not in failed and f.done() and not f.cancelled()]
    errors = [e for f in [*failed, *later] if (e := f.exception()) is not None]
    real = [e for e in errors if not isinstance(e, Cancelled)]
    return (real or errors)[0]
