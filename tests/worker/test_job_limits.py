"""The limits a job carries from the cluster's policy, as a hostile tenant tries them.

Where an HTTP source may be fetched from (every redirect checked again), credentials never
in a URL, how large a disk may say it is, and a status endpoint that idle connections
cannot exhaust.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import requirements
from tests.worker.conftest import (
    WORKER,
    Outcome,
    assert_one_line_error,
    leftovers,
    run_one_disk_job,
)
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_raw, to_vmdk

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

PERMANENT = 3
LOOPBACK_DENIED = {"http_allow": ["0.0.0.0/0"], "http_deny": ["127.0.0.1/32"]}


def run_job(
    tmp_path: Path, source: dict[str, Any], limits: dict[str, Any], **extra: Any
) -> Outcome:
    return run_one_disk_job(tmp_path, source, limits=limits, listen=extra.get("listen"))


@pytest.fixture
def served(small_raw: Path, tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    to_vmdk(small_raw, www / "disk.vmdk", "monolithicSparse")
    return www


def test_an_http_source_on_a_denied_network_is_refused(served: Path, tmp_path: Path) -> None:
    with serve(served, host="127.0.0.1") as url:
        outcome = run_job(tmp_path, {"kind": "http", "url": f"{url}/disk.vmdk"}, LOOPBACK_DENIED)
    assert_one_line_error(outcome, PERMANENT, "PolicyViolation")
    assert "is 127.0.0.1, in 127.0.0.1/32, which this cluster denies to network sources" in (
        outcome.stderr
    )
    assert leftovers(tmp_path / "out") == []


def test_a_redirect_to_a_denied_network_is_refused(served: Path, tmp_path: Path) -> None:
    """An allowed server (127.0.0.2) sends the worker on to a denied one (127.0.0.1)."""
    with serve(served, host="127.0.0.1") as inside:
        redirect = {"/disk.vmdk": f"{inside}/disk.vmdk"}
        with serve(served, host="127.0.0.2", redirects=redirect) as outside:
            source = {"kind": "http", "url": f"{outside}/disk.vmdk"}
            followed = run_job(tmp_path / "a", source, {"http_allow": ["127.0.0.0/8"]})
            refused = run_job(tmp_path / "b", source, LOOPBACK_DENIED)
    assert followed.returncode == 0, followed.stderr  # redirects work where they may go
    assert_one_line_error(refused, PERMANENT, "PolicyViolation")
    assert "127.0.0.1" in refused.stderr


def test_credentials_in_a_url_are_refused_and_never_shown(served: Path, tmp_path: Path) -> None:
    with serve(served) as url:
        with_password = url.replace("http://", "http://admin:hunter2@")
        outcome = run_job(tmp_path, {"kind": "http", "url": f"{with_password}/disk.vmdk"}, {})
    assert_one_line_error(outcome, PERMANENT, "InvalidJob")
    assert "put them in a Secret" in outcome.stderr
    assert "hunter2" not in outcome.stderr + outcome.stdout


def test_a_disk_larger_than_the_cluster_allows_is_refused_before_any_copy(
    tmp_path: Path,
) -> None:
    """A few hundred bytes of VMDK may declare terabytes: refused by its declaration."""
    raw = make_raw(tmp_path / "big.raw", 64 * MiB, [(0, MiB)])
    vmdk = to_vmdk(raw, tmp_path / "big.vmdk", "monolithicSparse")
    source = {"kind": "file", "root": str(tmp_path), "path": vmdk.name}
    outcome = run_job(tmp_path, source, {"max_virtual_size": 16 * MiB})
    assert_one_line_error(outcome, PERMANENT, "PolicyViolation")
    assert f"declares {64 * MiB} bytes, more than this cluster's limit" in outcome.stderr
    assert leftovers(tmp_path / "out") == []


def test_idle_connections_cannot_keep_the_operator_from_the_progress(
    small_raw: Path, tmp_path: Path
) -> None:
    """Another Pod opens connections and sends nothing: the endpoint still answers."""
    www = tmp_path / "www"
    www.mkdir()
    to_vmdk(
        make_raw(tmp_path / "slow.raw", 16 * MiB, [(0, 8 * MiB)]),
        www / "d.vmdk",
        "monolithicSparse",
    )
    with serve(www, bytes_per_second=2 * MiB) as url:  # several seconds of work
        job = {
            "name": "watched",
            "operation": "convert",
            "disks": [
                {
                    "name": "d",
                    "source": {"kind": "http", "url": f"{url}/d.vmdk"},
                    "output": {"root": str(tmp_path), "path": "d.qcow2"},
                }
            ],
        }
        (tmp_path / "job.json").write_text(json.dumps(job))
        port = _free_port()
        worker = subprocess.Popen(
            [
                str(WORKER),
                "run",
                "--job",
                str(tmp_path / "job.json"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        idle: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                    break
                except OSError:
                    time.sleep(0.1)
            idle += [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
            answered = None
            deadline = time.monotonic() + 20
            while answered is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/progress", timeout=2
                    ) as r:
                        answered = json.loads(r.read())
                except OSError:
                    time.sleep(0.5)
            assert answered is not None, "the endpoint never answered past the idle connections"
            assert answered["state"] in ("validating", "running", "verifying", "succeeded")
        finally:
            for connection in idle:
                connection.close()
            worker.terminate()
            worker.wait(30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
