"""Worker sessions against vcsim: cloned from the operator's, good for the datastore's
/folder URL, kept alive, and ended from the operator's own session."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hyper2kvm_operator.vsphere import client, inventory, mapping, sessions
from tests.vsphere import vms
from tests.vsphere.vcsim import Vcsim

PATTERN = bytes(range(256)) * 4096  # 1 MiB that says where each byte is


@pytest.fixture(scope="module")
def copy(vcsim: Vcsim, conn: client.Connection) -> mapping.DiskCopy:
    """web01's first disk, with known bytes written into its flat extent."""
    vms.create(vcsim, "web01")
    facts = inventory.describe(conn, vms.find(conn, "web01"))
    first = mapping.copies(facts)[0]
    extent = vcsim.datastores[first.datastore] / first.path
    with extent.open("r+b") as f:
        f.write(PATTERN)
        f.truncate(first.capacity_bytes)
    return first


def _get_range(vcsim: Vcsim, copy: mapping.DiskCopy, cookie: str, start: int, end: int) -> Any:
    url = mapping.folder_url(f"{vcsim.host}:{vcsim.port}", copy)
    request = urllib.request.Request(
        url, headers={"Cookie": cookie, "Range": f"bytes={start}-{end}"}
    )
    tls = ssl.create_default_context(cafile=str(vcsim.ca_pem))
    return urllib.request.urlopen(request, context=tls, timeout=10)


def test_a_cloned_session_reads_a_range_of_the_flat_extent(
    vcsim: Vcsim, conn: client.Connection, copy: mapping.DiskCopy
) -> None:
    session = sessions.clone(conn)
    try:
        with _get_range(vcsim, copy, session.cookie_header, 4096, 8191) as response:
            assert response.status == 206
            assert response.read() == PATTERN[4096:8192]
    finally:
        sessions.terminate(conn, session)


def test_a_cloned_session_is_its_own_and_ends_when_terminated(
    vcsim: Vcsim, conn: client.Connection
) -> None:
    first, second = sessions.clone(conn), sessions.clone(conn)
    assert first.key != second.key and first.cookie != second.cookie
    assert first.user == second.user == vcsim.username  # the operator's user
    assert sessions.keep_alive(conn, first) and sessions.keep_alive(conn, second)
    sessions.terminate(conn, first)
    assert not sessions.keep_alive(conn, first)
    assert sessions.keep_alive(conn, second)  # the other attempt's session lives on
    sessions.terminate(conn, first)  # ending it twice is fine
    sessions.terminate(conn, second)
    assert not sessions.keep_alive(conn, second)
    # The operator's own session is untouched.
    sessions.terminate(conn, sessions.clone(conn))


def test_the_cookie_and_key_are_kept_out_of_the_repr(conn: client.Connection) -> None:
    session = sessions.clone(conn)
    try:
        assert session.cookie not in repr(session) and session.key not in repr(session)
        assert session.cookie_header == f'vmware_soap_session="{session.cookie}"'
    finally:
        sessions.terminate(conn, session)


def test_the_folder_url_of_a_datacenter_inside_a_folder(
    vcsim: Vcsim, conn: client.Connection, tmp_path: Path
) -> None:
    vms.datacenter_in_a_folder(vcsim, tmp_path / "ds9")
    vm = inventory.find_vm(conn, inventory.VmRef(name="app01", datacenter="Europe/DC9"))
    assert (
        inventory.find_vm(conn, inventory.VmRef(name="app01", datacenter="DC9"))._moId == vm._moId
    )
    [copy] = mapping.copies(inventory.describe(conn, vm))
    assert (copy.datacenter_path, copy.datastore, copy.host) == (
        "Europe/DC9",
        "ds9",
        "esx9.example.com",
    )
    (tmp_path / "ds9" / copy.path).write_bytes(PATTERN[:65536])
    session = sessions.clone(conn)
    try:
        with _get_range(vcsim, copy, session.cookie_header, 0, 511) as response:
            assert response.status == 206 and response.read() == PATTERN[:512]
    finally:
        sessions.terminate(conn, session)
