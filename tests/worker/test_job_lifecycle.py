"""`run --job` end to end: events, result, the HTTP endpoints during a real conversion, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import requirements
from tests.worker.conftest import WORKER, leftovers
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_raw, raw_digest, same_content, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

DEADLINE_SECONDS = 120


@pytest.fixture
def slow_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 48 MiB-data VMDK served at 6 MiB/s: a conversion that lasts several seconds."""
    raw = make_raw(tmp_path / "slow.raw", 256 * MiB, [(0, 16 * MiB), (100 * MiB, 32 * MiB)])
    served = tmp_path / "www"
    served.mkdir()
    to_vmdk(raw, served / "slow.vmdk", "monolithicSparse")
    with serve(served, bytes_per_second=6 * MiB) as url:
        yield f"{url}/slow.vmdk", raw


def read_events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    for line in stream:
        if time.monotonic() > deadline:
            raise AssertionError("no event in time")
        yield json.loads(line)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def write_job(tmp_path: Path, url: str, out: Path) -> Path:
    job = {
        "version": "hyper2kvm.io/worker-job/v1",
        "name": "slow-vm",
        "operation": "convert",
        "disks": [
            {
                "name": "disk0",
                "source": {"kind": "http", "url": url},
                "output": {"root": str(out), "path": "slow.qcow2"},
            }
        ],
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def test_progress_metrics_and_health_during_a_real_conversion(
    slow_url: tuple[str, Path], tmp_path: Path
) -> None:
    url, raw = slow_url
    out = tmp_path / "out"
    out.mkdir()
    job = write_job(tmp_path, url, out)
    events_file, result_file = tmp_path / "events.jsonl", tmp_path / "result.json"
    argv = [
        str(WORKER),
        "run",
        "--job",
        str(job),
        "--events",
        str(events_file),
        "--result",
        str(result_file),
        "--listen",
        "127.0.0.1:0",
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdout is not None
        events = read_events(worker.stdout)
        address = next(e["address"] for e in events if e["type"] == "listening")
        base = f"http://{address}"
        progress: dict[str, Any] = {}
        for event in events:
            if event["type"] == "progress" and 0 < event["bytes_done"] < event["bytes_total"]:
                status, body = get(f"{base}/progress")
                assert status == 200
                progress = json.loads(body)
                break
        assert progress["state"] in ("running", "verifying")
        assert progress["disks"][0]["name"] == "disk0"
        assert progress["bytes_total"] == 2 * 256 * MiB  # conversion plus verification pass
        assert 0 < progress["percent"] < 100

        status, text = get(f"{base}/metrics")
        assert status == 200
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert families["hyper2kvm_worker_bytes_total"].samples[0].value == 2 * 256 * MiB
        assert families["hyper2kvm_worker_bytes_done"].samples[0].value > 0
        states = {s.labels["state"]: s.value for s in families["hyper2kvm_worker_state"].samples}
        assert sum(states.values()) == 1

        status, body = get(f"{base}/healthz")
        assert status == 200
        assert json.loads(body)["healthy"] is True
        assert str(out) in json.loads(body)["free_bytes"]

        remaining = list(events)
        assert worker.wait(DEADLINE_SECONDS) == 0

    result = json.loads(result_file.read_text())
    assert len(result_file.read_bytes()) < 4096
    assert result["state"] == "succeeded"
    assert result["disks"][0]["digest"] == raw_digest(raw)
    assert [t["state"] for t in result["history"]] == [
        "pending",
        "validating",
        "running",
        "verifying",
        "succeeded",
    ]
    assert all(
        a["time"] <= b["time"]
        for a, b in zip(result["history"], result["history"][1:], strict=False)
    )
    logged = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["state"] for e in logged if e["type"] == "state"] == [
        "validating",
        "running",
        "verifying",
        "succeeded",
    ]
    assert remaining[-1]["type"] == "result"


def test_sigterm_cancels_cleanly(slow_url: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = slow_url
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(WORKER), "convert", "--json", url, str(out / "cancelled.qcow2")]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as worker:
        assert worker.stdout is not None
        events = read_events(worker.stdout)
        for event in events:
            if event["type"] == "progress" and event["bytes_done"] > 0:
                break
        children = psutil.Process(worker.pid).children(recursive=True)
        names = {child.name() for child in children}
        assert {"nbdkit", "qemu-img"} <= names, names
        assert any(p.name.startswith(".cancelled.qcow2") for p in out.iterdir())

        worker.send_signal(signal.SIGTERM)
        remaining = list(events)
        assert worker.wait(DEADLINE_SECONDS) == 143
        stderr = worker.stderr.read() if worker.stderr else ""

    states = [e["state"] for e in remaining if e["type"] == "state"]
    assert states[-1] == "cancelled"
    assert remaining[-1]["type"] == "result"
    assert remaining[-1]["error"]["reason"] == "Cancelled"
    assert "[Cancelled]" in stderr and "Traceback" not in stderr
    assert leftovers(out) == []
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_a_failed_disk_leaves_no_output_of_any_disk(small_raw: Path, tmp_path: Path) -> None:
    good = to_vmdk(small_raw, tmp_path / "good.vmdk", "monolithicSparse")
    bad = to_vmdk(small_raw, tmp_path / "bad.vmdk", "streamOptimized")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # damaged, found mid-job
    out = tmp_path / "out"
    out.mkdir()
    disks = [
        {"name": name, "source": {"kind": "file", "root": str(tmp_path), "path": vmdk.name},
         "output": {"root": str(out), "path": f"{name}.qcow2"}}
        for name, vmdk in (("good", good), ("bad", bad))
    ]  # fmt: skip
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "two", "operation": "convert", "disks": disks}))
    result_file = tmp_path / "result.json"

    done = subprocess.run(
        [str(WORKER), "run", "--job", str(job), "--result", str(result_file), "--no-listen"],
        capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False,
    )  # fmt: skip

    assert done.returncode == 3, done.stderr
    result = json.loads(result_file.read_text())
    assert (result["state"], result["error"]["reason"]) == ("failed", "InvalidImage")
    assert leftovers(out) == []


