"""The MigrationJob API (hyper2kvm.io/v1alpha1): the one source of truth for the CRD.

`crd.py` turns these models into the CRD's OpenAPI schema; the rules the API server
enforces (CEL `x-kubernetes-validations`) are declared here beside the fields they guard,
with messages written for the person who runs `kubectl apply`.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Operations and output options are the worker's own: the CRD offers what the worker does.
from hyper2kvm_worker.protocol import (
    Compression,
    Operation,
    OutputFormat,
    Preallocation,
    RemoteFormat,
)

GROUP = "hyper2kvm.io"
VERSION = "v1alpha1"
KIND = "MigrationJob"
PLURAL = "migrationjobs"

RELATIVE_PATH_RULES = [
    {"rule": "!self.startsWith('/')", "message": "path must be relative to its volume"},
    {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "path must not contain '..'"},
]
ABSOLUTE_PATH_RULES = [
    {"rule": "self.startsWith('/')", "message": "hostPath path must be absolute"},
    {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "path must not contain '..'"},
]


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def _exactly_one(fields: list[str], what: str) -> dict[str, str]:
    present = ", ".join(f"has(self.{name})" for name in fields)
    return {
        "rule": f"[{present}].filter(x, x).size() == 1",
        "message": f"{what} needs exactly one of {', '.join(fields)}",
    }


class _Api(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Phase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class SecretRef(_Api):
    name: str = Field(min_length=1, max_length=253, description="a Secret in the job's namespace")


class PvcFile(_Api):
    claimName: str = Field(min_length=1, max_length=253, description="the PersistentVolumeClaim")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="file inside the volume",
        json_schema_extra=_rules(*RELATIVE_PATH_RULES),
    )


class HostPathFile(_Api):
    path: str = Field(
        min_length=2,
        max_length=4096,
        description="absolute path of the file on the worker node",
        json_schema_extra=_rules(*ABSOLUTE_PATH_RULES),
    )


class HttpSource(_Api):
    url: str = Field(
        pattern=r"^https?://\S+$",
        max_length=8192,
        description="http(s) URL, without credentials (those go in secretRef)",
        json_schema_extra=_rules(
            {
                "rule": "!self.matches('^https?://[^/]*@')",
                "message": "credentials belong in a Secret (secretRef), not in the URL",
            }
        ),
    )
    secretRef: SecretRef | None = Field(
        default=None,
        description="Secret with keys username and password (basic auth); it must carry the "
        "label hyper2kvm.io/credentials=true (the chart's policy.credentialLabel)",
    )


class SshSource(_Api):
    """A disk on an SSH server: ESXi's datastores under /vmfs/volumes, read over SFTP."""

    host: str = Field(
        max_length=253,
        pattern=r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]{1,44})$",
        description="the server's name or address",
    )
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default="root", max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
    path: str = Field(
        min_length=7,
        max_length=4096,
        description="the disk on the server: a -flat.vmdk, or a descriptor beside its extent",
        json_schema_extra=_rules(*ABSOLUTE_PATH_RULES),
    )
    secretRef: SecretRef = Field(
        description="Secret with keys identity (a private key) and known_hosts (the server's "
        "host key, pinned: it is never skipped); labelled hyper2kvm.io/credentials=true"
    )
    format: RemoteFormat | None = Field(
        default=None, description="raw or vmdk; default raw for a -flat.vmdk, else vmdk"
    )


class OvaSource(_Api):
    pvc: PvcFile | None = None
    hostPath: HostPathFile | None = None
    disk: str | None = Field(
        default=None, max_length=1024, description="disk inside the OVA; default: the only one"
    )

    model_config = ConfigDict(json_schema_extra=_rules(_exactly_one(["pvc", "hostPath"], "ova")))


class DiskSource(_Api):
    pvc: PvcFile | None = None
    hostPath: HostPathFile | None = None
    http: HttpSource | None = None
    ova: OvaSource | None = None
    ssh: SshSource | None = None

    model_config = ConfigDict(
        json_schema_extra=_rules(
            _exactly_one(["pvc", "hostPath", "http", "ova", "ssh"], "a disk source")
        )
    )


class PvcVolume(_Api):
    claimName: str = Field(min_length=1, max_length=253)


class HostPathDirectory(_Api):
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute directory on the worker node",
        json_schema_extra=_rules(*ABSOLUTE_PATH_RULES),
    )


QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"


class VolumeMode(enum.StrEnum):
    FILESYSTEM = "Filesystem"
    BLOCK = "Block"


class ClaimCreate(_Api):
    """A PersistentVolumeClaim the operator makes for the disk. It is the job's result, so
    it outlives the job: it is labelled with the job, not owned by it."""

    storageClassName: str | None = Field(default=None, max_length=253)
    accessModes: list[str] = Field(
        default=["ReadWriteOnce"],  # pydantic copies it; the CRD's default is this list
        min_length=1,
        max_length=4,
        json_schema_extra={
            "items": {
                "type": "string",
                "enum": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"],
            }
        },
    )
    volumeMode: VolumeMode = VolumeMode.FILESYSTEM
    size: str | None = Field(
        default=None,
        pattern=QUANTITY,
        max_length=32,
        description='e.g. "20Gi"; for a vSphere source\'s disks, sized from each disk',
    )


class ClaimOutput(_Api):
    """A claim in KubeVirt's layout: a Block claim is the raw disk, a Filesystem claim holds
    it as disk.img."""

    name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="the claim; default <job>-<disk>",
    )
    create: ClaimCreate | None = Field(default=None, description="make it; unset: it exists")


_OUTPUT_RULES = (
    _exactly_one(["pvc", "hostPath", "claim"], "an output"),
    {
        "rule": "!has(self.claim) || !has(self.claim.create)"
        " || self.claim.create.volumeMode != 'Block' || self.format == 'raw'",
        "message": "a Block claim holds the disk raw: format raw",
    },
    {
        "rule": "self.format == 'qcow2' || self.compression == 'none'",
        "message": "compression needs format qcow2",
    },
    {
        "rule": "self.format == 'qcow2' || self.preallocation != 'metadata'",
        "message": "preallocation metadata needs format qcow2",
    },
)


class _OutputOptions(_Api):
    pvc: PvcVolume | None = None
    hostPath: HostPathDirectory | None = None
    claim: ClaimOutput | None = None
    format: OutputFormat = OutputFormat.QCOW2
    compression: Compression = Compression.NONE
    preallocation: Preallocation = Preallocation.OFF
    overwrite: bool = False


KUBEVIRT_DISK_FILE = "disk.img"  # where KubeVirt reads a disk in a Filesystem claim


class DiskOutput(_OutputOptions):
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="output file inside the volume (not for a claim output)",
        json_schema_extra=_rules(*RELATIVE_PATH_RULES),
    )

    model_config = ConfigDict(
        json_schema_extra=_rules(
            *_OUTPUT_RULES,
            {
                "rule": "has(self.claim) != has(self.path)",
                "message": "a pvc or hostPath output needs a path; a claim output has none "
                "(the claim is the disk)",
            },
            {
                "rule": "!has(self.claim) || !has(self.claim.create)"
                " || has(self.claim.create.size)",
                "message": "a claim to create needs its size",
            },
        )
    )

    @property
    def file(self) -> str:
        """The output file inside its volume (KubeVirt's disk.img in a Filesystem claim)."""
        return self.path if self.path is not None else KUBEVIRT_DISK_FILE


OUTPUT_PLACEHOLDERS = ("{vm}", "{disk}", "{format}")
DEFAULT_OUTPUT_PATH = "{vm}-{disk}.{format}"


class VmOutput(_OutputOptions):
    """Where the disks of a VM the operator found go: one file per disk, named by `path`,
    or one claim per disk, named <job>-<disk>."""

    path: str = Field(
        default=DEFAULT_OUTPUT_PATH,
        min_length=1,
        max_length=1024,
        description="the naming rule for each disk's file inside the volume: {vm} is the VM's "
        "name (made safe for a file name), {disk} the disk's name in the job (disk-1, disk-2, "
        "... in the VM's device order), {format} the output format",
        json_schema_extra=_rules(
            *RELATIVE_PATH_RULES,
            {"rule": "self.contains('{disk}')", "message": "path needs {disk}: one file per disk"},
            {
                "rule": "!self.replace('{vm}', '').replace('{disk}', '')"
                ".replace('{format}', '').matches('[{}]')",
                "message": "path may hold only the placeholders {vm}, {disk} and {format}",
            },
        ),
    )

    model_config = ConfigDict(
        json_schema_extra=_rules(
            *_OUTPUT_RULES,
            {
                "rule": "!has(self.claim) || !has(self.claim.name)",
                "message": "the claims of a VM's disks are named <job>-<disk>",
            },
            {
                "rule": "!has(self.claim) || !has(self.claim.create)"
                " || !has(self.claim.create.size)",
                "message": "the claims of a VM's disks are sized from each disk",
            },
        )
    )


