"""ESXi over SSH: disks read over SFTP from a real OpenSSH server, host key pinned.

The server is sshd on 127.0.0.1 with keys made here (ssh_server.py); the disks are made
as ESXi keeps them: a `-flat.vmdk` of raw bytes beside its `vmfs` descriptor, or a
single-file sparse VMDK.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import requirements
from tests.worker.conftest import (
    WORKER,
    Outcome,
    assert_converted,
    assert_one_line_error,
    leftovers,
    run_one_disk_job,
)
from tests.worker.images import make_vmfs, raw_digest, same_content, to_vmdk
from tests.worker.ssh_server import SshServer, keygen, serve

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS, "sshd", "ssh-keygen")

PERMANENT, TRANSIENT = 3, 75


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    with serve(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def datastore(small_raw: Path, tmp_path: Path) -> Path:
    """A VM folder as ESXi keeps it: `vm.vmdk` (vmfs descriptor) and `vm-flat.vmdk`."""
    folder = tmp_path / "vmfs" / "volumes" / "datastore 1" / "vm"
    folder.mkdir(parents=True)
    make_vmfs(small_raw, folder, "vm")
    return folder


def ssh_source(server: SshServer, path: Path, **changes: Any) -> dict[str, Any]:
    source = {
        "kind": "ssh",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "path": str(path),
        "identity_file": str(server.identity),
        "known_hosts_file": str(server.known_hosts),
    }
    return {**source, **changes}


def run_job(tmp_path: Path, source: dict[str, Any], operation: str = "convert") -> Outcome:
    return run_one_disk_job(tmp_path, source, operation=operation)


def test_a_flat_extent_converts_as_raw(
    sshd: SshServer, datastore: Path, small_raw: Path, tmp_path: Path
) -> None:
    outcome = run_job(tmp_path, ssh_source(sshd, datastore / "vm-flat.vmdk"))
    assert_converted(outcome, tmp_path / "out" / "d.qcow2", small_raw)


def test_a_monolithic_sparse_vmdk_converts(
    sshd: SshServer, small_raw: Path, tmp_path: Path
) -> None:
    vmdk = to_vmdk(small_raw, tmp_path / "sparse.vmdk", "monolithicSparse")
    outcome = run_job(tmp_path, ssh_source(sshd, vmdk))
    assert_converted(outcome, tmp_path / "out" / "d.qcow2", small_raw)


def test_a_vmfs_descriptor_is_followed_to_its_flat_extent(
    sshd: SshServer, datastore: Path, small_raw: Path, tmp_path: Path
) -> None:
    outcome = run_job(tmp_path, ssh_source(sshd, datastore / "vm.vmdk"))
    assert_converted(outcome, tmp_path / "out" / "d.qcow2", small_raw)


def test_a_flat_extent_is_inspected_without_a_vmdk_layout(
    sshd: SshServer, datastore: Path, small_raw: Path, tmp_path: Path
) -> None:
    outcome = run_job(tmp_path, ssh_source(sshd, datastore / "vm-flat.vmdk"), "inspect")
    assert outcome.returncode == 0, outcome.stderr
    summary = outcome.result()["disks"][0]["inspection"]
    assert summary["subformat"] == "flat"
    assert summary["virtual_size"] == small_raw.stat().st_size
    report = next(e for e in outcome.events() if e["type"] == "report")["inspection"]
    assert report["format"] == "raw"


def test_an_extent_outside_the_descriptors_directory_is_refused(
    sshd: SshServer, datastore: Path, tmp_path: Path
) -> None:
    (datastore / "other").mkdir()
    (datastore / "vm-flat.vmdk").rename(datastore / "other" / "vm-flat.vmdk")
    text = (datastore / "vm.vmdk").read_text().replace('"vm-flat.vmdk"', '"other/vm-flat.vmdk"')
    (datastore / "vm.vmdk").write_text(text)
    outcome = run_job(tmp_path, ssh_source(sshd, datastore / "vm.vmdk"))
    assert_one_line_error(outcome, PERMANENT, "UnsafePath")
    assert leftovers(tmp_path / "out") == []


def test_a_wrong_host_key_is_refused_and_nothing_is_written(
    sshd: SshServer, datastore: Path, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor", "not the server")
    pinned = tmp_path / "known_hosts"
    pinned.write_text(sshd.known_hosts_line(impostor.with_suffix(".pub")))
    source = ssh_source(sshd, datastore / "vm-flat.vmdk", known_hosts_file=str(pinned))
    outcome = run_job(tmp_path, source)
    assert_one_line_error(outcome, PERMANENT, "UntrustedServer")
    assert "host key" in outcome.stderr
    assert leftovers(tmp_path / "out") == []


def test_a_refused_key_is_permanent(sshd: SshServer, datastore: Path, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger", "not authorised")
    source = ssh_source(sshd, datastore / "vm-flat.vmdk", identity_file=str(stranger))
    outcome = run_job(tmp_path, source)
    assert_one_line_error(outcome, PERMANENT, "AuthenticationFailed")
    assert leftovers(tmp_path / "out") == []


def test_an_unreachable_server_is_transient(
    sshd: SshServer, datastore: Path, tmp_path: Path
) -> None:
    closed = SshServer(sshd.host, _closed_port(), sshd.user, sshd.identity, sshd.known_hosts,
                       sshd.host_key)  # fmt: skip
    outcome = run_job(tmp_path, ssh_source(closed, datastore / "vm-flat.vmdk"))
    assert_one_line_error(outcome, TRANSIENT, "SourceUnreachable")
    assert leftovers(tmp_path / "out") == []


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_command_line_reads_an_ssh_url(
    sshd: SshServer, datastore: Path, small_raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.qcow2"
    url = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{datastore / 'vm-flat.vmdk'}"
    argv = [str(WORKER), "convert", url, str(out), "--identity", str(sshd.identity),
            "--known-hosts", str(sshd.known_hosts), "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert Outcome(0, done.stdout, "").result()["disks"][0]["digest"] == raw_digest(small_raw)
    assert same_content(out, small_raw, "qcow2", "raw")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"path": "vmfs/volumes/ds/vm-flat.vmdk"}, "must be absolute"),
        ({"path": "/vmfs/volumes/ds/../../etc/shadow.vmdk"}, "'..'"),
        ({"path": "/etc/shadow"}, "must name a .vmdk"),
        ({"path": "/vmfs/vm\n-flat.vmdk"}, "control characters"),
        ({"known_hosts_file": "%d/known_hosts"}, "absolute path without NUL or '%'"),
        ({"identity_file": "relative/key"}, "absolute path"),
        ({"host": "-oProxyCommand=x"}, "string_pattern_mismatch"),
        ({"user": "root user"}, "string_pattern_mismatch"),
        ({"port": 0}, "greater_than_equal"),
    ],
)
def test_what_a_job_names_is_checked_before_anything_runs(
    change: dict[str, Any], complaint: str
) -> None:
    from pydantic import ValidationError

    from hyper2kvm_worker.protocol import SshSource

    fields = {
        "host": "esxi01",
        "user": "root",
        "path": "/vmfs/volumes/ds/vm/vm-flat.vmdk",
        "identity_file": "/secrets/key",
        "known_hosts_file": "/secrets/known_hosts",
    }
    SshSource.model_validate(fields)
    with pytest.raises(ValidationError) as refused:
        SshSource.model_validate({**fields, **change})
    assert complaint in str(refused.value) or complaint in refused.value.errors()[0]["type"]
