"""vSphere datastore sources: files read over HTTPS from `/folder` with a session cookie.

Against VMware's simulator vcsim (built from govmomi, tests/vsphere/vcsim.py): its SOAP
login is real and it serves its datastores' files with range requests. vcsim does not
check the session cookie on `/folder`, so the expired-session case runs against the
tests' own HTTPS server, which answers 401 to a cookie it does not know, as vCenter does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyper2kvm_worker.errors import WorkerError
from hyper2kvm_worker.sources import vsphere_session
from hyper2kvm_worker.sources.vsphere import datastore_url
from tests import requirements
from tests.vsphere.vcsim import Vcsim, running
from tests.worker.conftest import (
    WORKER,
    Outcome,
    assert_converted,
    assert_one_line_error,
    leftovers,
    run_one_disk_job,
)
from tests.worker.http_server import serve
from tests.worker.images import MiB, make_raw, make_vmfs

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS, "openssl")

PERMANENT, TRANSIENT = 3, 75
DATASTORE = "datastore 1"  # a space, as real datastore names often have


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The directory behind vcsim's datastore DATASTORE."""
    directory = tmp_path_factory.mktemp("datastore")
    yield directory


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[Vcsim]:
    with running(tmp_path_factory.mktemp("vcsim"), args=("-vm", "0")) as sim:
        host = sim.govc("ls", "/DC0/host/DC0_H0").split()[0]
        sim.govc("datastore.create", "-type", "local", "-name", DATASTORE,
                 "-path", str(store), host)  # fmt: skip
        yield sim


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("disk") / "vm.raw"
    return make_raw(raw, 32 * MiB, [(0, MiB), (9 * MiB, 2 * MiB), (31 * MiB, MiB)])


@pytest.fixture
def folder(vcsim: Vcsim, store: Path, disk: Path, tmp_path: Path) -> str:
    """A VM folder in the datastore ('my vm-<test>/'): `vm.vmdk` beside `vm-flat.vmdk`."""
    name = f"my vm-{tmp_path.name}"
    (store / name).mkdir()
    make_vmfs(disk, store / name, "vm")
    return name


@pytest.fixture
def cookie(vcsim: Vcsim, tmp_path: Path) -> Iterator[Path]:
    """A real session of vcsim's, logged out at the end."""
    context = vsphere_session.tls_context(str(vcsim.ca_pem), False)
    session = vsphere_session.login(_base(vcsim), vcsim.username, vcsim.password, context)
    path = tmp_path / "cookie"
    path.write_text(session.cookie + "\n")
    yield path
    vsphere_session.logout(session)


def _base(vcsim: Vcsim) -> str:
    return vcsim.url.removesuffix("/sdk")


def source(vcsim: Vcsim, path: str, cookie: Path, **changes: Any) -> dict[str, Any]:
    return {"kind": "vsphere", "url": _base(vcsim), "datacenter": "DC0", "datastore": DATASTORE,
            "path": path, "cookie_file": str(cookie), "ca_file": str(vcsim.ca_pem),
            **changes}  # fmt: skip


def run_job(tmp_path: Path, disk_source: dict[str, Any], **limits: Any) -> Outcome:
    return run_one_disk_job(tmp_path, disk_source, limits=limits)


def test_datastore_urls_quote_every_part() -> None:
    url = datastore_url("https://vc.example/", "Site A/DC 1", "ds [ssd] #1", "my vm/a b-flat.vmdk")
    assert url == (
        "https://vc.example/folder/my%20vm/a%20b-flat.vmdk"
        "?dcPath=Site%20A%2FDC%201&dsName=ds%20%5Bssd%5D%20%231"
    )


def test_a_flat_extent_converts_and_verifies(
    vcsim: Vcsim, folder: str, cookie: Path, disk: Path, tmp_path: Path
) -> None:
    outcome = run_job(tmp_path, source(vcsim, f"{folder}/vm-flat.vmdk", cookie))
    assert_converted(outcome, tmp_path / "out" / "d.qcow2", disk)


def test_an_extent_of_another_size_than_the_disk_is_refused(
    vcsim: Vcsim, folder: str, cookie: Path, disk: Path, tmp_path: Path
) -> None:
    """A truncated or swapped extent is never converted as if it were the disk."""
    size = disk.stat().st_size
    wrong = source(vcsim, f"{folder}/vm-flat.vmdk", cookie, size=size + MiB)
    outcome = run_job(tmp_path, wrong)
    assert_one_line_error(outcome, PERMANENT, "InvalidImage")
    assert f"is {size} bytes; vSphere describes the disk as {size + MiB} bytes" in outcome.stderr
    right = run_job(tmp_path / "right", source(vcsim, f"{folder}/vm-flat.vmdk", cookie, size=size))
    assert_converted(right, tmp_path / "right" / "out" / "d.qcow2", disk)


