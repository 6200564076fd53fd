"""Translating a MigrationJob spec into a Worker Job Protocol v1 job and the volumes it needs.

Pure. Each distinct volume (a PVC, or a host directory) is mounted once, read-only when
only sources use it; the protocol job then names files relative to those mount points,
so the worker confines every path to the volume it came from.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from hyper2kvm_operator import api
from hyper2kvm_operator.claim_outputs import ClaimFacts
from hyper2kvm_operator.tenancy import Policy
from hyper2kvm_operator.vsphere import job_view
from hyper2kvm_operator.vsphere.mapping import DiskCopy
from hyper2kvm_worker import protocol

VOLUMES_ROOT = "/volumes"
DEVICES_ROOT = "/dev/hyper2kvm"  # where Block claims appear in the worker Pod
SECRETS_ROOT = "/secrets"
SCRATCH = "/scratch"


@dataclass(frozen=True)
class VolumePlan:
    """One Pod volume: a PVC or a host directory, mounted at `mount_path`."""

    name: str
    mount_path: str  # for a device: its path in the Pod
    read_only: bool
    claim_name: str | None = None
    host_path: str | None = None
    device: bool = False  # a Block claim, given to the Pod as a device


@dataclass
class _Planner:
    volumes: dict[tuple[str, str], VolumePlan] = field(default_factory=dict)

    def mount(self, kind: str, target: str, read_only: bool) -> str:
        key = (kind, target)
        existing = self.volumes.get(key)
        if existing is not None:
            if existing.read_only and not read_only:  # an output shares a source's volume
                self.volumes[key] = dataclasses.replace(existing, read_only=False)
            return existing.mount_path
        name = f"vol-{len(self.volumes)}"
        device = kind == "device"
        plan = VolumePlan(
            name=name,
            mount_path=f"{DEVICES_ROOT if device else VOLUMES_ROOT}/{name}",
            read_only=read_only,
            claim_name=target if kind in ("pvc", "device") else None,
            host_path=target if kind == "host" else None,
            device=device,
        )
        self.volumes[key] = plan
        return plan.mount_path


@dataclass(frozen=True)
class VmDisks:
    """The disks of a vSphere VM, for one attempt: where each one's bytes are, and the
    attempt's own session (a Secret the operator made: keys cookie and, unless the
    provider skips verification, ca.crt)."""

    vm_name: str
    server: str  # https://host:port of vCenter or ESXi
    session_secret: str
    insecure: bool
    disks: tuple[tuple[str, DiskCopy], ...]  # (the disk's name in the job, where to read it)


SSH_IDENTITY_KEY = "identity"
SSH_KNOWN_HOSTS_KEY = "known_hosts"
SESSION_COOKIE_KEY = "cookie"
SESSION_CA_KEY = "ca.crt"


@dataclass(frozen=True)
class WorkerJobPlan:
    job: protocol.Job
    volumes: tuple[VolumePlan, ...]
    secrets: tuple[str, ...]  # tenants' Secrets, mounted under /secrets/<name>
    session_secret: str | None = None  # the operator's own, mounted the same way


def plan(
    name: str,
    spec: api.MigrationJobSpec,
    policy: Policy | None = None,
    vm: VmDisks | None = None,
    claims: Mapping[str, ClaimFacts] | None = None,
) -> WorkerJobPlan:
    """The worker's job for `spec` (with `vm`, the disks of its source VM; with `claims`,
    the claim outputs as found, by disk), with the limits of `policy` only the worker can
    check."""
    policy = policy or Policy()
    claims = claims or {}
    planner = _Planner()
    secrets: list[str] = []
    disks = []
    for disk in spec.disks:
        source = _source(disk.source, planner, secrets)
        output = (
            _output(disk.output, planner, claims.get(disk.name))
            if disk.output is not None
            else None
        )
        disks.append(protocol.Disk(name=disk.name, source=source, output=output))
    if spec.source is not None:
        if vm is None:
            raise ValueError("a job whose source is a VM needs the VM's disks")
        disks = [
            protocol.Disk(
                name=name,
                source=_vm_source(vm, copy),
                output=_vm_output(spec.output, vm.vm_name, name, planner, claims.get(name))
                if spec.output
                else None,
            )
            for name, copy in vm.disks
        ]
    job = protocol.Job(
        name=name,
        operation=spec.operation,
        disks=disks,
        verify=spec.verify,
        # A VM's disks come from one ESXi host, whose reads placement counts one per job
        # against the provider's maxDisksPerHost: one disk at a time keeps that count true.
        parallel_disks=1 if spec.source is not None else spec.parallelDisks,
        skip_free_space=spec.skipFreeSpace,
        fix=_fix(spec.fix),
        limits=protocol.Limits(
            max_virtual_size=policy.max_virtual_size,
            http_allow=list(policy.http_allow),
            http_deny=list(policy.http_deny),
        ),
    )
    return WorkerJobPlan(
        job=job,
        volumes=tuple(planner.volumes.values()),
        secrets=tuple(secrets),
        session_secret=vm.session_secret if vm is not None else None,
    )


def _fix(fix: api.FixOptions | None) -> protocol.FixOptions:
    if fix is None:
        return protocol.FixOptions()
    seed = None
    if fix.cloudInit is not None:
        seed = protocol.CloudInitSeed(
            user_data=fix.cloudInit.userData,
            meta_data=fix.cloudInit.metaData or "",
            network_config=fix.cloudInit.networkConfig,
        )
    return protocol.FixOptions(
        dry_run=fix.dryRun,
        remove_vmware_tools=fix.removeVmwareTools,
        firstboot_script=fix.firstbootScript,
        cloud_init=seed,
    )


def _source(source: api.DiskSource, planner: _Planner, secrets: list[str]) -> protocol.Source:
    if source.pvc is not None:
        root = planner.mount("pvc", source.pvc.claimName, read_only=True)
        return protocol.FileSource(root=root, path=source.pvc.path)
    if source.hostPath is not None:
        directory, file_name = posixpath.split(source.hostPath.path)
        root = planner.mount("host", directory or "/", read_only=True)
        return protocol.FileSource(root=root, path=file_name)
    if source.ova is not None:
        if source.ova.pvc is not None:
            root = planner.mount("pvc", source.ova.pvc.claimName, read_only=True)
            path = source.ova.pvc.path
        else:
            assert source.ova.hostPath is not None  # the CRD's rule: exactly one
            directory, path = posixpath.split(source.ova.hostPath.path)
            root = planner.mount("host", directory or "/", read_only=True)
        return protocol.OvaSource(root=root, path=path, disk=source.ova.disk)
    if source.ssh is not None:
        folder = _secret(source.ssh.secretRef.name, secrets)
        return protocol.SshSource(
            host=source.ssh.host,
            port=source.ssh.port,
            user=source.ssh.user,
            path=source.ssh.path,
            identity_file=f"{folder}/{SSH_IDENTITY_KEY}",
            known_hosts_file=f"{folder}/{SSH_KNOWN_HOSTS_KEY}",
            format=source.ssh.format,
        )
    assert source.http is not None  # the CRD's rule: exactly one source
    user_file = password_file = None
    if source.http.secretRef is not None:
        secret = source.http.secretRef.name
        _secret(secret, secrets)
        user_file = f"{SECRETS_ROOT}/{secret}/username"
        password_file = f"{SECRETS_ROOT}/{secret}/password"
    return protocol.HttpSource(
        url=source.http.url, user_file=user_file, password_file=password_file
    )


def _secret(name: str, secrets: list[str]) -> str:
    """Where the tenant's Secret `name` is mounted (once, however many sources use it)."""
    if name not in secrets:
        secrets.append(name)
    return f"{SECRETS_ROOT}/{name}"


