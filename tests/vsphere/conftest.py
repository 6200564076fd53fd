"""One vcsim per test module (it starts in well under a second), and a logged-in
connection to it; tests that change a VM make a VM of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hyper2kvm_operator.vsphere import client
from tests.vsphere import vcsim as vcsim_runner


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vcsim_runner.Vcsim]:
    with vcsim_runner.running(tmp_path_factory.mktemp("vcsim")) as sim:
        yield sim


@pytest.fixture(scope="module")
def conn(vcsim: vcsim_runner.Vcsim) -> Iterator[client.Connection]:
    connection = client.connect(
        vcsim.url, vcsim.username, vcsim.password, ca_pem=vcsim.ca_pem.read_text()
    )
    yield connection
    client.logout(connection)
