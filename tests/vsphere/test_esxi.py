"""The same client against a simulated standalone ESXi (vcsim -esx): no SSO domain in the
login, its one datacenter is ha-datacenter, and sessions clone as on vCenter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hyper2kvm_operator.vsphere import client, inventory, mapping, sessions
from hyper2kvm_operator.vsphere.inventory import VmRef
from tests.vsphere import vcsim as vcsim_runner


@pytest.fixture(scope="module")
def esxi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.Connection]:
    with vcsim_runner.running(tmp_path_factory.mktemp("esxi"), args=("-esx",)) as sim:
        assert sim.username == "migrator"
        conn = client.connect(sim.url, sim.username, sim.password, thumbprint=sim.thumbprint_sha1)
        yield conn
        client.logout(conn)


def test_about_says_esxi(esxi: client.Connection) -> None:
    about = client.about(esxi)
    assert (about.product, about.api_type, about.is_vcenter) == ("VMware ESXi", "HostAgent", False)


def test_a_vm_on_esxi_is_read_in_ha_datacenter(esxi: client.Connection) -> None:
    vm = inventory.find_vm(esxi, VmRef(name="ha-host_VM0", datacenter="ha-datacenter"))
    [copy] = mapping.copies(inventory.describe(esxi, vm))
    assert (copy.datacenter_path, copy.datastore) == ("ha-datacenter", "LocalDS_0")
    assert copy.path.endswith("-flat.vmdk")


def test_sessions_clone_on_esxi(esxi: client.Connection) -> None:
    session = sessions.clone(esxi)
    assert sessions.keep_alive(esxi, session)
    sessions.terminate(esxi, session)
    assert not sessions.keep_alive(esxi, session)
