from __future__ import annotations

from hyper2kvm_worker.console import human_bytes, human_seconds, progress_line
from hyper2kvm_worker.protocol import JobState
from hyper2kvm_worker.reporting import ProgressBoard


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_board_counts_conversion_and_verification_passes() -> None:
    clock = Clock()
    board = ProgressBoard(["a", "b"], passes=2, clock=clock)
    board.set_size("a", 100)
    board.set_size("b", 300)
    board.set_state(JobState.RUNNING)
    board.start_phase("a", "converting")
    clock.now = 1.0
    board.advance("a", 100)
    board.start_phase("a", "verifying")
    clock.now = 2.0
    board.advance("a", 50)

    snap = board.snapshot()

    assert (snap.bytes_done, snap.bytes_total) == (150, 800)
    assert snap.percent == 18.75
    assert snap.rate_bytes_per_second == 75.0
    assert [(d.name, d.phase, d.bytes_done) for d in snap.disks] == [
        ("a", "verifying", 150),
        ("b", "waiting", 0),
    ]
    board.finish_disk("a")
    assert board.snapshot().disks[0].bytes_done == 200


def test_progress_line_and_units() -> None:
    clock = Clock()
    board = ProgressBoard(["a"], passes=1, clock=clock)
    board.set_size("a", 4 << 30)
    board.start_phase("a", "converting")
    clock.now = 2.0
    board.advance("a", 1 << 30)
    line = progress_line(board.snapshot(), width=8)
    assert line.startswith("[##------]  25.0% converting")
    assert "512.0 MiB/s ETA 00:06" in line
    assert human_bytes(None) == "-"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_seconds(3725) == "1:02:05"
    assert human_seconds(None) == "--:--"