def test_a_descriptor_is_followed_to_its_flat_extent(
    vcsim: Vcsim, folder: str, cookie: Path, disk: Path, tmp_path: Path
) -> None:
    outcome = run_job(tmp_path, source(vcsim, f"{folder}/vm.vmdk", cookie))
    assert_converted(outcome, tmp_path / "out" / "d.qcow2", disk)


def test_the_command_line_logs_in_converts_and_logs_out(
    vcsim: Vcsim, folder: str, disk: Path, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(vcsim.password + "\n")
    out = tmp_path / "d.qcow2"
    argv = [str(WORKER), "convert", "--vsphere", _base(vcsim), "--user", vcsim.username,
            "--password-file", str(password), "--datacenter", "DC0",
            "--ca-file", str(vcsim.ca_pem), f"[{DATASTORE}] {folder}/vm-flat.vmdk", str(out),
            "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    outcome = Outcome(done.returncode, done.stdout, done.stderr)
    assert_converted(outcome, out, disk)
    assert vcsim.password not in done.stdout + done.stderr
    assert not list(Path(tempfile.gettempdir()).glob("hyper2kvm-session-*"))  # removed too


def test_logging_out_ends_the_session(vcsim: Vcsim) -> None:
    context = vsphere_session.tls_context(str(vcsim.ca_pem), False)
    session = vsphere_session.login(_base(vcsim), vcsim.username, vcsim.password, context)
    clock = (
        '<CurrentTime xmlns="urn:vim25">'
        '<_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>'
    )
    vsphere_session._call(session.url, clock, context, cookie=session.cookie)  # a live session
    vsphere_session.logout(session)
    with pytest.raises(WorkerError):
        vsphere_session._call(session.url, clock, context, cookie=session.cookie)


def test_a_wrong_password_is_refused(vcsim: Vcsim, folder: str, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("not-the-password\n")
    argv = [str(WORKER), "convert", "--vsphere", _base(vcsim), "--user", vcsim.username,
            "--password-file", str(password), "--datacenter", "DC0", "--ca-file",
            str(vcsim.ca_pem), f"[{DATASTORE}] {folder}/vm-flat.vmdk",
            str(tmp_path / "d.qcow2")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert_one_line_error(Outcome(done.returncode, done.stdout, done.stderr), PERMANENT,
                          "AuthenticationFailed")  # fmt: skip
    assert "not-the-password" not in done.stderr
    assert not (tmp_path / "d.qcow2").exists()


def test_a_certificate_from_another_ca_is_refused(
    vcsim: Vcsim, folder: str, cookie: Path, tmp_path: Path
) -> None:
    stranger = _self_signed(tmp_path, "someone else")
    disk_source = source(vcsim, f"{folder}/vm-flat.vmdk", cookie, ca_file=str(stranger[0]))
    outcome = run_job(tmp_path, disk_source)
    assert_one_line_error(outcome, PERMANENT, "UntrustedServer")
    assert leftovers(tmp_path / "out") == []


def test_a_host_on_a_denied_network_is_refused(
    vcsim: Vcsim, folder: str, cookie: Path, tmp_path: Path
) -> None:
    disk_source = source(vcsim, f"{folder}/vm-flat.vmdk", cookie)
    outcome = run_job(tmp_path, disk_source, http_allow=["0.0.0.0/0"], http_deny=["127.0.0.0/8"])
    assert_one_line_error(outcome, PERMANENT, "PolicyViolation")
    assert "127.0.0.1" in outcome.stderr
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("held", ["vmware_soap_session=expired", ""])
def test_an_expired_or_missing_session_is_transient(held: str, disk: Path, tmp_path: Path) -> None:
    """The stand-in for vCenter's check of the cookie (vcsim makes none on /folder)."""
    www = tmp_path / "www" / "folder" / "vm"
    www.mkdir(parents=True)
    shutil.copy(disk, www / "vm-flat.vmdk")
    cert, key = _self_signed(tmp_path, "127.0.0.1")
    cookie = tmp_path / "cookie"
    cookie.write_text(held + "\n")
    with serve(tmp_path / "www", tls=(cert, key), cookie='vmware_soap_session="current"') as url:
        disk_source = {"kind": "vsphere", "url": url, "datacenter": "DC0", "datastore": "ds",
                       "path": "vm/vm-flat.vmdk", "cookie_file": str(cookie),
                       "ca_file": str(cert)}  # fmt: skip
        refused = run_job(tmp_path / "refused", disk_source)
        cookie.write_text('vmware_soap_session="current"\n')
        # The right cookie is let in; and `insecure`, said explicitly, trusts any certificate.
        trusting = {**disk_source, "ca_file": None, "insecure": True}
        accepted = run_job(tmp_path / "accepted", trusting)
    assert_one_line_error(refused, TRANSIENT, "SessionExpired")
    assert leftovers(tmp_path / "refused" / "out") == []
    assert_converted(accepted, tmp_path / "accepted" / "out" / "d.qcow2", disk)


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