def test_an_output_may_not_replace_a_source(small_raw: Path, tmp_path: Path) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "disk.vmdk", "monolithicSparse")
    before = vmdk.read_bytes()
    done = subprocess.run(
        [str(WORKER), "convert", "--overwrite", str(vmdk), str(vmdk)],
        capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert "[InvalidJob]" in done.stderr and "never overwritten" in done.stderr
    assert vmdk.read_bytes() == before


@pytest.mark.parametrize("width", [1, 3])
def test_disks_convert_as_many_at_once_as_the_job_says(width: int, tmp_path: Path) -> None:
    """Three disks of one slow server (12 MiB of data each, 9 MiB/s for all): with
    parallel_disks 3 they are all at work together, with 1 never two at once; either way
    every output holds its disk, in the disks' order."""
    raw = make_raw(tmp_path / "disk.raw", 64 * MiB, [(0, 4 * MiB), (32 * MiB, 8 * MiB)])
    served = tmp_path / "www"
    served.mkdir()
    to_vmdk(raw, served / "disk.vmdk", "monolithicSparse")
    with serve(served, bytes_per_second=9 * MiB) as base:
        done, out = run_three(f"{base}/disk.vmdk", width, tmp_path)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    at_work = [
        sum(disk["phase"] == "converting" for disk in event["disks"])
        for event in events
        if event["type"] == "progress"
    ]
    assert max(at_work) == width, at_work
    result = json.loads((tmp_path / "result.json").read_text())
    assert [disk["name"] for disk in result["disks"]] == ["d0", "d1", "d2"]
    for index in range(3):
        assert same_content(raw, out / f"d{index}.qcow2", "raw", "qcow2")


def run_three(
    url: str, width: int, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    out.mkdir()
    disks = [
        {"name": f"d{i}", "source": {"kind": "http", "url": url},
         "output": {"root": str(out), "path": f"d{i}.qcow2"}}
        for i in range(3)
    ]  # fmt: skip
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "three", "operation": "convert", "disks": disks,
                               "verify": False, "parallel_disks": width}))  # fmt: skip
    result_file = tmp_path / "result.json"

    done = subprocess.run(
        [str(WORKER), "run", "--job", str(job), "--result", str(result_file), "--no-listen"],
        capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False,
    )  # fmt: skip
    return done, out
