"""A MigrationJob reading an ESXi datastore over SSH, end to end: a real OpenSSH server on
the host's cluster address, the worker Pod on a real node with the key and the pinned host
key from a Secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import Cluster
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_operator import (
    TERMINAL,
    convert_disk,
    migration,
    running_operator,
    submit,
    wait_phase,
)
from tests.cluster.test_vsphere_provider import apply, secret
from tests.worker import ssh_server
from tests.worker.images import MiB, make_raw, raw_digest, same_content


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator") / "log") as process:
        yield process


@pytest.fixture(scope="module")
def esxi(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ssh_server.SshServer]:
    """sshd where worker Pods reach it, serving the host's files as ESXi serves /vmfs."""
    with ssh_server.serve(tmp_path_factory.mktemp("sshd"), host=cluster.host_address) as server:
        yield server


def ssh_job(
    cluster: Cluster, name: str, server: ssh_server.SshServer, path: Path, key: str, out: Path
) -> dict[str, Any]:
    ssh = {"host": server.host, "port": server.port, "user": server.user, "path": str(path),
           "secretRef": {"name": key}}  # fmt: skip
    disk = convert_disk({"ssh": ssh}, out, name)
    return migration(name, cluster, [disk], retries=0)


def test_a_flat_extent_over_ssh_converts_and_a_wrong_host_key_is_refused(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    esxi: ssh_server.SshServer,
    tmp_path: Path,
) -> None:
    cluster.require_local()
    datastore = tmp_path / "vmfs" / "volumes" / "ds1" / "web01"
    datastore.mkdir(parents=True)
    raw = make_raw(datastore / "web01-flat.vmdk", 24 * MiB, [(0, MiB), (20 * MiB, 2 * MiB)])
    other = ssh_server.keygen(tmp_path / "other_host_key", "not the server")
    apply(
        cluster,
        secret(namespace, "esxi", {"identity": esxi.identity.read_text(),
                                   "known_hosts": esxi.known_hosts.read_text()}),
        secret(namespace, "esxi-other", {
            "identity": esxi.identity.read_text(),
            "known_hosts": esxi.known_hosts_line(other.with_suffix(".pub")),
        }),
    )  # fmt: skip
    out = tmp_path / "out"
    for name, secret_name in (("good", "esxi"), ("spoofed", "esxi-other")):
        submit(cluster, namespace, ssh_job(cluster, name, esxi, raw, secret_name, out))

    good = wait_phase(cluster, namespace, "good", TERMINAL, timeout=240)
    assert good["phase"] == "Succeeded", (good, operator.log_tail())
    assert same_content(raw, out / "good.qcow2", "raw", "qcow2")
    assert good["disks"][0]["digest"] == raw_digest(raw)
    spoofed = wait_phase(cluster, namespace, "spoofed", TERMINAL, timeout=240)
    assert (spoofed["phase"], spoofed["reason"]) == ("Failed", "UntrustedServer"), spoofed
    assert not (out / "spoofed.qcow2").exists()