class VmSelector(_Api):
    name: str | None = Field(default=None, min_length=1, max_length=80, description="the VM's name")
    uuid: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$",
        description="its instance UUID (or BIOS UUID)",
    )
    moref: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,63}$",
        description='its managed object id, e.g. "vm-42"',
    )

    model_config = ConfigDict(
        json_schema_extra=_rules(_exactly_one(["name", "uuid", "moref"], "vm"))
    )


class PowerOff(enum.StrEnum):
    SHUTDOWN = "shutdown"
    FORCE = "force"


class VSphereVmSource(_Api):
    provider: str = Field(
        min_length=1,
        max_length=253,
        description="a VSphereProvider in the job's namespace",
    )
    vm: VmSelector
    datacenter: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="the datacenter's name or inventory path; default: any",
    )
    powerOff: PowerOff | None = Field(
        default=None,
        description="stop a powered-on VM before its disks are read: shutdown (the guest "
        "shuts down; powered off after shutdownGraceSeconds) or force; unset: a powered-on "
        "VM is refused",
    )
    shutdownGraceSeconds: int = Field(default=300, ge=10, le=3600)


class JobSource(_Api):
    """A whole VM, whose disks the operator finds itself."""

    vsphere: VSphereVmSource


class RunStrategy(enum.StrEnum):
    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"
    ONCE = "Once"


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class NetworkMapping(_Api):
    source: str = Field(min_length=1, max_length=256, description="a source network's name")
    target: str = Field(
        max_length=128,
        pattern=r"^(pod|multus:[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[a-z0-9]([-a-z0-9]*[a-z0-9])?)?)$",
        description="pod, or multus:NAME / multus:NAMESPACE/NAME (a NetworkAttachmentDefinition)",
    )


class KubeVirtTarget(_Api):
    """The KubeVirt VirtualMachine the operator makes once every disk is verified."""

    dryRun: bool = Field(
        default=False, description="build the VirtualMachine into the status; make nothing"
    )
    name: str | None = Field(
        default=None, max_length=63, pattern=_DNS_LABEL, description="default: the VM's name"
    )
    runStrategy: RunStrategy = RunStrategy.HALTED
    labels: dict[str, str] | None = Field(default=None, max_length=32)
    instancetype: str | None = Field(default=None, max_length=253)
    preference: str | None = Field(default=None, max_length=253)
    cpus: int | None = Field(default=None, ge=1, le=1024, description="default: the source's")
    memory: str | None = Field(
        default=None, pattern=r"^[0-9]+(Mi|Gi)$", description="e.g. 4Gi; default: the source's"
    )
    networks: list[NetworkMapping] = Field(
        default_factory=list,
        max_length=16,
        description="where each source network goes; every network a NIC uses must be mapped",
    )


class Target(_Api):
    kubevirt: KubeVirtTarget


class Disk(_Api):
    name: str = Field(
        max_length=32,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$",
        description="short DNS-style name, unique in the job (used in Pod and file names)",
    )
    source: DiskSource
    output: DiskOutput | None = None


