"""Fixtures for the worker tests: the real CLI, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.worker.images import MiB, make_raw, raw_digest, same_content

WORKER = Path(sys.executable).parent / "hyper2kvm-worker"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def result(self) -> dict[str, Any]:
        results = [event for event in self.events() if event["type"] == "result"]
        assert len(results) == 1, self.stdout
        return results[0]


RunWorker = Callable[..., Outcome]


@pytest.fixture
def run_worker() -> RunWorker:
    def run(*args: str | Path, timeout: float = 300) -> Outcome:
        done = subprocess.run(
            [str(WORKER), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Outcome(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def small_raw(tmp_path: Path) -> Path:
    """64 MiB virtual, 6 MiB of data in three places, the first sector included."""
    return make_raw(
        tmp_path / "small.raw", 64 * MiB, [(0, 2 * MiB), (20 * MiB, 3 * MiB), (63 * MiB, MiB)]
    )


def run_one_disk_job(
    tmp_path: Path,
    source: dict[str, Any],
    *,
    operation: str = "convert",
    limits: dict[str, Any] | None = None,
    listen: str | None = None,
) -> Outcome:
    """`hyper2kvm-worker run` of a protocol job of one disk `d` from `source`; a convert
    writes `tmp_path/out/d.qcow2`."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    disk: dict[str, Any] = {"name": "d", "source": source}
    if operation == "convert":
        disk["output"] = {"root": str(out), "path": "d.qcow2"}
    job = {"name": "one-disk", "operation": operation, "disks": [disk], "limits": limits or {}}
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    argv = [str(WORKER), "run", "--job", str(job_file)]
    argv += ["--listen", listen] if listen else ["--no-listen"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_converted(outcome: Outcome, output: Path, raw: Path) -> None:
    """The job succeeded, verified, and `output` (qcow2) holds exactly `raw`'s content."""
    assert outcome.returncode == 0, outcome.stderr
    disk = outcome.result()["disks"][0]
    assert disk["verified"] is True
    assert disk["digest"] == raw_digest(raw)
    assert same_content(output, raw, "qcow2", "raw")


def assert_one_line_error(outcome: Outcome, code: int, reason: str) -> None:
    assert outcome.returncode == code, (outcome.returncode, outcome.stderr)
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert lines[0].startswith("hyper2kvm-worker: error: ")
    assert lines[0].endswith(f"[{reason}]"), lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())
