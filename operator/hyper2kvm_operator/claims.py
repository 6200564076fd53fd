"""The claims a job writes its disks into: made or found before each attempt and marked not
verified, then marked verified with the digest of each disk the worker proved.

A claim is the migration's result, so a refusal here names the claim and what to do; a
claim of that name that this job did not make is never written unless the job says so
(a claim output without `create`).
"""

from __future__ import annotations

from typing import Any

from hyper2kvm_operator import claim_outputs
from hyper2kvm_operator import conditions as cond
from hyper2kvm_operator.api import MigrationJobSpec, VolumeMode
from hyper2kvm_operator.claim_outputs import ClaimDisk, ClaimFacts
from hyper2kvm_operator.job_state import Body, Operator, current_status, fail_now
from hyper2kvm_operator.kube import Refused
from hyper2kvm_worker.protocol import Result


class ClaimRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


async def prepare(
    op: Operator, body: Body, spec: MigrationJobSpec, attempt: int
) -> dict[str, ClaimFacts] | None:
    """The claim outputs of the attempt, by disk, each made if the job says so and marked
    not verified; None when the job was failed instead."""
    job = body["metadata"]["name"]
    vm = current_status(op, body).get("vm") or {}
    found: dict[str, ClaimFacts] = {}
    try:
        for disk in claim_outputs.claim_disks(job, spec, vm):
            claim = await _made_or_found(op, body, disk)
            block = claim_outputs.is_block(claim)
            if block and not disk.raw:
                raise ClaimRefused(
                    cond.CLAIM_REFUSED,
                    f"claim {disk.claim} is a Block claim: it holds the disk raw, set format raw",
                )
            if disk.needed_bytes is not None:
                small = claim_outputs.too_small(claim, disk.needed_bytes)
                if small:
                    raise ClaimRefused(cond.CLAIM_REFUSED, small)
            await op.kube.annotate_claim(
                body["metadata"]["namespace"], disk.claim, claim_outputs.unverified(job, attempt)
            )
            found[disk.disk] = ClaimFacts(name=disk.claim, block=block)
    except ClaimRefused as refused:
        await fail_now(op, body, refused.reason, refused.message)
        return None
    return found


async def mark_verified(op: Operator, body: Body, spec: MigrationJobSpec, result: Result) -> None:
    """Each claim whose disk the worker verified says so, with the digest."""
    job = body["metadata"]["name"]
    vm = current_status(op, body).get("vm") or {}
    proved = {d.name: d.digest for d in result.disks if d.verified and d.digest}
    for disk in claim_outputs.claim_disks(job, spec, vm):
        digest = proved.get(disk.disk)
        if digest is not None:
            await op.kube.annotate_claim(
                body["metadata"]["namespace"], disk.claim, claim_outputs.verified(digest)
            )


async def _made_or_found(op: Operator, body: Body, disk: ClaimDisk) -> dict[str, Any]:
    namespace, job = body["metadata"]["namespace"], body["metadata"]["name"]
    claim = await op.kube.read_claim(namespace, disk.claim)
    if claim is None:
        if disk.create is None:
            raise ClaimRefused(
                cond.CLAIM_REFUSED,
                f"claim {disk.claim} does not exist: create it, or set claim.create to have "
                "the operator make it",
            )
        manifest = claim_outputs.claim_manifest(body, disk.claim, disk.create, disk.request)
        try:
            existing = await op.kube.create(manifest)
        except Refused as refusal:
            raise ClaimRefused(
                cond.CLAIM_REFUSED, f"the API server refused claim {disk.claim}: {refusal.message}"
            ) from None
        claim = existing if existing is not None else manifest
    if disk.create is not None and not claim_outputs.made_by(claim, job):
        raise ClaimRefused(
            cond.NAME_TAKEN,
            f"claim {disk.claim} exists and this job did not make it: name another claim, "
            "or drop claim.create to write into this one",
        )
    if disk.create is not None and claim_outputs.is_block(claim) != (
        disk.create.volumeMode is VolumeMode.BLOCK
    ):
        raise ClaimRefused(
            cond.CLAIM_REFUSED, f"claim {disk.claim} is not of volumeMode {disk.create.volumeMode}"
        )
    return claim