def _output(
    output: api.DiskOutput, planner: _Planner, claim: ClaimFacts | None
) -> protocol.Output | protocol.DeviceOutput:
    if output.claim is not None:
        if claim is None:
            raise ValueError("a claim output needs the claim as found")
        if claim.block:
            return protocol.DeviceOutput(device=planner.mount("device", claim.name, False))
        root = planner.mount("pvc", claim.name, read_only=False)
    elif output.pvc is not None:
        root = planner.mount("pvc", output.pvc.claimName, read_only=False)
    else:
        assert output.hostPath is not None  # the CRD's rule: exactly one
        root = planner.mount("host", output.hostPath.path, read_only=False)
    return protocol.Output(
        root=root,
        path=output.file,
        format=protocol.OutputFormat(output.format.value),
        compression=protocol.Compression(output.compression.value),
        preallocation=protocol.Preallocation(output.preallocation.value),
        overwrite=output.overwrite,
    )


def _vm_source(vm: VmDisks, copy: DiskCopy) -> protocol.VSphereSource:
    folder = f"{SECRETS_ROOT}/{vm.session_secret}"
    return protocol.VSphereSource(
        url=vm.server,
        datacenter=copy.datacenter_path,
        datastore=copy.datastore,
        path=copy.path,
        cookie_file=f"{folder}/{SESSION_COOKIE_KEY}",
        ca_file=None if vm.insecure else f"{folder}/{SESSION_CA_KEY}",
        insecure=vm.insecure,
        format="raw",  # a flat extent is the disk's bytes, nothing else
        size=copy.capacity_bytes,
    )


def _vm_output(
    rule: api.VmOutput, vm_name: str, disk: str, planner: _Planner, claim: ClaimFacts | None
) -> protocol.Output | protocol.DeviceOutput:
    as_disk = api.DiskOutput(
        pvc=rule.pvc,
        hostPath=rule.hostPath,
        claim=rule.claim,
        path=None
        if rule.claim is not None
        else job_view.output_path(rule.path, vm_name, disk, rule.format.value),
        format=rule.format,
        compression=rule.compression,
        preallocation=rule.preallocation,
        overwrite=rule.overwrite,
    )
    return _output(as_disk, planner, claim)
