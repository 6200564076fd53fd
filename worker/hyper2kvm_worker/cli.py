"""`hyper2kvm-worker`: inspect, convert, fix, run a protocol job, report capabilities.

Exit codes (see errors.ExitCode): 0 success, 1 internal error, 2 usage, 3 permanent
failure (bad input: do not retry), 75 transient failure (retry), 143 cancelled.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import re
import signal
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from hyper2kvm_worker import __version__, console, kubevirt_command
from hyper2kvm_worker.errors import BadInput, ExitCode, Reason, WorkerError
from hyper2kvm_worker.events import EventSink
from hyper2kvm_worker.job_runner import JobRunner
from hyper2kvm_worker.protocol import (
    CloudInitSeed,
    Compression,
    DeviceOutput,
    Disk,
    DiskResult,
    ErrorInfo,
    FileSource,
    FixOptions,
    HttpSource,
    Job,
    JobState,
    Operation,
    Output,
    OutputFormat,
    OvaSource,
    Preallocation,
    Result,
    Source,
    SshSource,
    VSphereSource,
    encode_result,
)
from hyper2kvm_worker.tools import CancelToken, ToolRunner

if TYPE_CHECKING:
    from hyper2kvm_worker.sources.vsphere_session import Session

PROG = "hyper2kvm-worker"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `convert SRC --format raw DST`: argparse fills optional positionals (none with --vm)
    # from the first run of them only; a destination after options comes back unparsed.
    if args.command == "convert" and not args.destination and extra and extra[0][:1] != "-":
        args.destination = extra.pop(0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cancel = CancelToken()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: cancel.cancel())
    try:
        code: int = args.handler(args, cancel)
    except BrokenPipeError:  # `... | head` closed our stdout: not an error of the job
        code = ExitCode.OK
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="describe a VMDK without converting it")
    inspect.add_argument("source", help=SOURCE_HELP)
    inspect.add_argument("--ova-disk", help="the disk inside an OVA, when it has several")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    _remote_options(inspect)
    inspect.set_defaults(handler=_inspect)

    convert = commands.add_parser("convert", help="convert a VMDK to qcow2 or raw, verified")
    convert.add_argument("source", nargs="?", help=SOURCE_HELP)
    convert.add_argument("destination", nargs="?", help=DESTINATION_HELP)
    convert.add_argument("--format", choices=[f.value for f in OutputFormat], help=FORMAT_HELP)
    convert.add_argument("--compression", choices=[c.value for c in Compression], default="none")
    convert.add_argument("--preallocation", choices=[p.value for p in Preallocation], default="off")
    convert.add_argument("--no-verify", action="store_true", help="skip the content check")
    convert.add_argument(
        "--parallel-disks", type=int, metavar="N", help="disks converted at once (default: CPUs)"
    )
    convert.add_argument(
        "--skip-free-space",
        action="store_true",
        help="take blocks no guest filesystem uses as zero and do not read them (libguestfs)",
    )
    convert.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    convert.add_argument("--ova-disk", help="the disk inside an OVA, when it has several")
    convert.add_argument("--json", action="store_true", help="JSON-lines events on stdout")
    _remote_options(convert)
    whole = convert.add_argument_group("a whole vSphere VM (instead of a source and destination)")
    whole.add_argument("--vm", metavar="NAME", help="convert every disk of the VM of this name")
    whole.add_argument(
        "-o", "--output-dir", metavar="DIR", type=Path, help="for NAME-disk-N.FORMAT"
    )
    convert.set_defaults(handler=_convert)

    fix = commands.add_parser(
        "fix", help="convert a Linux guest's VMDK and repair the copy so it boots on KVM"
    )
    fix.add_argument("source", help="VMDK file, OVA file, or http(s) URL (never modified)")
    fix.add_argument("destination", nargs="?", help="the fixed output (not with --dry-run)")
    fix.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )
    fix.add_argument(
        "--remove-vmware-tools", action="store_true", help="remove VMware Tools, not only disable"
    )
    fix.add_argument("--firstboot", type=Path, help="script run once at the guest's first boot")
    fix.add_argument("--cloud-init-user-data", type=Path, help="NoCloud seed: user-data file")
    fix.add_argument("--cloud-init-meta-data", type=Path, help="NoCloud seed: meta-data file")
    fix.add_argument("--format", choices=[f.value for f in OutputFormat], help=FORMAT_HELP)
    fix.add_argument("--no-verify", action="store_true", help="skip the conversion's content check")
    fix.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    fix.add_argument("--ova-disk", help="the disk inside an OVA, when it has several")
    fix.add_argument("--json", action="store_true", help="JSON-lines events on stdout")
    fix.set_defaults(handler=_fix, compression="none", preallocation="off")

    run = commands.add_parser("run", help="run a Worker Job Protocol v1 job file")
    run.add_argument("--job", required=True, type=Path, help="job JSON file")
    run.add_argument("--events", type=Path, help="append JSON-lines events to this file too")
    run.add_argument("--result", type=Path, help="write the result JSON here (< 4 KiB)")
    run.add_argument(
        "--listen", default="0.0.0.0:8081", help="HOST:PORT for /progress, /metrics, /healthz"
    )
    run.add_argument("--no-listen", action="store_true", help="serve no HTTP endpoints")
    run.set_defaults(handler=_run)

    caps = commands.add_parser("capabilities", help="what this node can do")
    caps.add_argument("--json", action="store_true")
    caps.add_argument(
        "--location", action="append", type=Path, default=[], help="report free space here too"
    )
    caps.set_defaults(handler=_capabilities)

    kubevirt_command.add_parser(commands)
    return parser


DESTINATION_HELP = (
    "output file, written only when complete; or a block device, written in place (raw)"
)
FORMAT_HELP = "qcow2 (the default) or raw; a block device is always written raw"
OVERWRITE_HELP = "replace an existing output file (a block device is always written)"
SOURCE_HELP = (
    "VMDK file, OVA file, http(s) URL, ssh://USER@HOST[:PORT]/PATH, or with --vsphere "
    "'[DATASTORE] FOLDER/FILE.vmdk'"
)


def _remote_options(parser: argparse.ArgumentParser) -> None:
    ssh = parser.add_argument_group("ssh:// sources (ESXi over SSH)")
    ssh.add_argument("--identity", help="private key (default: ~/.ssh/id_ed25519, id_ecdsa...)")
    ssh.add_argument("--known-hosts", help="the pinned host key (default: ~/.ssh/known_hosts)")
    vsphere = parser.add_argument_group("vSphere datastore sources")
    vsphere.add_argument("--vsphere", metavar="URL", help="https://HOST[:PORT] of vCenter or ESXi")
    vsphere.add_argument("--user", help="vSphere user name")
    vsphere.add_argument("--password-file", type=Path, help="file holding the vSphere password")
    vsphere.add_argument(
        "--datacenter", help="the datastore's datacenter (its inventory path); with --vm, optional"
    )
    trust = vsphere.add_mutually_exclusive_group()
    trust.add_argument("--ca-file", help="CA certificate(s) the server's certificate is signed by")
    trust.add_argument("--insecure", action="store_true", help="do not verify the certificate")


Login = tuple["Session", str]  # a vSphere session and the file holding its cookie


@contextlib.contextmanager
def _vsphere_session(args: argparse.Namespace) -> Iterator[Login | None]:
    """With --vsphere: log in, yield the session and its cookie's file, log out."""
    if not getattr(args, "vsphere", None):
        yield None
        return
    missing = [flag for flag, value in (("--user", args.user), ("--datacenter", args.datacenter),
               ("--password-file", args.password_file)) if not value]  # fmt: skip
    if getattr(args, "vm", None):  # found with the VM
        missing = [flag for flag in missing if flag != "--datacenter"]
    if missing:
        raise BadInput(Reason.INVALID_JOB, f"--vsphere needs {', '.join(missing)}")
    from hyper2kvm_worker.sources import vsphere_session  # urllib and ssl load slowly

    with vsphere_session.logged_in(
        args.vsphere, args.user, args.password_file, args.ca_file, args.insecure
    ) as login:
        yield login


