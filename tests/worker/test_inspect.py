"""`inspect` describes layout, identity, partitions and filesystems without booting the guest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import requirements
from tests.worker.conftest import RunWorker
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_ova, make_vmfs, run, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS, "sfdisk", "mkfs.ext4", "mkswap")


def partitioned_disk(path: Path, scheme: str) -> Path:
    """A 64 MiB disk: partition 1 ext4 labelled 'root' (20 MiB), partition 2 swap (8 MiB)."""
    with path.open("wb") as stream:
        stream.truncate(64 * MiB)
    layout = f"label: {scheme}\nstart=2048, size=40960, type=L\nstart=43008, size=16384, type=S\n"
    if scheme == "dos":
        layout = layout.replace("type=L", "type=83, bootable").replace("type=S", "type=82")
    subprocess.run(["sfdisk", "-q", str(path)], input=layout.encode(), check=True)
    ext4 = path.with_suffix(".ext4")
    run(
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        "root",
        "-U",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        ext4,
        "20M",
    )
    swap = path.with_suffix(".swap")
    with swap.open("wb") as stream:
        stream.truncate(8 * MiB)
    run("mkswap", "-q", "-L", "swp", swap)
    for piece, sector in ((ext4, 2048), (swap, 43008)):
        run(
            "dd",
            f"if={piece}",
            f"of={path}",
            "bs=512",
            f"seek={sector}",
            "conv=notrunc",
            "status=none",
        )
    return path


def inspect_json(run_worker: RunWorker, source: Path | str, *extra: str) -> dict[str, Any]:
    outcome = run_worker("inspect", "--json", source, *extra)
    assert outcome.returncode == 0, outcome.stderr
    report: dict[str, Any] = json.loads(outcome.stdout)
    return report


@pytest.mark.parametrize("scheme", ["gpt", "dos"])
def test_partitions_and_filesystems(scheme: str, tmp_path: Path, run_worker: RunWorker) -> None:
    raw = partitioned_disk(tmp_path / "guest.raw", scheme)
    vmdk = to_vmdk(raw, tmp_path / "guest.vmdk", "monolithicSparse")

    report = inspect_json(run_worker, vmdk)

    table = report["partition_table"]
    assert table["scheme"] == ("gpt" if scheme == "gpt" else "mbr")
    first, second = table["partitions"]
    assert (first["start"], first["size"]) == (1 * MiB, 20 * MiB)
    assert first["filesystem"]["type"] == "ext4"
    assert first["filesystem"]["label"] == "root"
    assert first["filesystem"]["uuid"] == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert second["filesystem"]["type"] == "swap"
    if scheme == "gpt":
        assert first["type_name"] == "Linux filesystem"
        assert second["type_name"] == "Linux swap"
        assert table["disk_guid"]
    else:
        assert first["bootable"] is True
        assert (first["type"], second["type"]) == ("0x83", "0x82")


def test_layout_and_identity_of_an_esxi_disk(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    descriptor = make_vmfs(small_raw, tmp_path, "web01")

    report = inspect_json(run_worker, descriptor)

    assert report["format"] == "vmdk"
    assert report["subformat"] == "vmfs"
    assert report["virtual_size"] == 64 * MiB
    assert report["extents"] == [
        {"access": "RW", "type": "VMFS", "file": "web01-flat.vmdk", "size": 64 * MiB}
    ]
    assert report["adapter_type"] == "lsilogic"
    assert report["hardware_version"] == "19"
    assert report["uuid"] == "60 00 c2 9a 4b 2e 61 3c-7f 1a 5e 0d 22 16 0c 2b"
    assert report["long_content_id"] == "8c3b4f1e0f7e5bd5a4c1b2d3fffffffe"
    assert report["cid"] == "fffffffe"
    # 6 MiB of data in a sparse flat file: allocation counts what the files really hold.
    assert 6 * MiB <= report["allocated_bytes"] < 8 * MiB


def test_stream_optimized_in_an_ova_and_over_http(
    small_raw: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    stream = to_vmdk(small_raw, tmp_path / "disk1.vmdk", "streamOptimized")
    ova = make_ova({"disk1.vmdk": stream}, tmp_path / "vm.ova")

    from_ova = inspect_json(run_worker, ova)
    with serve(tmp_path) as url:
        over_http = inspect_json(run_worker, f"{url}/disk1.vmdk")

    for report in (from_ova, over_http):
        assert report["subformat"] == "streamOptimized"
        assert report["sparse_header"]["compressed"] is True
        assert report["virtual_size"] == 64 * MiB
    assert from_ova["source"].endswith("vm.ova:disk1.vmdk")


def test_human_report(tmp_path: Path, run_worker: RunWorker) -> None:
    raw = partitioned_disk(tmp_path / "guest.raw", "gpt")
    vmdk = to_vmdk(raw, tmp_path / "guest.vmdk", "twoGbMaxExtentSparse")

    outcome = run_worker("inspect", vmdk)

    assert outcome.returncode == 0, outcome.stderr
    assert "vmdk (twoGbMaxExtentSparse)" in outcome.stdout
    assert "partitions (gpt):" in outcome.stdout
    assert "ext4" in outcome.stdout and "root" in outcome.stdout
    assert "guest-s001.vmdk" in outcome.stdout


@pytest.mark.needs("guestfish", "kernel")
def test_capabilities(tmp_path: Path, run_worker: RunWorker) -> None:
    outcome = run_worker("capabilities", "--json", "--location", tmp_path)
    assert outcome.returncode == 0, outcome.stdout
    caps = json.loads(outcome.stdout)
    assert caps["ready"] is True and caps["missing"] == []
    assert caps["offline_fix_ready"] is True and caps["offline_fix_missing"] == []
    assert caps["qemu_img"].startswith("qemu-img version")
    assert caps["nbdkit"].startswith("nbdkit")
    assert {"file", "python", "ssh"} <= set(caps["nbdkit_plugins"])
    assert "tar" in caps["nbdkit_filters"]
    assert "zlib" in caps["qcow2_compression"]
    assert isinstance(caps["kvm"], bool)
    assert caps["locations"][0]["path"] == str(tmp_path)
    assert caps["locations"][0]["free_bytes"] > 0
