"""Making VMs in vcsim for the tests: with govc where it has a flag for the thing, with
pyVmomi's ReconfigVM where it has none (raw device mappings, encrypted disks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyVmomi import vim

from hyper2kvm_operator.vsphere import client, inventory, mapping, power, properties
from tests.vsphere.vcsim import Vcsim

HOST = "DC0_H0"  # vcsim's standalone host
DATASTORE = "LocalDS_0"
NETWORKS = ("VM Network", "DC0_DVPG0")  # a standard network and a distributed port group
MACS = ("00:50:56:aa:bb:01", "00:50:56:aa:bb:02")
DISKS_MB = (64, 32)


def create(sim: Vcsim, name: str, *, power_on: bool = False, folder: str | None = None) -> None:
    """An EFI VM with secure boot, 4 CPUs, 2 GiB, two NICs with fixed MACs, a pvscsi
    controller and two disks (64 and 32 MiB)."""
    sim.govc(
        "vm.create", "-on=false", "-c", "4", "-m", "2048", "-g", "ubuntu64Guest",
        "-firmware", "efi", "-net", NETWORKS[0], "-net.adapter", "vmxnet3",
        "-net.address", MACS[0], "-disk", f"{DISKS_MB[0]}MB", "-disk.controller", "pvscsi",
        "-host", HOST, "-ds", DATASTORE, *(("-folder", folder) if folder else ()), name,
    )  # fmt: skip
    vm = ["-vm", f"{folder}/{name}" if folder else name]
    sim.govc("device.boot", *vm, "-firmware", "efi", "-secure")
    sim.govc("vm.network.add", *vm, "-net", NETWORKS[1], "-net.adapter", "e1000e",
             "-net.address", MACS[1])  # fmt: skip
    controller = pvscsi_controller(sim, vm)
    sim.govc("vm.disk.create", *vm, "-name", f"{name}/data", "-size", f"{DISKS_MB[1]}MB",
             "-controller", controller)  # fmt: skip
    if power_on:
        sim.govc("vm.power", "-on", *vm[1:])


def pvscsi_controller(sim: Vcsim, vm: list[str]) -> str:
    for line in sim.govc("device.ls", *vm).splitlines():
        if "ParaVirtualSCSIController" in line:
            return line.split()[0]
    raise AssertionError("the VM has no pvscsi controller")


def datastore_file(sim: Vcsim, datastore_path: str) -> Path:
    """Where "[ds] dir/file" is on this machine."""
    datastore, path = mapping.split_datastore_path(datastore_path)
    return sim.datastores[datastore] / path


def reconfigure(conn: client.Connection, vm: Any, *changes: Any) -> None:
    spec = vim.vm.ConfigSpec(deviceChange=list(changes))
    task = client.call("reconfigure", vm.ReconfigVM_Task, spec, attempts=1)
    power.wait_task(conn, task, 30, 0.1, power.Clock(), "reconfigure")


def add_disk(
    vm_facts_controller: int, unit: int, file_name: str, backing: Any, size_mb: int = 8
) -> Any:
    """A device change that adds a new disk with `backing` (whose file vSphere creates)."""
    backing.fileName = file_name
    disk = vim.vm.device.VirtualDisk(
        key=-100 - unit,
        controllerKey=vm_facts_controller,
        unitNumber=unit,
        capacityInKB=size_mb * 1024,
        backing=backing,
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)


def find(conn: client.Connection, name: str) -> Any:
    return inventory.find_vm(conn, inventory.VmRef(name=name))


def power_state_by_name(sim: Vcsim, name: str) -> str:
    found = json.loads(sim.govc("vm.info", "-json", name))
    machines = found.get("virtualMachines") or found.get("VirtualMachines") or []
    return str(machines[0]["runtime"]["powerState"])


def power_state(conn: client.Connection, vm: Any) -> str:
    return str(properties.read(conn, vm, ["runtime.powerState"], "test")["runtime.powerState"])


def datacenter_in_a_folder(sim: Vcsim, store: Path) -> None:
    """/Europe/DC9: a datacenter inside a folder, with a host, a datastore in `store` and a
    VM "app01" with one 8 MiB disk."""
    dc = ("-dc", "/Europe/DC9")
    sim.govc("folder.create", "/Europe")
    sim.govc("datacenter.create", "-folder", "/Europe", "DC9")
    sim.govc("host.add", *dc, "-hostname", "esx9.example.com", "-username", "root",
             "-password", "unused", "-noverify")  # fmt: skip
    store.mkdir(parents=True, exist_ok=True)
    sim.govc("datastore.create", *dc, "-type", "local", "-name", "ds9", "-path", str(store),
             "esx9.example.com")  # fmt: skip
    sim.govc("vm.create", *dc, "-on=false", "-host", "esx9.example.com", "-ds", "ds9",
             "-net", NETWORKS[0], "-disk", "8MB", "app01")  # fmt: skip
