"""A disk written straight onto a block device (a Block PVC), raw, and read back to verify."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from pydantic import ValidationError

from hyper2kvm_worker.protocol import DeviceOutput, Job, Output
from tests import requirements
from tests.worker.conftest import WORKER, Outcome, RunWorker, assert_one_line_error
from tests.worker.images import MiB, make_raw, raw_digest, to_vmdk

pytestmark = [
    pytest.mark.needs(*requirements.WORKER_TOOLS, "losetup"),
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
]

DISK = 64 * MiB
MakeDevice = Callable[[int, bool], Path]


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[MakeDevice]:
    """Loop devices over files in tmp_path: sparse (all zero) or full of other data."""
    attached: list[str] = []

    def make(size: int, old_data: bool) -> Path:
        backing = tmp_path / f"device-{len(attached)}.img"
        make_raw(backing, size, [(0, size)] if old_data else [], seed=99)
        device = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
        ).stdout.strip()
        attached.append(device)
        return Path(device)

    try:
        yield make
    finally:
        for device in attached:
            subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def vmdk(tmp_path: Path) -> tuple[Path, Path]:
    """A 64 MiB disk (data in three places, zeros between) as raw and as a sparse VMDK."""
    raw = make_raw(
        tmp_path / "disk.raw", DISK, [(0, 2 * MiB), (20 * MiB, 3 * MiB), (63 * MiB, MiB)]
    )
    return raw, to_vmdk(raw, tmp_path / "disk.vmdk", "monolithicSparse")


def head_digest(path: Path, length: int) -> str:
    hasher = blake3.blake3()
    with path.open("rb") as stream:
        hasher.update(stream.read(length))
    return f"blake3:{hasher.hexdigest()}"


def run_device_job(tmp_path: Path, source: Path, device: Path | str) -> Outcome:
    disk = {
        "name": "d",
        "source": {"kind": "file", "root": str(source.parent), "path": source.name},
        "output": {"kind": "device", "device": str(device)},
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(
        json.dumps({"name": "onto-device", "operation": "convert", "disks": [disk]})
    )
    argv = [str(WORKER), "run", "--job", str(job_file), "--no-listen"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


def converted_disk(outcome: Outcome, raw: Path, device: Path) -> dict[str, Any]:
    """The job succeeded, verified, and the device's first bytes are exactly the disk."""
    assert outcome.returncode == 0, outcome.stderr
    disk: dict[str, Any] = outcome.result()["disks"][0]
    assert disk["verified"] is True
    assert disk["digest"] == raw_digest(raw)
    assert (disk["output"], disk["format"], disk["virtual_size"]) == (str(device), "raw", DISK)
    assert "file_size" not in disk
    assert head_digest(device, DISK) == raw_digest(raw)
    return disk


def notes(outcome: Outcome) -> list[str]:
    return [event["message"] for event in outcome.events() if event["type"] == "log"]


def test_a_device_that_held_data_gets_the_disk_exactly(
    tmp_path: Path, vmdk: tuple[Path, Path], make_device: MakeDevice
) -> None:
    raw, source = vmdk
    device = make_device(DISK + 16 * MiB, True)
    tail_before = (tmp_path / "device-0.img").read_bytes()[DISK:]

    outcome = run_device_job(tmp_path, source, device)

    disk = converted_disk(outcome, raw, device)
    assert disk["zero_skipped"] is False  # old data read back: the zeros had to be written
    assert notes(outcome) == [f"{device} holds data: zero regions are written too"]
    with device.open("rb") as stream:
        stream.seek(DISK)
        assert stream.read() == tail_before  # beyond the disk, the device is left alone


def test_an_all_zero_device_skips_writing_zero_regions(
    tmp_path: Path, vmdk: tuple[Path, Path], make_device: MakeDevice
) -> None:
    raw, source = vmdk
    device = make_device(DISK, False)

    outcome = run_device_job(tmp_path, source, device)

    disk = converted_disk(outcome, raw, device)
    assert disk["zero_skipped"] is True
    assert notes(outcome) == [f"{device} reads as zero: zero regions are not written"]


def test_a_device_smaller_than_the_disk_is_refused_untouched(
    tmp_path: Path, vmdk: tuple[Path, Path], make_device: MakeDevice
) -> None:
    _, source = vmdk
    device = make_device(DISK - MiB, True)
    before = head_digest(device, DISK)

    outcome = run_device_job(tmp_path, source, device)

    assert outcome.returncode == 3, outcome.stderr
    error = outcome.result()["error"]
    assert error["reason"] == "InsufficientSpace"
    assert f"{DISK - MiB} bytes (0.06 GiB)" in error["message"]
    assert f"{DISK} bytes (0.06 GiB)" in error["message"]
    assert head_digest(device, DISK) == before


def test_a_regular_file_is_not_a_device(tmp_path: Path, vmdk: tuple[Path, Path]) -> None:
    _, source = vmdk
    plain = make_raw(tmp_path / "plain.img", DISK, [(0, MiB)])
    before = raw_digest(plain)

    outcome = run_device_job(tmp_path, source, plain)

    assert outcome.returncode == 3, outcome.stderr
    error = outcome.result()["error"]
    assert error["reason"] == "InvalidJob"
    assert "is not a block device" in error["message"]
    assert raw_digest(plain) == before


def test_the_command_line_writes_onto_a_device_raw_only(
    vmdk: tuple[Path, Path], make_device: MakeDevice, run_worker: RunWorker
) -> None:
    raw, source = vmdk
    device = make_device(DISK, True)

    refused = run_worker("convert", source, device, "--format", "qcow2")
    assert_one_line_error(refused, 3, "InvalidJob")
    assert "block device, written raw only" in refused.stderr

    done = run_worker("convert", source, device)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{device}: raw, 64.0 MiB virtual, written onto the device")
    assert head_digest(device, DISK) == raw_digest(raw)


def test_offline_fix_onto_a_device_is_refused(
    vmdk: tuple[Path, Path], make_device: MakeDevice, run_worker: RunWorker
) -> None:
    _, source = vmdk
    device = make_device(DISK, True)
    before = head_digest(device, DISK)

    refused = run_worker("fix", source, device)

    assert_one_line_error(refused, 3, "Unsupported")
    assert "offline_fix of a block device output is not supported yet" in refused.stderr
    assert head_digest(device, DISK) == before


def job_with_outputs(*outputs: dict[str, Any]) -> dict[str, Any]:
    source = {"kind": "file", "root": "/in", "path": "a.vmdk"}
    disks = [{"name": f"d{i}", "source": source, "output": o} for i, o in enumerate(outputs)]
    return {"name": "vm", "operation": "convert", "disks": disks}


def test_outputs_without_a_kind_are_files_and_devices_say_theirs() -> None:
    job = Job.model_validate(
        job_with_outputs(
            {"root": "/out", "path": "a.qcow2"}, {"kind": "device", "device": "/dev/x"}
        )
    )
    file, device = (disk.output for disk in job.disks)
    assert isinstance(file, Output)
    assert isinstance(device, DeviceOutput)
    assert Job.model_validate_json(job.model_dump_json()) == job


def test_two_disks_may_not_write_one_device() -> None:
    device = {"kind": "device", "device": "/dev/hyper2kvm/vol-0"}
    with pytest.raises(ValidationError, match="same output path or device"):
        Job.model_validate(job_with_outputs(device, device))