class Toleration(_Api):
    key: str | None = None
    operator: str | None = Field(default=None, pattern="^(Exists|Equal)$")
    value: str | None = None
    effect: str | None = Field(default=None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")
    tolerationSeconds: int | None = None


class Placement(_Api):
    nodeSelector: dict[str, str] | None = Field(
        default=None, description="narrows the nodes labelled hyper2kvm.io/worker=true"
    )
    tolerations: list[Toleration] | None = None


class CloudInit(_Api):
    userData: str = Field(max_length=65536)
    metaData: str | None = Field(default=None, max_length=65536)
    networkConfig: str | None = Field(default=None, max_length=65536)


class FixOptions(_Api):
    """For offline_fix: how the converted Linux guest is repaired to boot on KVM."""

    dryRun: bool = Field(default=False, description="report what would change; write nothing")
    removeVmwareTools: bool = Field(default=False, description="purge VMware Tools packages")
    firstbootScript: str | None = Field(
        default=None, max_length=65536, description="run once as root at first boot (#! line)"
    )
    cloudInit: CloudInit | None = Field(default=None, description="a NoCloud seed to install")


class ResourceList(_Api):
    cpu: str | None = None
    memory: str | None = None


class Resources(_Api):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class MigrationJobSpec(_Api):
    operation: Operation
    disks: list[Disk] = Field(
        default_factory=list,
        min_length=1,
        max_length=16,
        description="the disks to migrate, each with its source; or give source instead",
        # A list keyed by name: the API server itself refuses two disks with one name.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    source: JobSource | None = Field(
        default=None, description="a whole VM to migrate, instead of a list of disks"
    )
    output: VmOutput | None = Field(
        default=None, description="where the disks of source go (one file per disk)"
    )
    target: Target | None = Field(
        default=None, description="what to make of the migrated disks: a KubeVirt VM"
    )
    placement: Placement | None = None
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs first")
    retries: int = Field(default=3, ge=0, le=10, description="attempts after the first")
    timeoutSeconds: int = Field(default=86400, ge=30, le=7 * 86400)
    verify: bool = Field(default=True, description="prove each output equals its source")
    parallelDisks: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="disks converted at once in the worker; default: one per CPU of its Pod; "
        "a vSphere VM's disks are read one at a time (maxDisksPerHost counts one per job)",
    )
    skipFreeSpace: bool = Field(
        default=False,
        description="take blocks no guest filesystem uses as zero and do not read them "
        "(libguestfs, as virt-v2v); the result says how many bytes",
    )
    cancel: bool = Field(default=False, description="set to true to stop the job")
    fix: FixOptions | None = None
    resources: Resources | None = None

    model_config = ConfigDict(
        json_schema_extra=_rules(
            {
                "rule": "has(self.disks) != has(self.source)",
                "message": "name the disks, or a source whose disks the operator finds; not both",
            },
            {
                "rule": "!has(self.output) || has(self.source)",
                "message": "output is for the disks of source; a listed disk has its own",
            },
            {
                "rule": "self.operation == 'inspect'"
                " || (has(self.disks) ? self.disks.all(d, has(d.output)) : has(self.output))"
                " || (self.operation == 'offline_fix' && has(self.fix) && self.fix.dryRun)",
                "message": "convert and offline_fix need an output for every disk "
                "(only an offline_fix dry run writes nothing)",
            },
            {
                "rule": "!has(self.target) || self.operation != 'inspect'",
                "message": "target needs disks written: operation convert or offline_fix",
            },
            {
                "rule": "!has(self.target) || (has(self.source)"
                " ? (has(self.output) && has(self.output.claim))"
                " : self.disks.all(d, has(d.output) && has(d.output.claim)))",
                "message": "target.kubevirt needs every disk in a claim (output.claim): a "
                "VirtualMachine reads its disks from claims",
            },
            {
                "rule": "!has(self.fix) || self.operation == 'offline_fix'",
                "message": "fix options apply to operation offline_fix only",
            },
        )
    )


# ------------------------------------------------------------------------------ status


class Condition(_Api):
    type: str
    status: str = Field(pattern="^(True|False|Unknown)$")
    reason: str
    message: str = ""
    lastTransitionTime: str
    observedGeneration: int | None = None


class PhaseTransition(_Api):
    phase: Phase
    time: str
    reason: str | None = None


class DiskStatus(_Api):
    name: str
    phase: str | None = None
    bytesDone: int | None = None
    bytesTotal: int | None = None
    output: str | None = None
    format: str | None = None
    virtualSize: int | None = None
    fileSize: int | None = None
    digest: str | None = None
    verified: bool | None = None
    freeSpaceZeroed: int | None = Field(
        default=None,
        description="skipFreeSpace: bytes no guest filesystem used, taken as zero and not "
        "read; the digest is of the disk with them zero",
    )
    inspection: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )


class VmController(_Api):
    key: int
    kind: str = Field(description="pvscsi, lsilogic, lsilogic-sas, buslogic, sata, nvme, ide")
    bus: int
    sharing: str = Field(description="SCSI bus sharing: noSharing, virtualSharing, ...")


