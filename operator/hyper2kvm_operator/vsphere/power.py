"""Stopping the source VM before its disks are read, and saying how and when it stopped.

`shutdown` asks the guest to shut down (VMware Tools) and waits up to a grace period for the
VM to be off, then powers it off; `force` powers it off at once. Nothing else about the VM
is changed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hyper2kvm_operator.vsphere import properties
from hyper2kvm_operator.vsphere.client import Connection, call
from hyper2kvm_operator.vsphere.errors import Reason, VSphereError

POWERED_OFF = "poweredOff"


class StopMode(enum.StrEnum):
    SHUTDOWN = "shutdown"
    FORCE = "force"


class How(enum.StrEnum):
    ALREADY_OFF = "AlreadyOff"
    GUEST_SHUTDOWN = "GuestShutdown"
    POWER_OFF = "PowerOff"


@dataclass(frozen=True)
class Stopped:
    how: How
    at: datetime  # when the operator saw it off
    note: str | None = None  # why a shutdown ended as a power-off


@dataclass(frozen=True)
class Clock:
    """Time, injectable: tests need not wait for real grace periods."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


def power_state(conn: Connection, vm: Any) -> str:
    props = properties.read(conn, vm, ["runtime.powerState"], f"read the power state of {vm._moId}")
    return str(props.get("runtime.powerState", ""))


def stop(
    conn: Connection,
    vm: Any,
    mode: StopMode,
    *,
    grace: float = 300.0,
    task_timeout: float = 300.0,
    poll: float = 1.0,
    clock: Clock | None = None,
) -> Stopped:
    """Stop `vm` as `mode` says; returns once it is powered off."""
    clock = clock or Clock()
    where = f"stop VM {vm._moId}"
    state = power_state(conn, vm)
    if state == POWERED_OFF:
        return Stopped(How.ALREADY_OFF, clock.now())
    note = None
    if mode is StopMode.SHUTDOWN:
        try:
            call(where, vm.ShutdownGuest)
        except VSphereError as exc:
            if exc.transient:
                raise
            note = f"the guest could not be asked to shut down ({exc.message})"
        else:
            if _wait_off(conn, vm, grace, poll, clock):
                return Stopped(How.GUEST_SHUTDOWN, clock.now())
            note = f"the guest did not shut down within {grace:.0f}s"
    try:
        task = call(where, vm.PowerOffVM_Task, attempts=1)
        wait_task(conn, task, task_timeout, poll, clock, where)
    except VSphereError:
        # Off by itself in the meantime (a late guest shutdown): that is what was wanted.
        if power_state(conn, vm) != POWERED_OFF:
            raise
    return Stopped(How.POWER_OFF, clock.now(), note)


def wait_task(
    conn: Connection, task: Any, timeout: float, poll: float, clock: Clock, where: str
) -> Any:
    """The task's result once it succeeded; VSphereError TaskFailed or Timeout otherwise."""
    deadline = clock.monotonic() + timeout
    while True:
        info = properties.read(conn, task, ["info.state", "info.error", "info.result"], where)
        state = str(info.get("info.state", ""))
        if state == "success":
            return info.get("info.result")
        if state == "error":
            error = info.get("info.error")
            fault = getattr(error, "fault", None)
            name = type(fault).__name__.rsplit(".", 1)[-1] if fault is not None else "fault"
            text = getattr(error, "localizedMessage", None) or ""
            raise VSphereError(Reason.TASK_FAILED, f"{where}: {name} {text}".rstrip())
        if clock.monotonic() > deadline:
            raise VSphereError(Reason.TIMEOUT, f"{where}: the task did not end in {timeout:.0f}s")
        clock.sleep(poll)


def _wait_off(conn: Connection, vm: Any, grace: float, poll: float, clock: Clock) -> bool:
    deadline = clock.monotonic() + grace
    while True:
        if power_state(conn, vm) == POWERED_OFF:
            return True
        if clock.monotonic() > deadline:
            return False
        clock.sleep(poll)
