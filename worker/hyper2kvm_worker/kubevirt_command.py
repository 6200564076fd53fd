"""`hyper2kvm-worker kubevirt`: print the KubeVirt VirtualMachine for an OVA, OVF or VMX.

Like `virt-v2v -o kubevirt`, it prints the manifest and creates nothing: the hardware is
read from the descriptor, the disks are named by the claims they will be converted into,
and the notes (why SATA, which NIC model) go to stderr. The manifest is YAML written by
`to_yaml` below: the worker image carries no YAML library (pyyaml is the operator's), and a
manifest needs only maps, lists, strings, integers and booleans; every string is written
double-quoted, so no value can turn into YAML's `true`, `null` or a number.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hyper2kvm_worker import kubevirt, ovf, vmx
from hyper2kvm_worker.describe import read_bounded, read_ova_descriptor
from hyper2kvm_worker.errors import BadInput, ExitCode, Reason
from hyper2kvm_worker.hardware import Hardware

PROG = "hyper2kvm-worker"
_MEMORY = re.compile(r"^(?P<n>\d{1,12})(?P<unit>Mi|Gi)$")


def add_parser(commands: Any) -> None:
    """Register `kubevirt` on the CLI's subcommands."""
    parser = commands.add_parser(
        "kubevirt", help="print the KubeVirt VirtualMachine for an OVA, OVF or VMX; create nothing"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ova", type=Path, help="an OVA: its .ovf descriptor is read")
    source.add_argument("--ovf", type=Path, help="an OVF descriptor")
    source.add_argument("--vmx", type=Path, help="a VMware .vmx configuration file")
    parser.add_argument("--name", help="the VM's name (default: the source's, made DNS-1123)")
    parser.add_argument("--namespace", help="metadata.namespace (default: none, kubectl's)")
    parser.add_argument(
        "--network-map",
        action="append",
        default=[],
        metavar="SRC=pod|SRC=multus:[NS/]NAD",
        help="where a source network goes; every source network must be mapped",
    )
    parser.add_argument(
        "--virtio",
        action="store_true",
        help="the guest has virtio drivers (offline_fix ran): virtio disks and NICs",
    )
    parser.add_argument(
        "--claim-prefix", help="claims are PREFIX-disk0, PREFIX-disk1, ... (default: the name)"
    )
    parser.add_argument("--run-strategy", default="Halted", choices=kubevirt.RUN_STRATEGIES)
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--instancetype", help="a VirtualMachineClusterInstancetype name")
    parser.add_argument("--preference", help="a VirtualMachineClusterPreference name")
    parser.add_argument("--cpus", type=int, help="CPUs, instead of the source's")
    parser.add_argument("--memory", help="memory instead of the source's, e.g. 4Gi or 512Mi")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, cancel: object) -> int:
    try:
        options, networks = _options(args)
    except BadInput as error:
        return _fail(error.message, error.reason, ExitCode.USAGE)
    try:
        hardware = read_hardware(args.ova, args.ovf, args.vmx)
        prefix = args.claim_prefix or kubevirt.vm_name(hardware, args.name)
        claims = [f"{prefix}-disk{index}" for index in range(len(hardware.disks))]
        built = kubevirt.build_vm(
            hardware, claims, virtio=args.virtio, networks=networks, options=options
        )
    except BadInput as error:
        return _fail(error.message, error.reason, ExitCode.PERMANENT)
    for note in built.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    for origin, fields in _by_origin(built.provenance):
        print(f"{PROG}: from {origin}: {', '.join(fields)}", file=sys.stderr)
    sys.stdout.write(
        json.dumps(built.manifest, indent=2) + "\n" if args.json else to_yaml(built.manifest)
    )
    return ExitCode.OK


def read_hardware(ova: Path | None, ovf_file: Path | None, vmx_file: Path | None) -> Hardware:
    """The hardware the one given source describes."""
    if ova is not None:
        return ovf.parse_ovf(read_ova_descriptor(ova))
    if ovf_file is not None:
        return ovf.parse_ovf(read_bounded(ovf_file, ovf.OVF_MAX_BYTES))
    assert vmx_file is not None  # argparse requires one of the three
    text = read_bounded(vmx_file, vmx.VMX_MAX_BYTES).decode("utf-8", errors="replace")
    return vmx.parse_vmx(text)


def _options(
    args: argparse.Namespace,
) -> tuple[kubevirt.VmOptions, dict[str, kubevirt.NetworkTarget]]:
    networks: dict[str, kubevirt.NetworkTarget] = {}
    for entry in args.network_map:
        # Source network names may hold '=' or spaces; targets never hold '='.
        source, equals, target = entry.rpartition("=")
        if not equals or not source:
            raise BadInput(Reason.INVALID_JOB, f"--network-map {entry!r}: use SOURCE=TARGET")
        if source in networks:
            raise BadInput(Reason.INVALID_JOB, f"--network-map maps {source!r} twice")
        networks[source] = kubevirt.parse_network_target(target)
    labels: dict[str, str] = {}
    for entry in args.label:
        key, equals, value = entry.partition("=")
        if not equals:
            raise BadInput(Reason.INVALID_JOB, f"--label {entry!r}: use KEY=VALUE")
        labels[key] = value
    memory = None
    if args.memory is not None:
        match = _MEMORY.match(args.memory)
        if match is None:
            raise BadInput(Reason.INVALID_JOB, f"--memory {args.memory!r}: use e.g. 4Gi or 512Mi")
        memory = int(match["n"]) << (30 if match["unit"] == "Gi" else 20)
    options = kubevirt.VmOptions(
        name=args.name,
        namespace=args.namespace,
        run_strategy=args.run_strategy,
        labels=labels,
        instancetype=args.instancetype,
        preference=args.preference,
        cpus=args.cpus,
        memory_bytes=memory,
    )
    return options, networks


def _by_origin(provenance: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    origins: dict[str, list[str]] = {}
    for path, origin in provenance.items():
        origins.setdefault(origin, []).append(path)
    yield from sorted(origins.items())


def _fail(message: str, reason: Reason | str, code: int) -> int:
    print(f"{PROG}: error: {message} [{reason}]", file=sys.stderr)
    return code


# YAML 1.1 reads these bare words as booleans or null; as keys they are quoted.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def to_yaml(value: dict[str, Any]) -> str:
    """`value` (maps, lists, str, int, bool, None) as a block-style YAML document."""
    return "".join(_block(value, ""))


def _block(value: dict[str, Any] | list[Any], indent: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if _nested(item):
                yield f"{indent}{_key(key)}:\n"
                yield from _block(item, indent + "  ")
            else:
                yield f"{indent}{_key(key)}: {_scalar(item)}\n"
        return
    for item in value:
        if isinstance(item, dict) and item:
            lines = list(_block(item, indent + "  "))
            yield f"{indent}- {lines[0].removeprefix(indent + '  ')}"
            yield from lines[1:]
        elif _nested(item):
            yield f"{indent}-\n"
            yield from _block(item, indent + "  ")
        else:
            yield f"{indent}- {_scalar(item)}\n"


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a manifest key must be a string, not {key!r}")
    plain = _PLAIN_KEY.match(key) is not None and key.lower() not in _RESERVED
    return key if plain else json.dumps(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str) or value is None:
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    raise TypeError(f"no YAML for {type(value).__name__} {value!r}")
