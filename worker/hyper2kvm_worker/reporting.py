"""Live progress of a job: a thread-safe board the converter writes and readers snapshot.

Bytes count work: each disk's virtual size once for conversion and once more for
verification when it is on, so the percentage moves evenly through both passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from hyper2kvm_worker.progress import RateMeter
from hyper2kvm_worker.protocol import DiskProgress, JobState, Progress


@dataclass
class _Disk:
    name: str
    phase: str = "waiting"
    passes: int = 1
    size: int = 0  # virtual bytes, known once the source is open
    done_before_phase: int = 0
    phase_done: int = 0

    @property
    def total(self) -> int:
        return self.size * self.passes

    @property
    def done(self) -> int:
        return self.done_before_phase + self.phase_done


class ProgressBoard:
    def __init__(self, disk_names: list[str], passes: int, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state = JobState.PENDING
        self._disks = {name: _Disk(name=name, passes=passes) for name in disk_names}
        self._meter = RateMeter(0, clock())

    def set_state(self, state: JobState) -> None:
        with self._lock:
            self._state = state

    def set_size(self, disk: str, size: int) -> None:
        with self._lock:
            self._disks[disk].size = size
            self._meter.bytes_total = sum(d.total for d in self._disks.values())

    def start_phase(self, disk: str, phase: str) -> None:
        with self._lock:
            entry = self._disks[disk]
            if entry.phase in ("converting", "verifying"):
                entry.done_before_phase += entry.size  # the previous pass is complete
            entry.phase, entry.phase_done = phase, 0

    def advance(self, disk: str, phase_bytes: int) -> None:
        with self._lock:
            entry = self._disks[disk]
            entry.phase_done = max(entry.phase_done, min(phase_bytes, entry.size))
            self._meter.update(sum(d.done for d in self._disks.values()), self._clock())

    def finish_disk(self, disk: str) -> None:
        with self._lock:
            entry = self._disks[disk]
            entry.phase, entry.done_before_phase, entry.phase_done = "done", entry.total, 0
            self._meter.update(sum(d.done for d in self._disks.values()), self._clock())

    def snapshot(self) -> Progress:
        with self._lock:
            meter = self._meter.snapshot()
            return Progress(
                state=self._state,
                percent=round(meter.percent, 2),
                bytes_done=meter.bytes_done,
                bytes_total=meter.bytes_total,
                rate_bytes_per_second=round(meter.rate, 1),
                eta_seconds=None if meter.eta_seconds is None else round(meter.eta_seconds, 1),
                disks=[
                    DiskProgress(name=d.name, phase=d.phase, bytes_done=d.done, bytes_total=d.total)
                    for d in self._disks.values()
                ],
            )