def _in_session(args: argparse.Namespace, work: Callable[[Login | None], int]) -> int:
    try:
        with _vsphere_session(args) as login:
            return work(login)
    except WorkerError as error:  # logging in or out, finding a VM; a job's failures are results
        return _fail(error.message, error.reason, error.exit_code)


def _fail(message: str, reason: Reason | str, code: int) -> int:
    print(f"{PROG}: error: {message} [{reason}]", file=sys.stderr)
    return code


def source_from_argument(
    value: str, ova_disk: str | None, args: argparse.Namespace | None = None,
    cookie_file: str | None = None,
) -> Source:  # fmt: skip
    if cookie_file is not None and args is not None:
        return _datastore_source(value, args, cookie_file)
    if value.startswith("ssh://") and args is not None:
        return _ssh_source(value, args)
    if value.startswith(("http://", "https://")):
        return HttpSource(url=value)
    path = Path(value).absolute()
    if path.suffix.lower() == ".ova" or (path.is_file() and _is_tar(path)):
        return OvaSource(root=str(path.parent), path=path.name, disk=ova_disk)
    return FileSource(root=str(path.parent), path=path.name)


def _datastore_source(
    value: str, args: argparse.Namespace, cookie_file: str, datacenter: str | None = None,
    extent_size: int | None = None,
) -> Source:  # fmt: skip
    """`value` is '[DATASTORE] PATH'; with `extent_size`, a flat extent vSphere named: raw
    whatever its name, and of the disk's size or refused."""
    found = re.fullmatch(r"\[(?P<datastore>[^\]]+)\]\s*(?P<path>.+)", value)
    if found is None:
        raise ValueError("give the file as '[DATASTORE] FOLDER/FILE.vmdk'")
    ca_file = str(Path(args.ca_file).absolute()) if args.ca_file else None
    return VSphereSource(url=args.vsphere, datacenter=datacenter or args.datacenter,
                         path=found["path"], datastore=found["datastore"], cookie_file=cookie_file,
                         ca_file=ca_file, insecure=args.insecure,
                         format="raw" if extent_size is not None else None,
                         size=extent_size)  # fmt: skip


