"""Claims that are a job's disks: names, sizes, manifests, the verified mark, and how the
worker's job and Pod reach them (a device for a Block claim, disk.img in a Filesystem one)."""

from __future__ import annotations

from typing import Any

import pytest

from hyper2kvm_operator import api, claim_outputs, worker_job, worker_pod
from hyper2kvm_operator.claim_outputs import ClaimFacts
from hyper2kvm_operator.settings import Settings
from hyper2kvm_worker import protocol

BODY = {"metadata": {"name": "web01", "namespace": "vms", "uid": "u-1", "generation": 1}}
GiB = 1 << 30


def listed(output: dict[str, Any]) -> api.MigrationJobSpec:
    return api.MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "disks": [
                {
                    "name": "boot",
                    "source": {"pvc": {"claimName": "vmware", "path": "web/web.vmdk"}},
                    "output": output,
                }
            ],
        }
    )


BLOCK = {"claim": {"create": {"volumeMode": "Block", "size": "20Gi"}}, "format": "raw"}
FILESYSTEM = {"claim": {"name": "web01-root"}, "format": "qcow2"}


def test_claims_are_sized_for_the_disk_and_its_filesystem() -> None:
    assert claim_outputs.claim_size(10 * GiB + 1, block=True) == "10241Mi"
    # 5.5% for the filesystem, and 64 MiB for qcow2's metadata.
    assert claim_outputs.claim_size(10 * GiB, block=False) == f"{10804 + 64}Mi"


def test_a_made_claim_is_labelled_with_the_job_owned_by_nobody_and_not_yet_verified() -> None:
    create = api.ClaimCreate(volumeMode=api.VolumeMode.BLOCK, storageClassName="fast")
    manifest = claim_outputs.claim_manifest(BODY, "web01-boot", create, "20Gi")
    assert "ownerReferences" not in manifest["metadata"]  # the migration outlives its job
    assert manifest["metadata"]["labels"][claim_outputs.JOB_LABEL] == "web01"
    assert manifest["metadata"]["annotations"] == {claim_outputs.VERIFIED: "false"}
    assert manifest["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Block",
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }
    assert claim_outputs.made_by(manifest, "web01") and not claim_outputs.made_by(manifest, "x")
    assert claim_outputs.is_block(manifest)


def test_an_attempt_marks_its_claims_unverified_and_a_proof_marks_them_verified() -> None:
    assert claim_outputs.unverified("web01", 2) == {
        claim_outputs.VERIFIED: "false",
        claim_outputs.DIGEST: None,  # removed: no digest vouches for what the attempt writes
        claim_outputs.WRITTEN_BY: "web01/2",
    }
    assert claim_outputs.verified("blake3:ab") == {
        claim_outputs.VERIFIED: "true",
        claim_outputs.DIGEST: "blake3:ab",
    }


def test_an_existing_claim_too_small_for_the_disk_is_refused_before_any_copy() -> None:
    claim = {"metadata": {"name": "c"}, "status": {"capacity": {"storage": "1Gi"}}}
    assert claim_outputs.too_small(claim, GiB) == ""
    assert claim_outputs.too_small(claim, GiB + 1) == (
        f"claim c holds {GiB} bytes; the disk needs {GiB + 1}"
    )
    assert claim_outputs.too_small({"metadata": {"name": "c"}}, 1 << 40) == ""  # not bound yet


def test_the_claims_of_a_vms_disks_are_named_and_sized_from_each_disk() -> None:
    spec = api.MigrationJobSpec.model_validate(
        {
            "operation": "convert",
            "source": {"vsphere": {"provider": "vc", "vm": {"name": "web01"}}},
            "output": {"claim": {"create": {"volumeMode": "Block"}}, "format": "raw"},
        }
    )
    vm = {"disks": [{"name": "disk-1", "capacityBytes": 2 * GiB}]}
    [disk] = claim_outputs.claim_disks("web01", spec, vm)
    assert (disk.disk, disk.claim, disk.raw, disk.needed_bytes) == (
        "disk-1", "web01-disk-1", True, 2 * GiB,
    )  # fmt: skip
    assert disk.request == "2048Mi"
    [listed_disk] = claim_outputs.claim_disks("web01", listed(BLOCK), {})
    assert (listed_disk.claim, listed_disk.request, listed_disk.needed_bytes) == (
        "web01-boot", "20Gi", None,
    )  # fmt: skip


def test_a_block_claim_reaches_the_worker_as_a_device_and_a_filesystem_one_as_disk_img() -> None:
    block = worker_job.plan(
        "vms/web01", listed(BLOCK), claims={"boot": ClaimFacts("web01-boot", block=True)}
    )
    assert block.job.disks[0].output == protocol.DeviceOutput(device="/dev/hyper2kvm/vol-1")
    pod = worker_pod.worker_pod(BODY, listed(BLOCK), 1, "node-1", block, Settings())
    container = pod["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "vol-1", "devicePath": "/dev/hyper2kvm/vol-1"}]
    assert "vol-1" not in [m["name"] for m in container["volumeMounts"]]
    claim_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "vol-1")
    assert claim_volume["persistentVolumeClaim"]["claimName"] == "web01-boot"

    files = worker_job.plan(
        "vms/web01", listed(FILESYSTEM), claims={"boot": ClaimFacts("web01-root", block=False)}
    )
    output = files.job.disks[0].output
    assert isinstance(output, protocol.Output)
    assert (output.path, output.format.value) == ("disk.img", "qcow2")
    volume = next(v for v in files.volumes if v.claim_name == "web01-root")
    assert output.root == volume.mount_path and not volume.read_only
    with pytest.raises(ValueError, match="needs the claim as found"):
        worker_job.plan("vms/web01", listed(FILESYSTEM))
