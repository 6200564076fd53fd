"""The operator reading a worker's /progress that a hostile Pod serves (a local server)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path

import pytest

from hyper2kvm_operator.progress_reader import ProgressReader
from tests.worker.http_server import serve

GOOD = {"state": "running", "percent": 12.5, "bytes_done": 1, "bytes_total": 8}
DISK = b'{"name": "d", "phase": "converting"}'


def read_from(folder: Path, answer: bytes) -> tuple[object, int]:
    """What the reader makes of `answer`, and the most memory it held meanwhile."""
    (folder / "progress").write_bytes(answer)
    with serve(folder) as url:
        port = int(url.rsplit(":", 1)[1])

        async def read() -> object:
            reader = ProgressReader(port, timeout_seconds=10)
            try:
                return await reader.read("127.0.0.1")
            finally:
                await reader.close()

        tracemalloc.start()
        try:
            progress = asyncio.run(read())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return progress, peak


def test_a_true_answer_is_read(tmp_path: Path) -> None:
    answer = b'{"state": "running", "percent": 12.5, "disks": [' + b",".join([DISK] * 64) + b"]}"
    progress, _ = read_from(tmp_path, answer)
    assert progress is not None and getattr(progress, "percent", None) == 12.5


def test_a_huge_answer_is_not_read_to_its_end(tmp_path: Path) -> None:
    """12 MiB of a valid-looking document: refused after 64 KiB, memory stays small."""
    padded = {**GOOD, "disks": [{"name": "x" * (12 << 20)}]}
    progress, peak = read_from(tmp_path, json.dumps(padded).encode())
    assert progress is None
    assert peak < 4 << 20, f"the reader held {peak} bytes"


@pytest.mark.parametrize(
    "answer",
    [
        b'{"state": "running", "percent": NaN}',
        b'{"state": "running", "rate_bytes_per_second": Infinity}',
        b'{"state": "running", "percent": 1e400}',
        b'{"state": "running", "eta_seconds": -5}',
        b'{"state": "running", "disks": [' + b",".join([DISK] * 65) + b"]}",
        b"[1, 2, 3]",
    ],
)
def test_impossible_values_are_no_answer_instead_of_a_crash(tmp_path: Path, answer: bytes) -> None:
    progress, _ = read_from(tmp_path, answer)
    assert progress is None
