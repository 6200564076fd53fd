"""Translating a MigrationJob spec into a Worker Job Protocol v1 job and the volumes it needs.

Pure. Each distinct volume (a PVC, or a host directory) is mounted once, read-only when
only sources use it; the protocol job then names files relative to those mount points,
so the worker confines every path to the volume it came from.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field

from hyper2kvm_operator import api
from hyper2kvm_operator.tenancy import Policy
from hyper2kvm_worker import protocol

VOLUMES_ROOT = "/volumes"
SECRETS_ROOT = "/secrets"
SCRATCH = "/scratch"


@dataclass(frozen=True)
class VolumePlan:
    """One Pod volume: a PVC or a host directory, mounted at `mount_path`."""

    name: str
    mount_path: str
    read_only: bool
    claim_name: str | None = None
    host_path: str | None = None


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
        plan = VolumePlan(
            name=name,
            mount_path=f"{VOLUMES_ROOT}/{name}",
            read_only=read_only,
            claim_name=target if kind == "pvc" else None,
            host_path=target if kind == "host" else None,
        )
        self.volumes[key] = plan
        return plan.mount_path


@dataclass(frozen=True)
class WorkerJobPlan:
    job: protocol.Job
    volumes: tuple[VolumePlan, ...]
    secrets: tuple[str, ...]  # Secret names mounted under /secrets/<name>


def plan(name: str, spec: api.MigrationJobSpec, policy: Policy | None = None) -> WorkerJobPlan:
    """The worker's job for `spec`, with the limits of `policy` only the worker can check."""
    policy = policy or Policy()
    planner = _Planner()
    secrets: list[str] = []
    disks = []
    for disk in spec.disks:
        source = _source(disk.source, planner, secrets)
        output = _output(disk.output, planner) if disk.output is not None else None
        disks.append(protocol.Disk(name=disk.name, source=source, output=output))
    job = protocol.Job(
        name=name,
        operation=spec.operation,
        disks=disks,
        verify=spec.verify,
        fix=_fix(spec.fix),
        limits=protocol.Limits(
            max_virtual_size=policy.max_virtual_size,
            http_allow=list(policy.http_allow),
            http_deny=list(policy.http_deny),
        ),
    )
    return WorkerJobPlan(job=job, volumes=tuple(planner.volumes.values()), secrets=tuple(secrets))


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
    assert source.http is not None  # the CRD's rule: exactly one source
    user_file = password_file = None
    if source.http.secretRef is not None:
        secret = source.http.secretRef.name
        if secret not in secrets:
            secrets.append(secret)
        user_file = f"{SECRETS_ROOT}/{secret}/username"
        password_file = f"{SECRETS_ROOT}/{secret}/password"
    return protocol.HttpSource(
        url=source.http.url, user_file=user_file, password_file=password_file
    )


def _output(output: api.DiskOutput, planner: _Planner) -> protocol.Output:
    if output.pvc is not None:
        root = planner.mount("pvc", output.pvc.claimName, read_only=False)
    else:
        assert output.hostPath is not None  # the CRD's rule: exactly one
        root = planner.mount("host", output.hostPath.path, read_only=False)
    return protocol.Output(
        root=root,
        path=output.path,
        format=protocol.OutputFormat(output.format.value),
        compression=protocol.Compression(output.compression.value),
        preallocation=protocol.Preallocation(output.preallocation.value),
        overwrite=output.overwrite,
    )