def _ssh_source(value: str, args: argparse.Namespace) -> Source:
    """ssh://USER@HOST[:PORT]/PATH, with the user's own key and known_hosts by default."""
    parts = urllib.parse.urlsplit(value)
    ssh = Path.home() / ".ssh"
    keys = [ssh / name for name in ("id_ed25519", "id_ecdsa", "id_rsa")]
    default_key = next((key for key in keys if key.is_file()), keys[0])
    identity = Path(getattr(args, "identity", None) or default_key).absolute()
    known_hosts = Path(getattr(args, "known_hosts", None) or ssh / "known_hosts").absolute()
    return SshSource(
        host=parts.hostname or "", port=parts.port or 22, user=parts.username or getpass.getuser(),
        path=urllib.parse.unquote(parts.path), identity_file=str(identity),
        known_hosts_file=str(known_hosts),
    )  # fmt: skip


def _is_tar(path: Path) -> bool:
    import tarfile  # only for a source named without .ova

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _execute(job: Job, cancel: CancelToken, stream: TextIO | None, bar: bool) -> tuple[Result, Any]:
    sink = EventSink(time.time, stream=stream)
    runner = JobRunner(job, ToolRunner(cancel), sink, time.time)
    stop = threading.Event()
    painter = threading.Thread(target=_paint, args=(runner, stop), daemon=True)
    if bar:
        painter.start()
    try:
        result = runner.run()
    finally:
        stop.set()
        if bar:
            painter.join()
            print(file=sys.stderr)
    return result, runner


def _execute_single(job: Job, cancel: CancelToken, as_json: bool) -> tuple[Result, Any]:
    """A command-line job: JSON-lines events and result, or a progress bar on a terminal."""
    stream = sys.stdout if as_json else None
    result, runner = _execute(job, cancel, stream=stream, bar=not as_json and sys.stderr.isatty())
    if as_json:
        print(json.dumps({"type": "result", **json.loads(encode_result(result))}), flush=True)
    return result, runner


