from __future__ import annotations

import pytest

from hyper2kvm_worker.progress import RateMeter, parse_qemu_percent


@pytest.mark.parametrize(
    ("chunk", "percent"),
    [
        ("    (0.00/100%)\r", 0.0),
        ("    (12.50/100%)\r    (13.01/100%)\r", 13.01),
        ("(100.00/100%)\r\n", 100.0),
        ("no progress here", None),
        ("    (45.", None),
    ],
)
def test_parse_qemu_percent(chunk: str, percent: float | None) -> None:
    assert parse_qemu_percent(chunk) == percent


def test_rate_and_eta_from_a_steady_stream() -> None:
    meter = RateMeter(1000, now=0.0)
    for second in range(1, 5):
        meter.update(100 * second, now=float(second))
    snap = meter.snapshot()
    assert snap.bytes_done == 400
    assert snap.percent == 40.0
    assert snap.rate == pytest.approx(100.0)
    assert snap.eta_seconds == pytest.approx(6.0)


def test_progress_never_goes_back_or_past_the_total() -> None:
    meter = RateMeter(1000, now=0.0)
    meter.update(600, now=1.0)
    meter.update(300, now=2.0)
    assert meter.bytes_done == 600
    meter.update(5000, now=3.0)
    assert meter.bytes_done == 1000
    assert meter.snapshot().eta_seconds == 0.0


def test_rate_uses_a_recent_window() -> None:
    meter = RateMeter(10_000, now=0.0, window_seconds=5.0)
    meter.update(5000, now=1.0)  # a fast start...
    for second in range(2, 20):
        meter.update(5000 + 10 * (second - 1), now=float(second))  # ...then a crawl
    assert meter.snapshot().rate == pytest.approx(10.0)


def test_unknown_rate_has_no_eta() -> None:
    assert RateMeter(100, now=0.0).snapshot().eta_seconds is None
