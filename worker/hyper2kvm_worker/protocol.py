"""Worker Job Protocol v1: the contract between the operator and the worker.

The operator writes a `Job` (JSON) for the worker Pod; the worker writes events (JSON
lines) while it runs and one small `Result` (JSON, < 4 KiB) when it ends. Every model
rejects unknown fields so a typo in a job is an error, not a silently ignored option.
"""

from __future__ import annotations

import enum
import posixpath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from hyper2kvm_worker.hardware import Hardware

PROTOCOL_VERSION: Literal["hyper2kvm.io/worker-job/v1"] = "hyper2kvm.io/worker-job/v1"
RESULT_MAX_BYTES = 4096  # a Pod's termination message is cut at 4 KiB
DIGEST_ALGORITHM = "blake3"  # of the raw virtual disk content, as `b3sum` prints it


class _Model(BaseModel):
    # NaN and infinities are refused too: the operator reads these from a worker it does
    # not trust with its own arithmetic.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Count = Annotated[int, Field(ge=0, le=1 << 62)]


def check_relative_path(value: str) -> str:
    """A path inside a volume: relative, normalised, never climbing out with `..`."""
    if not value or value.startswith("/"):
        raise ValueError(f"path {value!r} must be relative to its volume root")
    if "\x00" in value:
        raise ValueError("path must not contain NUL")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"path {value!r} must not contain '..'")
    return posixpath.normpath(value)


RelativePath = Annotated[str, Field(min_length=1, max_length=4096)]


class Operation(enum.StrEnum):
    INSPECT = "inspect"
    CONVERT = "convert"
    OFFLINE_FIX = "offline_fix"