def _paint(runner: JobRunner, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        print("\r" + console.progress_line(runner.board.snapshot()), end="", file=sys.stderr)
    print("\r" + console.progress_line(runner.board.snapshot()), end="", file=sys.stderr)


DiskPlan = tuple[str, Source, Path | None]  # a disk's name, its source, its output file


def _single_job(
    args: argparse.Namespace, operation: Operation, cookie_file: str | None = None
) -> Job | int:
    def disks() -> list[DiskPlan]:
        source = source_from_argument(args.source, args.ova_disk, args, cookie_file)
        writes = operation is Operation.CONVERT or getattr(args, "destination", None)
        return [("disk", source, Path(args.destination) if writes else None)]

    return _job(args, operation, Path(args.source).name or "disk", disks)


def _vm_job(args: argparse.Namespace, login: Login) -> Job | int:
    """Every disk of the VM --vm names, each from its flat extent to OUTDIR/NAME-disk-N.FORMAT."""
    from hyper2kvm_worker.sources import vsphere_inventory

    session, cookie_file = login
    vm = vsphere_inventory.find_vm(session, args.vm, args.datacenter)
    stem = _file_stem(vm.name)

    def disks() -> list[DiskPlan]:
        return [
            (f"disk-{number}",
             _datastore_source(disk.extent or "", args, cookie_file, vm.datacenter,
                               disk.capacity_bytes),
             args.output_dir / f"{stem}-disk-{number}.{args.format or OutputFormat.QCOW2}")
            for number, disk in enumerate(vm.disks, 1)
        ]  # fmt: skip

    return _job(args, Operation.CONVERT, stem, disks)


def _file_stem(name: str) -> str:
    """A VM's name as the start of a file name: no separators, spaces or leading dots."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._-")
    return stem.encode()[:200].decode(errors="ignore") or "vm"


def _job(
    args: argparse.Namespace, operation: Operation, name: str, disks: Callable[[], list[DiskPlan]]
) -> Job | int:
    """The job of `disks`, with the command line's options; refused in one line if invalid."""
    try:
        return Job(
            name=name,
            operation=operation,
            disks=[Disk(name=n, source=s, output=_output(args, o)) for n, s, o in disks()],
            verify=not getattr(args, "no_verify", False),
            parallel_disks=getattr(args, "parallel_disks", None),
            skip_free_space=getattr(args, "skip_free_space", False),
            fix=_fix_options(args) if operation is Operation.OFFLINE_FIX else FixOptions(),
        )
    except ValidationError as error:
        first = error.errors()[0]
        return _fail(first["msg"].removeprefix("Value error, "), Reason.INVALID_JOB, 3)
    except ValueError as error:
        return _fail(str(error), Reason.INVALID_JOB, ExitCode.PERMANENT)


def _output(args: argparse.Namespace, destination: Path | None) -> Output | DeviceOutput | None:
    if destination is None:
        return None
    destination = destination.absolute()
    if _is_block_device(destination):
        return _device_output(args, destination)
    return Output(
        root=str(destination.parent),
        path=destination.name,
        format=OutputFormat(args.format or OutputFormat.QCOW2),
        compression=Compression(args.compression),
        preallocation=Preallocation(args.preallocation),
        overwrite=args.overwrite,
    )


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False  # not there yet: a new output file


def _device_output(args: argparse.Namespace, device: Path) -> DeviceOutput:
    """A block device destination: the disk is written onto it raw, with no file options."""
    if args.format not in (None, OutputFormat.RAW):
        raise ValueError(
            f"{device} is a block device, written raw only; drop --format {args.format}"
        )
    if args.compression != Compression.NONE or args.preallocation != Preallocation.OFF:
        raise ValueError(
            f"{device} is a block device: --compression and --preallocation do not apply"
        )
    return DeviceOutput(device=str(device))


def _fix_options(args: argparse.Namespace) -> FixOptions:
    seed = None
    if args.cloud_init_user_data is not None:
        meta = args.cloud_init_meta_data.read_text() if args.cloud_init_meta_data else ""
        seed = CloudInitSeed(user_data=args.cloud_init_user_data.read_text(), meta_data=meta)
    return FixOptions(
        dry_run=args.dry_run,
        remove_vmware_tools=args.remove_vmware_tools,
        firstboot_script=args.firstboot.read_text() if args.firstboot else None,
        cloud_init=seed,
    )


def _report_failure(result: Result) -> int:
    code = JobRunner.exit_code(result)
    if result.error is not None:
        _fail(result.error.message, result.error.reason, code)
    return code


def _inspect(args: argparse.Namespace, cancel: CancelToken) -> int:
    return _in_session(args, lambda login: _inspect_in(args, cancel, login[1] if login else None))


def _inspect_in(args: argparse.Namespace, cancel: CancelToken, cookie: str | None) -> int:
    job = _single_job(args, Operation.INSPECT, cookie)
    if isinstance(job, int):
        return job
    result, runner = _execute(job, cancel, stream=None, bar=False)
    if result.state is not JobState.SUCCEEDED:
        return _report_failure(result)
    report = runner.reports["disk"]
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(console.inspection_text(report))
    return ExitCode.OK


def _convert(args: argparse.Namespace, cancel: CancelToken) -> int:
    if args.vm is None and (not (args.source and args.destination) or args.output_dir):
        usage = "give a source and a destination (or --vsphere URL --vm NAME -o DIR)"
        return _fail(usage, Reason.INVALID_JOB, ExitCode.USAGE)
    if args.vm is not None and (not (args.vsphere and args.output_dir) or args.source):
        usage = "--vm needs --vsphere and --output-dir, and no source or destination"
        return _fail(usage, Reason.INVALID_JOB, ExitCode.USAGE)
    return _in_session(args, lambda login: _convert_in(args, cancel, login))


def _convert_in(args: argparse.Namespace, cancel: CancelToken, login: Login | None) -> int:
    if args.vm is not None and login is not None:
        job = _vm_job(args, login)
    else:
        job = _single_job(args, Operation.CONVERT, login[1] if login else None)
    if isinstance(job, int):
        return job
    result, _ = _execute_single(job, cancel, args.json)
    if result.state is not JobState.SUCCEEDED:
        return _report_failure(result)
    for disk in result.disks if not args.json else []:
        print(
            f"{disk.output}: {disk.format}, {console.human_bytes(disk.virtual_size)} virtual, "
            + _where_written(disk)
            + (f", verified {disk.digest}" if disk.verified else ", not verified")
        )
    return ExitCode.OK


def _where_written(disk: DiskResult) -> str:
    if disk.zero_skipped is None:
        return f"{console.human_bytes(disk.file_size)} on disk"
    if disk.zero_skipped:
        return "written onto the device (it read as zero: zero regions skipped)"
    return "written onto the device (zero regions written too)"


def _fix(args: argparse.Namespace, cancel: CancelToken) -> int:
    if args.dry_run == bool(args.destination):
        return _fail(
            "give a destination, or --dry-run without one", Reason.INVALID_JOB, ExitCode.USAGE
        )
    try:
        job = _single_job(args, Operation.OFFLINE_FIX)
    except OSError as error:
        return _fail(f"cannot read {error.filename}: {error.strerror}", Reason.INVALID_JOB, 3)
    if isinstance(job, int):
        return job
    result, runner = _execute_single(job, cancel, args.json)
    if not args.json:
        for entry in runner.reports.get("disk", {}).get("fixes", []):
            print(f"{entry['fix']:<14}{entry['status']:<13}{'; '.join(entry['details'])}")
    if result.state is not JobState.SUCCEEDED:
        return _report_failure(result)
    if not args.json and not args.dry_run:
        disk = result.disks[0]
        print(f"{disk.output}: fixed, {disk.format}, digest {disk.digest}")
    return ExitCode.OK


def _run(args: argparse.Namespace, cancel: CancelToken) -> int:
    # Imported here: prometheus-client and psutil cost start-up time the other commands skip.
    from hyper2kvm_worker.status_server import StatusServer, parse_listen

    try:
        job = Job.model_validate_json(args.job.read_bytes())
    except (OSError, ValidationError, ValueError) as error:
        message = _job_error(args.job, error)
        _write_result(args.result, _refused(message))
        return _fail(message, Reason.INVALID_JOB, ExitCode.PERMANENT)
    try:
        address = parse_listen(args.listen)
    except ValueError as error:
        return _fail(str(error), Reason.INVALID_JOB, ExitCode.USAGE)
    sink = EventSink(time.time, stream=sys.stdout, path=args.events)
    runner = JobRunner(job, ToolRunner(cancel), sink, time.time)
    server = None
    if not args.no_listen:
        volumes = [Path(disk.output.root) for disk in job.disks if isinstance(disk.output, Output)]
        try:
            server = StatusServer(address, job.name, runner.board.snapshot, volumes).start()
        except OSError as error:
            return _fail(f"cannot listen on {args.listen}: {error.strerror}", "Listen", 75)
        host, port = server.address
        sink.emit("listening", address=f"{host}:{port}")
    try:
        result = runner.run()
        sink.emit("result", **json.loads(encode_result(result)))
        _write_result(args.result, result)
    finally:
        if server is not None:
            server.stop()
        sink.close()
    return _report_failure(result)


def _job_error(path: Path, error: OSError | ValidationError | ValueError) -> str:
    if isinstance(error, OSError):
        return f"cannot read job file {path}: {error.strerror}"
    if not isinstance(error, ValidationError):
        return str(error)
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "job"
    return f"invalid job {path}: {where}: {first['msg'].removeprefix('Value error, ')}"


def _refused(message: str) -> Result:
    return Result(
        job="unknown",
        state=JobState.FAILED,
        error=ErrorInfo(reason=Reason.INVALID_JOB.value, message=message[:1024], permanent=True),
    )


def _write_result(path: Path | None, result: Result) -> None:
    if path is None:
        return
    # Written in place: a Pod's termination-message file is a mount that cannot be renamed over.
    path.write_text(encode_result(result), encoding="utf-8")


def _capabilities(args: argparse.Namespace, cancel: CancelToken) -> int:
    from hyper2kvm_worker import capabilities

    report = capabilities.report(ToolRunner(cancel), args.location)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for key, value in report.items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            print(f"{key + ':':<20}{shown}")
    return ExitCode.OK if report["ready"] else ExitCode.TRANSIENT


if __name__ == "__main__":
    sys.exit(main())
