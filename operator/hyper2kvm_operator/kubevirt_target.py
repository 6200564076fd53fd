"""Making the KubeVirt VirtualMachine of a job whose disks are migrated and verified.

The VM is made only over claims whose disks the worker proved equal to their sources, and
it is the migration's result: labelled with the job, owned by nothing, so deleting the job
leaves it. A dry run writes the manifest into the status instead.
"""

from __future__ import annotations

import kopf
import yaml

from hyper2kvm_operator import claim_outputs, kubevirt_vm
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import MigrationJobSpec
from hyper2kvm_operator.job_state import Body, Operator, current_status, event_target, key_of
from hyper2kvm_operator.kube import NotServed, Refused
from hyper2kvm_worker.errors import WorkerError
from hyper2kvm_worker.protocol import Result

MANIFEST_LIMIT = 65536


class VmRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def check(body: Body, spec: MigrationJobSpec, vm: dict[str, object]) -> None:
    """VmRefused now, before any copy, when the VM could not be built (a source network the
    job does not map, say): only a vSphere source is described before its disks are read."""
    if spec.target is None or spec.source is None:
        return
    try:
        kubevirt_vm.build(body["metadata"]["name"], spec, vm, None)
    except WorkerError as error:
        raise VmRefused(cond.KUBEVIRT_REFUSED, error.message) from None


async def make(op: Operator, body: Body, spec: MigrationJobSpec, result: Result) -> None:
    """The VirtualMachine made (or, for a dry run, shown in the status); VmRefused when it
    cannot be."""
    assert spec.target is not None
    job, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    unproved = [d.name for d in result.disks if not (d.verified and d.digest)]
    if unproved:
        raise VmRefused(
            cond.KUBEVIRT_REFUSED,
            f"disk(s) {', '.join(unproved)} not verified: a VirtualMachine is made only over "
            "disks proved equal to their sources (verify: true)",
        )
    vm = current_status(op, body).get("vm") or {}
    try:
        built = kubevirt_vm.build(job, spec, vm, result)
    except WorkerError as error:
        raise VmRefused(cond.KUBEVIRT_REFUSED, error.message) from None
    manifest = {**built.manifest}
    manifest["metadata"] = {**manifest["metadata"], "namespace": namespace}
    name = str(manifest["metadata"]["name"])
    shown: dict[str, object] = {
        "name": name,
        "created": False,
        "origins": dict(built.provenance),
        "notes": list(built.notes),
    }
    if spec.target.kubevirt.dryRun:
        text = yaml.safe_dump(manifest, sort_keys=False)
        shown["manifest"] = text[:MANIFEST_LIMIT]
    else:
        await _create(op, job, manifest)
        shown["created"] = True
    await op.kube.patch_job_status(namespace, job, {"kubevirt": shown})
    op.written[key_of(body)] = {**current_status(op, body), "kubevirt": shown}
    if shown["created"]:
        kopf.event(
            event_target(body),
            type="Normal",
            reason=cond.VM_CREATED,
            message=f"VirtualMachine {name} made over the verified disks",
        )


async def _create(op: Operator, job: str, manifest: dict[str, object]) -> None:
    name = manifest["metadata"]["name"]  # type: ignore[index]
    try:
        existing = await op.kube.create_virtual_machine(manifest)
    except NotServed:
        raise VmRefused(
            cond.KUBEVIRT_REFUSED,
            "KubeVirt is not installed (no virtualmachines.kubevirt.io); the disks are "
            "migrated and verified: install KubeVirt and run the job again, or use dryRun",
        ) from None
    except Refused as refusal:
        raise VmRefused(
            cond.KUBEVIRT_REFUSED, f"the API server refused VirtualMachine {name}: {refusal}"
        ) from None
    if existing is not None and not claim_outputs.made_by(existing, job):
        raise VmRefused(
            cond.NAME_TAKEN,
            f"VirtualMachine {name} exists and this job did not make it; name another "
            "(target.kubevirt.name)",
        )
