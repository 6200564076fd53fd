"""Stopping a source VM in vcsim: a forced power-off, a guest shutdown, and a shutdown the
guest does not finish within its grace period."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hyper2kvm_operator.vsphere import client, inventory, power
from hyper2kvm_operator.vsphere.power import How, StopMode
from tests.vsphere import vcsim as vcsim_runner
from tests.vsphere import vms
from tests.vsphere.vcsim import Vcsim


class FakeTime:
    """A clock whose sleeps pass at once: grace periods elapse without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> power.Clock:
        return power.Clock(
            monotonic=lambda: self.now,
            sleep=self.sleep,
            now=lambda: datetime(2030, 1, 1, tzinfo=UTC),
        )


def _running_vm(vcsim: Vcsim, conn: client.Connection, name: str) -> object:
    vms.create(vcsim, name, power_on=True)
    vm = vms.find(conn, name)
    assert vms.power_state(conn, vm) == "poweredOn"
    return vm


def test_force_powers_off_a_running_vm(vcsim: Vcsim, conn: client.Connection) -> None:
    vm = _running_vm(vcsim, conn, "run01")
    before = datetime.now(UTC)
    stopped = power.stop(conn, vm, StopMode.FORCE, poll=0.05)
    assert stopped.how is How.POWER_OFF and stopped.note is None
    assert stopped.at >= before
    assert vms.power_state(conn, vm) == "poweredOff"


def test_shutdown_asks_the_guest(vcsim: Vcsim, conn: client.Connection) -> None:
    vm = _running_vm(vcsim, conn, "run02")
    stopped = power.stop(conn, vm, StopMode.SHUTDOWN, grace=60, poll=0.05)
    assert stopped.how is How.GUEST_SHUTDOWN
    assert vms.power_state(conn, vm) == "poweredOff"


@pytest.mark.parametrize("mode", list(StopMode))
def test_a_vm_already_off_is_left_alone(
    vcsim: Vcsim, conn: client.Connection, mode: StopMode
) -> None:
    vms.create(vcsim, f"off-{mode}")
    vm = vms.find(conn, f"off-{mode}")
    assert power.stop(conn, vm, mode).how is How.ALREADY_OFF


def test_nothing_but_the_power_state_changes(vcsim: Vcsim, conn: client.Connection) -> None:
    vm = _running_vm(vcsim, conn, "run03")
    before = inventory.describe(conn, vm)
    power.stop(conn, vm, StopMode.FORCE, poll=0.05)
    after = inventory.describe(conn, vm)
    assert after.power_state == "poweredOff"
    assert dataclasses.replace(after, power_state=before.power_state) == before


@pytest.fixture(scope="module")
def slow_guest(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Vcsim, client.Connection]]:
    """A vcsim whose guests shut down 3 s after they are asked (vcsim delays the method and
    its task alike; the task's delay runs without holding the VM's lock, so that the VM can
    be read and powered off meanwhile)."""
    workdir: Path = tmp_path_factory.mktemp("slow-vcsim")
    delay = ("-method-delay", "ShutdownGuest:3000,LockHandoff:0")
    with vcsim_runner.running(workdir, args=delay) as sim:
        conn = client.connect(sim.url, sim.username, sim.password, ca_pem=sim.ca_pem.read_text())
        yield sim, conn
        client.logout(conn)


def test_a_shutdown_past_its_grace_ends_in_a_power_off(
    slow_guest: tuple[Vcsim, client.Connection],
) -> None:
    sim, conn = slow_guest
    vm = _running_vm(sim, conn, "stubborn")
    fake = FakeTime()
    stopped = power.stop(conn, vm, StopMode.SHUTDOWN, grace=120, poll=10, clock=fake.clock())
    assert stopped.how is How.POWER_OFF
    assert stopped.note == "the guest did not shut down within 120s"
    assert fake.now > 120  # it waited out the grace period, on the fake clock
    assert vms.power_state(conn, vm) == "poweredOff"