class VmDisk(_Api):
    name: str = Field(description="the disk's name in this job (disk-1, disk-2, ...)")
    label: str = Field(description='as vSphere names it, e.g. "Hard disk 1"')
    capacityBytes: int
    datastore: str | None = None
    file: str | None = Field(default=None, description='its descriptor, "[ds] dir/name.vmdk"')
    extent: str | None = Field(default=None, description="the file its bytes are read from")
    controller: int | None = Field(default=None, description="a controller's key")
    unit: int | None = None
    mode: str | None = Field(default=None, description="persistent, independent_persistent, ...")
    bootOrder: int | None = Field(default=None, description="its place in the boot order")


class VmNic(_Api):
    label: str
    model: str = Field(description="vmxnet3, e1000e, e1000, ...")
    mac: str | None = None
    network: str | None = None


class VmStopped(_Api):
    how: str = Field(description="AlreadyOff, GuestShutdown or PowerOff")
    time: str
    note: str | None = Field(default=None, description="why a shutdown became a power-off")


class SourceVm(_Api):
    """The VM as vSphere described it before any copy."""

    provider: str
    moref: str
    name: str
    datacenter: str
    host: str | None = Field(default=None, description="the ESXi host it is registered on")
    biosUuid: str | None = None
    instanceUuid: str | None = None
    powerState: str | None = Field(default=None, description="when it was found")
    cpus: int | None = None
    coresPerSocket: int | None = None
    memoryMiB: int | None = None
    firmware: str | None = Field(default=None, description="bios or efi")
    secureBoot: bool = False
    guestId: str | None = None
    hardwareVersion: str | None = None
    controllers: list[VmController] | None = Field(default=None, max_length=64)
    disks: list[VmDisk] | None = Field(default=None, max_length=64)
    nics: list[VmNic] | None = Field(default=None, max_length=64)
    stopped: VmStopped | None = Field(
        default=None, description="how and when the operator stopped it"
    )


class KubeVirtStatus(_Api):
    name: str
    created: bool = Field(description="made in the cluster (false: a dry run, or refused)")
    manifest: str | None = Field(
        default=None, max_length=65536, description="the VirtualMachine as YAML (a dry run)"
    )
    origins: dict[str, str] | None = Field(
        default=None, description="where each field came from: the source, the job, a default"
    )
    notes: list[str] | None = Field(default=None, max_length=64)


class MigrationJobStatus(_Api):
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    progress: str | None = Field(default=None, description='e.g. "42%"')
    bytesDone: int | None = None
    bytesTotal: int | None = None
    throughput: str | None = Field(default=None, description='e.g. "512 MiB/s"')
    eta: str | None = Field(default=None, description='e.g. "3m20s"')
    node: str | None = None
    pod: str | None = None
    attempt: int | None = None
    queuedTime: str | None = None
    startTime: str | None = None
    completionTime: str | None = None
    retryAfter: str | None = None
    observedGeneration: int | None = None
    disks: list[DiskStatus] | None = None
    vm: SourceVm | None = Field(default=None, description="the source VM, as found")
    kubevirt: KubeVirtStatus | None = Field(default=None, description="the VirtualMachine")
    conditions: list[Condition] | None = None
    history: list[PhaseTransition] | None = Field(default=None, max_length=32)


def _unchanged(name: str, *, optional: bool) -> str:
    new, old = f"self.spec.{name}", f"oldSelf.spec.{name}"
    if not optional:
        return f"{new} == {old}"
    return f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"


_FROZEN_FIELDS = {  # everything but cancel and priority; optional fields may be absent
    "operation": False,
    "disks": True,
    "source": True,
    "output": True,
    "verify": False,
    "retries": False,
    "timeoutSeconds": False,
    "placement": True,
    "fix": True,
    "resources": True,
    "target": True,
}
IMMUTABLE_AFTER_START = {
    # Root-level transition rule: it sees both spec and status of the stored object. Once
    # the operator has admitted a job (checked it against the cluster's policy), what it
    # checked stays what runs; only cancel and priority may change.
    "rule": "!has(oldSelf.status) || !has(oldSelf.status.phase) || ("
    + " && ".join(_unchanged(name, optional=opt) for name, opt in _FROZEN_FIELDS.items())
    + ")",
    "message": "only cancel and priority can change once the job is admitted; "
    "delete and re-create the job instead",
}
