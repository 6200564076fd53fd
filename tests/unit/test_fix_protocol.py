"""The offline_fix part of the Worker Job Protocol: outputs, dry runs and fix options."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hyper2kvm_worker.protocol import DiskResult, FixOptions, Job, Operation, Result, encode_result

SOURCE = {"kind": "file", "root": "/data", "path": "vm.vmdk"}
OUTPUT = {"root": "/out", "path": "vm.qcow2"}


def job(fix: dict[str, Any] | None = None, output: bool = True, op: str = "offline_fix") -> Job:
    disk: dict[str, Any] = {"name": "system", "source": SOURCE}
    if output:
        disk["output"] = OUTPUT
    return Job.model_validate(
        {"name": "j", "operation": op, "disks": [disk], **({"fix": fix} if fix else {})}
    )


def test_a_real_fix_writes_outputs_and_needs_them() -> None:
    assert job().writes_outputs
    assert job().operation is Operation.OFFLINE_FIX
    with pytest.raises(ValidationError, match="offline_fix needs an output for every disk"):
        job(output=False)


def test_a_dry_run_needs_no_output_and_writes_none() -> None:
    dry = job({"dry_run": True}, output=False)
    assert not dry.writes_outputs
    assert dry.fix.dry_run and not dry.fix.remove_vmware_tools


def test_fix_options_only_for_offline_fix_and_no_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="offline_fix only"):
        job({"remove_vmware_tools": True}, op="convert")
    with pytest.raises(ValidationError, match="Extra inputs"):
        job({"dryrun": True})
    seeded = job({"cloud_init": {"user_data": "#cloud-config\n"}, "firstboot_script": "#!/bin/sh"})
    assert seeded.fix.cloud_init is not None and seeded.fix.cloud_init.meta_data == ""
    assert FixOptions().firstboot_script is None


def test_fix_statuses_survive_the_termination_message_cut() -> None:
    fixes = {name: "applied" for name in ("fstab", "grub", "initramfs", "network")}
    disk = DiskResult(name="system", fixes=fixes, inspection={"notes": "x" * 5000})
    text = encode_result(Result(job="j", state="succeeded", disks=[disk]))
    assert len(text.encode()) <= 4096
    assert Result.model_validate_json(text).disks[0].fixes == fixes