class OutputFormat(enum.StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class Compression(enum.StrEnum):
    NONE = "none"
    ZLIB = "zlib"
    ZSTD = "zstd"


class Preallocation(enum.StrEnum):
    OFF = "off"
    METADATA = "metadata"
    FALLOC = "falloc"


class FileSource(_Model):
    """A VMDK on a mounted volume (hostPath or PVC): `root` is the mount, `path` the descriptor."""

    kind: Literal["file"] = "file"
    root: str
    path: RelativePath

    _path = field_validator("path")(check_relative_path)


class OvaSource(_Model):
    """An OVA (tar) on a mounted volume; the disk is read in place, never extracted."""

    kind: Literal["ova"] = "ova"
    root: str
    path: RelativePath
    disk: str | None = Field(
        default=None, description="tar member name of the disk; default: the only .vmdk"
    )

    _path = field_validator("path")(check_relative_path)


class HttpSource(_Model):
    """A single-file VMDK (monolithicSparse or streamOptimized) served over HTTP(S)."""

    kind: Literal["http"] = "http"
    url: str = Field(pattern=r"^https?://\S+$")
    user: str | None = None
    user_file: str | None = Field(
        default=None, description="file holding the user name (a mounted Secret); beats user"
    )
    password_file: str | None = Field(
        default=None, description="file holding the password (a mounted Secret)"
    )
    ca_file: str | None = None


def check_local_file(value: str) -> str:
    """A file on this node named by a job (a mounted Secret): absolute, no NUL, no `%`
    (libssh expands %-sequences in file names), no `..`."""
    if not value.startswith("/") or "\x00" in value or "%" in value:
        raise ValueError(f"file {value!r} must be an absolute path without NUL or '%'")
    if ".." in value.split("/"):
        raise ValueError(f"file {value!r} must not contain '..'")
    return posixpath.normpath(value)


def check_remote_disk(value: str) -> str:
    """A disk's name on a server: printable, normalised, never climbing with `..`, a .vmdk."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("path must not contain control characters")
    if ".." in value.split("/"):
        raise ValueError(f"path {value!r} must not contain '..'")
    if not value.lower().endswith(".vmdk"):
        raise ValueError(f"path {value!r} must name a .vmdk file (a -flat.vmdk or a VMDK)")
    return posixpath.normpath(value)


def check_label(value: str) -> str:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("names must not contain control characters")
    return value


LocalFile = Annotated[str, Field(min_length=2, max_length=4096), AfterValidator(check_local_file)]
RemoteFormat = Literal["raw", "vmdk"]
_HOST = r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]{1,44})$"


class SshSource(_Model):
    """A disk on an SSH server (ESXi: /vmfs/volumes/DATASTORE/VM/VM-flat.vmdk), read over
    SFTP with nbdkit's ssh plugin; the server's host key is pinned, never skipped."""

    kind: Literal["ssh"] = "ssh"
    host: str = Field(min_length=1, max_length=253, pattern=_HOST)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
    path: str = Field(min_length=7, max_length=4096, description="absolute path on the server")
    identity_file: LocalFile = Field(description="private key file (a mounted Secret)")
    known_hosts_file: LocalFile = Field(description="known_hosts line(s) pinning the host key")
    format: RemoteFormat | None = Field(
        default=None, description="raw or vmdk; default raw for a -flat.vmdk, else vmdk"
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must be absolute on the server")
        return check_remote_disk(value)


class VSphereSource(_Model):
    """A file in a vSphere datastore, read over HTTPS (`/folder`) with a session cookie:
    the password never reaches the worker."""

    kind: Literal["vsphere"] = "vsphere"
    url: str = Field(
        max_length=300,
        pattern=r"^https://[A-Za-z0-9.:\[\]-]+/?$",
        description="https://host[:port]",
    )
    datacenter: str = Field(min_length=1, max_length=1024, description="the datacenter's path")
    datastore: str = Field(min_length=1, max_length=255)
    path: RelativePath = Field(description="the file inside the datastore")
    cookie_file: LocalFile = Field(description="file holding the session cookie (a Secret)")
    ca_file: LocalFile | None = None
    insecure: bool = Field(default=False, description="skip TLS verification (said explicitly)")
    format: RemoteFormat | None = Field(
        default=None, description="raw or vmdk; default raw for a -flat.vmdk, else vmdk"
    )
    size: int | None = Field(
        default=None,
        ge=0,
        le=1 << 62,
        description="the file's size as vSphere describes the disk; any other size is refused",
    )

    _names = field_validator("datacenter", "datastore")(check_label)

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return check_remote_disk(check_relative_path(value))

    @model_validator(mode="after")
    def _one_trust(self) -> VSphereSource:
        if self.insecure and self.ca_file:
            raise ValueError("give ca_file or insecure, not both")
        return self


Source = Annotated[
    FileSource | OvaSource | HttpSource | SshSource | VSphereSource, Field(discriminator="kind")
]


class Output(_Model):
    """A file on a mounted volume, written under a hidden name and renamed when verified."""

    kind: Literal["file"] = "file"
    root: str
    path: RelativePath
    format: OutputFormat = OutputFormat.QCOW2
    compression: Compression = Compression.NONE
    preallocation: Preallocation = Preallocation.OFF
    overwrite: bool = False

    _path = field_validator("path")(check_relative_path)

    @model_validator(mode="after")
    def _options_fit_format(self) -> Output:
        if self.format is OutputFormat.RAW and self.compression is not Compression.NONE:
            raise ValueError("compression needs format qcow2; raw images cannot be compressed")
        if self.format is OutputFormat.RAW and self.preallocation is Preallocation.METADATA:
            raise ValueError("preallocation 'metadata' needs format qcow2; use off or falloc")
        if self.compression is not Compression.NONE and self.preallocation is not (
            Preallocation.OFF
        ):
            raise ValueError("a compressed qcow2 cannot be preallocated; use preallocation off")
        return self

    @property
    def full_path(self) -> str:
        return posixpath.join(self.root, self.path)


class DeviceOutput(_Model):
    """A block device the disk is written onto, raw (a Block PVC in a Pod)."""

    kind: Literal["device"] = "device"
    device: LocalFile = Field(description="the block device, e.g. /dev/hyper2kvm/vol-0")

    @property
    def full_path(self) -> str:
        return self.device

    @property
    def format(self) -> OutputFormat:
        """A device holds the disk's bytes as they are: raw, always."""
        return OutputFormat.RAW


def _output_kind(value: object) -> str:
    # Jobs written before outputs had a `kind` hold files only.
    if isinstance(value, dict):
        return str(value.get("kind", "file"))
    return str(getattr(value, "kind", "file"))


AnyOutput = Annotated[
    Annotated[Output, Tag("file")] | Annotated[DeviceOutput, Tag("device")],
    Discriminator(_output_kind),
]


class CloudInitSeed(_Model):
    """A NoCloud seed written to /var/lib/cloud/seed/nocloud/ in the guest."""

    user_data: str = Field(max_length=65536)
    meta_data: str = Field(default="", max_length=65536)
    network_config: str | None = Field(default=None, max_length=65536)


class FixOptions(_Model):
    """How `offline_fix` repairs a converted Linux guest so that it boots on KVM."""

    dry_run: bool = Field(
        default=False, description="report what would change; nothing is written anywhere"
    )
    remove_vmware_tools: bool = Field(
        default=False, description="remove open-vm-tools/vmware-tools instead of disabling them"
    )
    firstboot_script: str | None = Field(
        default=None,
        max_length=65536,
        description="a script (with its #! line) run once, as root, at the guest's first boot",
    )
    cloud_init: CloudInitSeed | None = None


class Disk(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    source: Source
    output: AnyOutput | None = None


class Limits(_Model):
    """What the cluster's policy allows this job, where only the worker can check it."""

    max_virtual_size: int | None = Field(
        default=None, ge=0, description="refuse a disk that declares more bytes than this"
    )
    http_allow: list[str] = Field(
        default_factory=list, description="networks an HTTP source may be fetched from (CIDR)"
    )
    http_deny: list[str] = Field(
        default_factory=list, description="networks it may never be fetched from; beats allow"
    )


class Job(_Model):
    version: Literal["hyper2kvm.io/worker-job/v1"] = PROTOCOL_VERSION
    name: str = Field(min_length=1, max_length=253)
    operation: Operation
    disks: list[Disk] = Field(min_length=1, max_length=64)
    verify: bool = True
    fix: FixOptions = FixOptions()
    limits: Limits = Limits()
    parallel_disks: int | None = Field(
        default=None, ge=1, le=16, description="disks converted at once; default from the CPUs"
    )
    skip_free_space: bool = Field(
        default=False,
        description="take blocks no guest filesystem uses as zero, unread (libguestfs, fstrim)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        names = [disk.name for disk in self.disks]
        if len(set(names)) != len(names):
            raise ValueError("disk names must be unique")
        if self.fix != FixOptions() and self.operation is not Operation.OFFLINE_FIX:
            raise ValueError("fix options apply to operation offline_fix only")
        if self.writes_outputs:
            missing = [disk.name for disk in self.disks if disk.output is None]
            if missing:
                raise ValueError(
                    f"{self.operation.value} needs an output for every disk; missing: {missing}"
                )
            outputs = [disk.output.full_path for disk in self.disks if disk.output]
            if len(set(outputs)) != len(outputs):
                raise ValueError("two disks write the same output path or device")
        return self

    @property
    def writes_outputs(self) -> bool:
        """convert, and offline_fix unless it is a dry run (which writes nothing at all)."""
        if self.operation is Operation.OFFLINE_FIX:
            return not self.fix.dry_run
        return self.operation is Operation.CONVERT


# ---------------------------------------------------------------------------- events


class JobState(enum.StrEnum):
    PENDING = "pending"
    VALIDATING = "validating"
    RUNNING = "running"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Transition(_Model):
    state: JobState
    time: float = Field(description="seconds since the epoch")
    reason: str | None = None


class DiskProgress(_Model):
    name: str = Field(max_length=64)
    phase: str = Field(
        max_length=32,
        description="waiting, scanning (a device output, for zeros), converting, verifying, "
        "inspecting, fixing, digesting or done",
    )
    bytes_done: Count = 0
    bytes_total: Count = 0


class Progress(_Model):
    """What `GET /progress` returns and what progress events carry (bounded: the operator
    reads it from a Pod it does not trust)."""

    state: JobState
    percent: float = Field(default=0.0, ge=0, le=100)
    bytes_done: Count = 0
    bytes_total: Count = 0
    rate_bytes_per_second: float = Field(default=0.0, ge=0, le=1e15)
    eta_seconds: float | None = Field(default=None, ge=0, le=1e9)
    disks: list[DiskProgress] = Field(default_factory=list, max_length=64)


class ErrorInfo(_Model):
    reason: str
    message: str = Field(max_length=1024)
    permanent: bool


class DiskResult(_Model):
    name: str
    output: str | None = None
    format: str | None = None
    virtual_size: int | None = None
    file_size: int | None = Field(
        default=None, description="bytes the output file occupies; none for a block device"
    )
    digest: str | None = Field(default=None, description=f"{DIGEST_ALGORITHM} of the content")
    verified: bool = False
    zero_skipped: bool | None = Field(
        default=None,
        description="a block device output: true when it read as zero before the conversion, "
        "so zero regions were not written; false when they were written",
    )
    free_space_zeroed: Count | None = Field(
        default=None,
        description="skip_free_space: bytes no guest filesystem used, taken as zero and not "
        "read; the digest is of the disk with them zero",
    )
    inspection: dict[str, object] | None = Field(
        default=None, description="a short summary; the full report is in the events"
    )
    fixes: dict[str, str] | None = Field(
        default=None,
        description="offline_fix: each fix's outcome (applied, not_needed, would_apply, "
        "failed); the reasons and changes are in the report event",
    )


class Result(_Model):
    version: Literal["hyper2kvm.io/worker-job/v1"] = PROTOCOL_VERSION
    job: str
    state: JobState
    disks: list[DiskResult] = []
    error: ErrorInfo | None = None
    history: list[Transition] = []
    hardware: Hardware | None = Field(
        default=None, description="what the OVA's OVF or a .vmx beside the disks describes"
    )


def encode_result(result: Result) -> str:
    """JSON for the termination message, cut to fit: summaries go first, then the history,
    then the VM's description; the outcome and the disks' digests stay longest."""
    text = result.model_dump_json(exclude_none=True)
    if len(text.encode()) <= RESULT_MAX_BYTES:
        return text
    slim = result.model_copy(
        update={"disks": [disk.model_copy(update={"inspection": None}) for disk in result.disks]}
    )
    cuts: list[dict[str, object]] = [
        {}, {"history": result.history[-2:]}, {"history": [], "hardware": None},
    ]  # fmt: skip
    for cut in cuts:
        slim = slim.model_copy(update=cut)
        text = slim.model_dump_json(exclude_none=True)
        if len(text.encode()) <= RESULT_MAX_BYTES:
            return text
    # Only the outcome and the error remain; per-disk details are in the events file.
    bare = slim.model_copy(update={"disks": [], "history": []})
    return bare.model_dump_json(exclude_none=True)
