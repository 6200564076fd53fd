"""Disk images for the tests, made with qemu-img and a few lines of Python; never committed."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import blake3

MiB = 1 << 20
GiB = 1 << 30


def run(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stderr}")
    return done.stdout


def make_raw(path: Path, size: int, chunks: list[tuple[int, int]], seed: int = 1) -> Path:
    """A sparse raw disk of `size` bytes with random data at each (offset, length)."""
    rng = random.Random(seed)
    with path.open("wb") as stream:
        stream.truncate(size)
        for offset, length in chunks:
            stream.seek(offset)
            stream.write(rng.randbytes(length))
    return path


def to_vmdk(raw: Path, vmdk: Path, subformat: str) -> Path:
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", raw, vmdk)
    return vmdk


def make_vmfs(raw: Path, directory: Path, name: str) -> Path:
    """An ESXi datastore disk: a `createType="vmfs"` descriptor beside its `-flat.vmdk`."""
    flat = directory / f"{name}-flat.vmdk"
    run("cp", "--sparse=always", raw, flat)
    sectors = raw.stat().st_size // 512
    descriptor = directory / f"{name}.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        "CID=fffffffe\n"
        "parentCID=ffffffff\n"
        'createType="vmfs"\n\n'
        "# Extent description\n"
        f'RW {sectors} VMFS "{flat.name}"\n\n'
        "# The Disk Data Base\n"
        "#DDB\n\n"
        'ddb.adapterType = "lsilogic"\n'
        'ddb.geometry.cylinders = "1024"\n'
        'ddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.uuid = "60 00 c2 9a 4b 2e 61 3c-7f 1a 5e 0d 22 16 0c 2b"\n'
        'ddb.longContentID = "8c3b4f1e0f7e5bd5a4c1b2d3fffffffe"\n'
        'ddb.virtualHWVersion = "19"\n'
    )
    return descriptor


def make_ova(disks: dict[str, Path], ova: Path) -> Path:
    """An OVA: the OVF envelope first, then each disk, as VMware exports them."""
    envelope = b'<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>'
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("vm.ovf")
        info.size = len(envelope)
        tar.addfile(info, io.BytesIO(envelope))
        for name, path in disks.items():
            tar.add(path, arcname=name)
    return ova


def raw_digest(raw: Path) -> str:
    hasher = blake3.blake3()
    with raw.open("rb") as stream:
        while chunk := stream.read(4 * MiB):
            hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"


def same_content(a: Path, b: Path, fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    argv = [
        "qemu-img",
        "compare",
        *(["-f", fmt_a] if fmt_a else []),
        *(["-F", fmt_b] if fmt_b else []),
        str(a),
        str(b),
    ]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def ovf_descriptor(files: dict[str, tuple[int, int]]) -> bytes:
    """A VMware-style OVF declaring, for each disk file, its size and its disk's capacity."""
    references = "".join(
        f'<File ovf:href="{name}" ovf:id="file{i}" ovf:size="{size}"/>'
        for i, (name, (size, _)) in enumerate(files.items(), start=1)
    )
    disks = "".join(
        f'<Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" '
        f'ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}"/>'
        for i, (_, (_, capacity)) in enumerate(files.items(), start=1)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">'
        f"<References>{references}</References>"
        f"<DiskSection><Info>Virtual disk information</Info>{disks}</DiskSection>"
        "</Envelope>"
    ).encode()


def manifest_line(algorithm: str, name: str, data: bytes) -> str:
    return f"{algorithm.upper()}({name})= {hashlib.new(algorithm.lower(), data).hexdigest()}\n"


def make_exported_ova(
    ova: Path,
    disks: dict[str, Path],
    *,
    algorithm: str | None = "sha256",
    declared: dict[str, tuple[int, int]] | None = None,
    manifest: str | None = None,
) -> Path:
    """An OVA as ovftool exports one: `vm.ovf` declaring each disk's file size and capacity
    (or `declared`'s), the manifest `vm.mf` (`algorithm`'s digests, or the text `manifest`;
    none when both are None), then the disks."""
    sizes = declared or {
        name: (path.stat().st_size, int(json.loads(run("qemu-img", "info", "--output=json",
                                                           path))["virtual-size"]))
        for name, path in disks.items()
    }  # fmt: skip
    descriptor = ovf_descriptor(sizes)
    if manifest is None and algorithm is not None:
        manifest = manifest_line(algorithm, "vm.ovf", descriptor) + "".join(
            manifest_line(algorithm, name, path.read_bytes()) for name, path in disks.items()
        )
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        members = [("vm.ovf", descriptor)]
        members += [("vm.mf", manifest.encode())] if manifest is not None else []
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, path in disks.items():
            tar.add(path, arcname=name)
    return ova
