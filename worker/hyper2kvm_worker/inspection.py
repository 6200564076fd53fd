"""Inspecting a source disk without booting it: VMDK layout (none for a raw flat extent),
sizes, partitions, filesystems."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hyper2kvm_worker.partitions import HEAD_BYTES, Partition, parse_partition_table
from hyper2kvm_worker.protocol import Limits, Source
from hyper2kvm_worker.qemu_img import QemuImg
from hyper2kvm_worker.sources import OpenedSource, open_source
from hyper2kvm_worker.tools import ToolRunner

FS_PROBE_BYTES = 128 * 1024  # covers every common superblock, btrfs's at 64 KiB included
# A source's integrity checks (an OVA's manifest) read all of a member: inspect makes them
# for members up to this size and leaves larger ones to the conversion, which reads it anyway.
CHECK_MAX_BYTES = 256 << 20
_DDB_FIELDS = {
    "ddb.adapterType": "adapter_type",
    "ddb.virtualHWVersion": "hardware_version",
    "ddb.uuid": "uuid",
    "ddb.longContentID": "long_content_id",
    "ddb.toolsVersion": "tools_version",
    "ddb.thinProvisioned": "thin_provisioned",
}


class Inspector:
    def __init__(self, runner: ToolRunner, limits: Limits | None = None) -> None:
        self._runner = runner
        self._limits = limits
        self._qemu_img = QemuImg(runner)

    def inspect(self, source: Source) -> dict[str, Any]:
        with open_source(source, self._runner, self._limits) as opened:
            checked = self._check(opened)
            report = self._report(opened)
            report["integrity"] = checked
            return report

    def _check(self, opened: OpenedSource) -> dict[str, str] | None:
        """Each checked file: "verified", or "checked on convert" when it is too large."""
        if not opened.checks:
            return None
        checked = {}
        for check in opened.checks:
            if check.size > CHECK_MAX_BYTES:
                checked[check.label] = "checked on convert"
                continue
            check.verify(self._runner.cancel)
            checked[check.label] = "verified"
        return checked

    def _report(self, opened: OpenedSource) -> dict[str, Any]:
        info = opened.info
        report: dict[str, Any] = {
            "source": opened.label,
            "format": opened.format,
            "virtual_size": int(info["virtual-size"]),
            "allocated_bytes": opened.stored_bytes,
        }
        if opened.layout is None:  # a bare flat extent: raw bytes, nothing describes them
            size = report["virtual_size"]
            flat = {"file": None, "type": "FLAT", "access": "RW", "size": size}
            report.update(subformat="flat", extents=[flat], cid=None, parent_cid=None,
                          parent_file=None, logical_sector_size=None)  # fmt: skip
            report.update({name: None for name in _DDB_FIELDS.values()})
            report.update(self._partitions(opened))
            return report
        descriptor = opened.layout.descriptor
        header = opened.layout.header
        report.update(
            logical_sector_size=descriptor.logical_sector_size,
            subformat=descriptor.create_type,
            extents=[
                {
                    "file": extent.file,
                    "type": extent.type,
                    "access": extent.access,
                    "size": extent.size_bytes,
                }
                for extent in descriptor.extents
            ],
            cid=descriptor.cid,
            parent_cid=descriptor.parent_cid,
            parent_file=descriptor.parent_file if descriptor.has_parent else None,
        )
        for key, name in _DDB_FIELDS.items():
            report[name] = descriptor.ddb.get(key)
        if header is not None:
            report["sparse_header"] = {
                "version": header.version,
                "grain_size": header.grain_sectors * 512,
                "compressed": header.stream_optimized,
            }
        report.update(self._partitions(opened))
        return report

    def _partitions(self, opened: OpenedSource) -> dict[str, Any]:
        head = self._qemu_img.read_head(opened.image, opened.format, HEAD_BYTES)
        table = parse_partition_table(head)
        if table is None:
            whole = self._filesystem(opened, 0)
            return {"partition_table": None, "filesystems": [whole] if whole else []}
        partitions = []
        for partition in table.partitions:
            entry = _partition_dict(partition)
            if partition.type_name not in ("extended", "extended (LBA)", "BIOS boot"):
                entry["filesystem"] = self._filesystem(opened, partition.start)
            partitions.append(entry)
        return {
            "partition_table": {
                "scheme": table.scheme,
                "disk_guid": table.disk_guid,
                "partitions": partitions,
            }
        }

    def _filesystem(self, opened: OpenedSource, start: int) -> dict[str, str] | None:
        data = self._qemu_img.read_head(opened.image, opened.format, FS_PROBE_BYTES, skip=start)
        if not data.strip(b"\x00"):
            return None
        with tempfile.TemporaryDirectory(prefix="hyper2kvm-fs-") as scratch:
            probe = Path(scratch) / "probe"
            probe.write_bytes(data)
            done = self._runner.run(["blkid", "-p", "-o", "export", str(probe)])
        if done.returncode != 0:
            return None
        fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        wanted = ("TYPE", "UUID", "LABEL", "VERSION", "PTTYPE")
        return {key.lower(): fields[key] for key in wanted if key in fields} or None


def _partition_dict(partition: Partition) -> dict[str, Any]:
    return {
        "number": partition.number,
        "start": partition.start,
        "size": partition.size,
        "type": partition.type,
        "type_name": partition.type_name,
        "name": partition.name or None,
        "bootable": partition.bootable,
    }


def summary(report: dict[str, Any]) -> dict[str, object]:
    """The few fields that fit in a result beside everything else (< 4 KiB)."""
    table = report.get("partition_table") or {}
    filesystems = [
        (part.get("filesystem") or {}).get("type") for part in table.get("partitions", [])
    ] or [fs.get("type") for fs in report.get("filesystems", [])]
    return {
        "subformat": report["subformat"],
        "virtual_size": report["virtual_size"],
        "allocated_bytes": report["allocated_bytes"],
        "partition_table": table.get("scheme"),
        "filesystems": [fs for fs in filesystems if fs],
    }
