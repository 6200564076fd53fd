"""What crosses the network for an HTTP source: each byte once, verified or not; a flat
extent as raw bytes; a connection dropped mid-copy costs a retry of that request only."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper2kvm_worker.range_reader import BLOCK
from tests import requirements
from tests.worker.conftest import RunWorker
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_raw, raw_digest, same_content, to_vmdk
from tests.worker.test_convert_formats import convert_ok

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)


@pytest.fixture(scope="module")
def served_disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """256 MiB of data in a 320 MiB disk: more than the reader keeps in memory, so the
    conversion and the digest share one transfer only if neither runs off from the other."""
    directory = tmp_path_factory.mktemp("www")
    raw = make_raw(directory / "disk.raw", 320 * MiB, [(0, 128 * MiB), (160 * MiB, 128 * MiB)])
    to_vmdk(raw, directory / "disk.vmdk", "monolithicSparse")
    return directory, raw


def test_a_verified_conversion_reads_the_source_once(
    served_disks: tuple[Path, Path], tmp_path: Path, run_worker: RunWorker
) -> None:
    directory, raw = served_disks
    served: list[int] = []
    with serve(directory, served=served) as url:
        result = convert_ok(run_worker, f"{url}/disk.vmdk", tmp_path / "out.qcow2")

    assert result["disks"][0]["verified"]
    assert result["disks"][0]["digest"] == raw_digest(raw)
    stored = (directory / "disk.vmdk").stat().st_size
    assert sum(served) <= 1.1 * stored, (sum(served), stored)


def test_a_flat_extent_over_http_is_read_as_raw_bytes(
    served_disks: tuple[Path, Path], tmp_path: Path, run_worker: RunWorker
) -> None:
    directory, raw = served_disks
    flat = directory / "vm-flat.vmdk"
    if not flat.exists():
        flat.hardlink_to(raw)
    output = tmp_path / "flat.qcow2"
    with serve(directory) as url:
        result = convert_ok(run_worker, f"{url}/vm-flat.vmdk", output)

    assert result["disks"][0]["digest"] == raw_digest(raw)
    assert same_content(raw, output, "raw", "qcow2")


def test_connections_dropped_mid_copy_cost_only_their_requests(
    served_disks: tuple[Path, Path], tmp_path: Path, run_worker: RunWorker
) -> None:
    """Two GETs cut halfway through, once half the disk has crossed: nbdkit's retry filters
    repeat them, and the conversion ends verified without starting over."""
    directory, raw = served_disks
    stored = (directory / "disk.vmdk").stat().st_size
    served: list[int] = []
    with serve(directory, served=served, drop=(stored // 2, 2)) as url:
        result = convert_ok(run_worker, f"{url}/disk.vmdk", tmp_path / "out.qcow2")

    assert result["disks"][0]["verified"]
    assert result["disks"][0]["digest"] == raw_digest(raw)
    assert served.count(BLOCK // 2) >= 2  # the two cut GETs
    assert sum(served) < 1.3 * stored, (sum(served), stored)  # not read again from the start
