"""Progress arithmetic: parsing `qemu-img -p` output and turning byte counts into rate and ETA.

Pure code: the clock is passed in, so tests drive time by hand.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

_QEMU_PERCENT = re.compile(r"\((\d{1,3}(?:\.\d+)?)/100%\)")


ETA_MAX_SECONDS = 1e9  # beyond that, "when" means nothing; the protocol bounds it so


def parse_qemu_percent(chunk: str) -> float | None:
    """The last percentage in a chunk of `qemu-img -p` output (lines end in `\\r`), or None."""
    matches = _QEMU_PERCENT.findall(chunk)
    if not matches:
        return None
    return min(100.0, float(matches[-1]))


@dataclass(frozen=True)
class Snapshot:
    bytes_done: int
    bytes_total: int
    percent: float
    rate: float  # bytes per second over the recent window
    eta_seconds: float | None


class RateMeter:
    """Bytes done over time for one long step; progress only moves forward."""

    def __init__(self, bytes_total: int, now: float, window_seconds: float = 5.0) -> None:
        self.bytes_total = max(0, bytes_total)
        self.bytes_done = 0
        self._window = window_seconds
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])
        self._start = now

    def update(self, bytes_done: int, now: float) -> None:
        done = min(max(bytes_done, self.bytes_done), self.bytes_total)
        self.bytes_done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()

    def update_percent(self, percent: float, now: float) -> None:
        self.update(int(self.bytes_total * percent / 100.0), now)

    def snapshot(self) -> Snapshot:
        first_time, first_done = self._samples[0]
        last_time, last_done = self._samples[-1]
        elapsed = last_time - first_time
        rate = (last_done - first_done) / elapsed if elapsed > 0 else 0.0
        remaining = self.bytes_total - self.bytes_done
        if remaining == 0:
            eta: float | None = 0.0
        elif rate > 0:
            eta = min(remaining / rate, ETA_MAX_SECONDS)
        else:
            eta = None
        percent = 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 0.0
        return Snapshot(self.bytes_done, self.bytes_total, percent, rate, eta)
