from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from hyper2kvm_worker.protocol import (
    RESULT_MAX_BYTES,
    DiskResult,
    Job,
    JobState,
    Output,
    Result,
    Transition,
    encode_result,
)


def job(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "vm1",
        "operation": "convert",
        "disks": [
            {
                "name": "disk0",
                "source": {"kind": "file", "root": "/in", "path": "a.vmdk"},
                "output": {"root": "/out", "path": "a.qcow2"},
            }
        ],
    }
    base.update(overrides)
    return base


def test_a_minimal_job_gets_safe_defaults() -> None:
    parsed = Job.model_validate(job())
    assert parsed.version == "hyper2kvm.io/worker-job/v1"
    assert parsed.verify is True
    output = parsed.disks[0].output
    assert isinstance(output, Output)  # an output without a kind is a file
    assert (output.format.value, output.compression.value, output.overwrite) == (
        "qcow2",
        "none",
        False,
    )
    assert output.full_path == "/out/a.qcow2"


def test_round_trip_through_json() -> None:
    parsed = Job.model_validate(job())
    assert Job.model_validate_json(parsed.model_dump_json()) == parsed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "hyper2kvm.io/worker-job/v2"}, "version"),
        ({"operation": "explode"}, "operation"),
        ({"disks": []}, "at least 1"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_jobs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Job.model_validate(job(**change))


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.vmdk", "a/../../x.vmdk", ""])
def test_source_paths_stay_inside_the_volume(path: str) -> None:
    data = job()
    data["disks"][0]["source"]["path"] = path
    with pytest.raises(ValidationError):
        Job.model_validate(data)


def test_convert_needs_outputs_and_distinct_names() -> None:
    data = job()
    del data["disks"][0]["output"]
    with pytest.raises(ValidationError, match="needs an output"):
        Job.model_validate(data)
    twice = job()
    twice["disks"] = twice["disks"] * 2
    with pytest.raises(ValidationError, match="unique"):
        Job.model_validate(twice)
    inspect = job(operation="inspect")
    del inspect["disks"][0]["output"]
    assert Job.model_validate(inspect).disks[0].output is None


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"format": "raw", "compression": "zstd"}, "compression needs format qcow2"),
        ({"format": "raw", "preallocation": "metadata"}, "needs format qcow2"),
        ({"compression": "zlib", "preallocation": "falloc"}, "cannot be preallocated"),
    ],
)
def test_output_options_must_fit_the_format(output: dict[str, str], message: str) -> None:
    data = job()
    data["disks"][0]["output"].update(output)
    with pytest.raises(ValidationError, match=message):
        Job.model_validate(data)


def test_http_sources_need_an_http_url() -> None:
    data = job()
    data["disks"][0]["source"] = {"kind": "http", "url": "file:///etc/passwd"}
    with pytest.raises(ValidationError):
        Job.model_validate(data)


def test_results_always_fit_a_termination_message() -> None:
    report = {"partitions": ["x" * 200] * 10}
    big = Result(
        job="vm",
        state=JobState.SUCCEEDED,
        disks=[
            DiskResult(
                name=f"disk{i}",
                output=f"/out/{'d' * 100}{i}.qcow2",
                digest="blake3:" + "0" * 64,
                inspection=report,
            )
            for i in range(30)
        ],
        history=[Transition(state=JobState.PENDING, time=float(i)) for i in range(50)],
    )
    text = encode_result(big)
    assert len(text.encode()) <= RESULT_MAX_BYTES
    assert json.loads(text)["state"] == "succeeded"


def test_small_results_are_kept_whole() -> None:
    result = Result(
        job="vm", state=JobState.FAILED, disks=[DiskResult(name="d", inspection={"a": 1})]
    )
    assert json.loads(encode_result(result))["disks"][0]["inspection"] == {"a": 1}
