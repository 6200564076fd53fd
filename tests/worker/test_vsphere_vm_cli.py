"""A whole vSphere VM by name: `hyper2kvm-worker convert --vsphere URL --vm NAME -o DIR`.

Against VMware's simulator vcsim (tests/vsphere/vcsim.py): the worker logs in with SOAP,
finds the VM through a ContainerView, reads its disks and their layout with the
PropertyCollector, refuses what it cannot copy faithfully, and reads each disk's flat extent
over `/folder`. vcsim leaves flat extents empty, so the tests write known bytes into them,
where the operator's pyVmomi inventory (tested in tests/vsphere) says they are. The reading
of a reply is also tested alone, on replies recorded from vcsim and shaped as vCenter's.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree
import pytest
from pyVmomi import vim

from hyper2kvm_operator.vsphere import client, inventory, mapping
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.sources import vsphere_inventory, vsphere_session
from hyper2kvm_worker.sources.vsphere_inventory import Vm, VmDisk
from tests import requirements
from tests.vsphere import vms
from tests.vsphere.vcsim import Vcsim, running
from tests.worker.conftest import WORKER, Outcome, assert_one_line_error, leftovers
from tests.worker.images import MiB, make_raw, raw_digest, same_content

pytestmark = pytest.mark.needs(*requirements.WORKER_TOOLS)

PERMANENT = 3


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    with running(tmp_path_factory.mktemp("vcsim"), args=("-vm", "0")) as sim:
        yield sim


@pytest.fixture(scope="module")
def conn(vcsim: Vcsim) -> Iterator[client.Connection]:
    connection = client.connect(
        vcsim.url, vcsim.username, vcsim.password, ca_pem=vcsim.ca_pem.read_text()
    )
    yield connection
    client.logout(connection)


@pytest.fixture(scope="module")
def password(vcsim: Vcsim, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("login") / "password"
    path.write_text(vcsim.password + "\n")
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def convert_vm(vcsim: Vcsim, password: Path, name: str, out: Path, *more: str) -> Outcome:
    argv = [str(WORKER), "convert", "--vsphere", vcsim.url.removesuffix("/sdk"),
            "--user", vcsim.username, "--password-file", str(password),
            "--ca-file", str(vcsim.ca_pem), "--vm", name, "-o", str(out), *more]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


def fill_extents(vcsim: Vcsim, conn: client.Connection, name: str) -> list[Path]:
    """Known bytes in each disk's flat extent (to the disk's capacity); the extents."""
    extents = []
    for seed, copy in enumerate(mapping.copies(inventory.describe(conn, vms.find(conn, name)))):
        size = copy.capacity_bytes
        extent = vcsim.datastores[copy.datastore] / copy.path
        make_raw(extent, size, [(0, MiB), (size // 2, MiB), (size - MiB, MiB)], seed=seed + 7)
        extents.append(extent)
    return extents


def test_every_disk_of_a_vm_becomes_a_file_of_its_own(
    vcsim: Vcsim, conn: client.Connection, password: Path, out: Path
) -> None:
    vms.create(vcsim, "web 01")
    extents = fill_extents(vcsim, conn, "web 01")
    outcome = convert_vm(vcsim, password, "web 01", out, "--json")
    assert outcome.returncode == 0, outcome.stderr
    result = outcome.result()
    assert result["job"] == "web_01"
    expected = [out / "web_01-disk-1.qcow2", out / "web_01-disk-2.qcow2"]
    assert [(d["name"], d["output"]) for d in result["disks"]] == [
        ("disk-1", str(expected[0])),
        ("disk-2", str(expected[1])),
    ]
    for disk, output, extent in zip(result["disks"], expected, extents, strict=True):
        assert disk["verified"] is True
        assert disk["virtual_size"] == extent.stat().st_size
        assert disk["digest"] == raw_digest(extent)
        assert same_content(output, extent, "qcow2", "raw")
    assert leftovers(out) == sorted(p.name for p in expected)
    assert vcsim.password not in outcome.stdout + outcome.stderr


def test_a_vm_in_a_datacenter_given_converts_to_raw_with_a_line_per_disk(
    vcsim: Vcsim, conn: client.Connection, password: Path, out: Path
) -> None:
    vms.create(vcsim, "app02")
    extents = fill_extents(vcsim, conn, "app02")
    outcome = convert_vm(vcsim, password, "app02", out, "--datacenter", "DC0", "--format", "raw")
    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(out / "app02-disk-1.raw"),
        str(out / "app02-disk-2.raw"),
    ]
    assert all(", verified blake3:" in line for line in lines)
    for number, extent in enumerate(extents, 1):
        assert same_content(out / f"app02-disk-{number}.raw", extent, "raw", "raw")


def test_a_missing_vm_is_permanent(vcsim: Vcsim, password: Path, out: Path) -> None:
    outcome = convert_vm(vcsim, password, "nobody", out)
    assert_one_line_error(outcome, PERMANENT, "SourceNotFound")
    assert "no VM named 'nobody'" in outcome.stderr
    elsewhere = convert_vm(vcsim, password, "nobody", out, "--datacenter", "Nowhere")
    assert_one_line_error(elsewhere, PERMANENT, "SourceNotFound")
    assert "no datacenter at inventory path 'Nowhere'" in elsewhere.stderr
    assert leftovers(out) == []


def test_a_wrong_password_is_refused_at_the_login(vcsim: Vcsim, tmp_path: Path, out: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    outcome = convert_vm(vcsim, wrong, "web 01", out)
    assert_one_line_error(outcome, PERMANENT, "AuthenticationFailed")
    assert "login" in outcome.stderr.lower()
    assert "not-the-password" not in outcome.stderr
    assert leftovers(out) == []


def test_a_vm_with_snapshots_is_refused_naming_them(
    vcsim: Vcsim, password: Path, out: Path
) -> None:
    vms.create(vcsim, "snap01")
    vcsim.govc("snapshot.create", "-vm", "snap01", "snap1")
    vcsim.govc("snapshot.create", "-vm", "snap01", "after upgrade")
    outcome = convert_vm(vcsim, password, "snap01", out)
    assert_one_line_error(outcome, PERMANENT, "Unsupported")
    assert "it has snapshots ('snap1', 'after upgrade')" in outcome.stderr
    assert leftovers(out) == []


def test_a_powered_on_vm_is_refused(vcsim: Vcsim, password: Path, out: Path) -> None:
    vms.create(vcsim, "on01", power_on=True)
    outcome = convert_vm(vcsim, password, "on01", out)
    assert_one_line_error(outcome, PERMANENT, "Unsupported")
    assert "it is powered on: power it off first" in outcome.stderr
    assert leftovers(out) == []


def test_disks_that_are_not_plain_files_are_refused_by_label(
    vcsim: Vcsim, conn: client.Connection, password: Path, out: Path
) -> None:
    vms.create(vcsim, "odd01")
    vm = ["-vm", "odd01"]
    controller = vms.pvscsi_controller(vcsim, vm)
    vcsim.govc("vm.disk.create", *vm, "-name", "odd01/scratch", "-size", "8MB",
               "-controller", controller, "-mode", "independent_nonpersistent")  # fmt: skip
    vcsim.govc("vm.disk.create", *vm, "-name", "odd01/cluster", "-size", "8MB",
               "-controller", controller, "-sharing", "sharingMultiWriter")  # fmt: skip
    key = next(c.key for c in inventory.describe(conn, vms.find(conn, "odd01")).controllers
               if c.kind == "pvscsi")  # fmt: skip
    lun = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        deviceName="/vmfs/devices/disks/naa.600508b1001c4d41",
        lunUuid="0200000000600508b1001c4d41",
        compatibilityMode="physicalMode",
        diskMode="independent_persistent",
    )
    vms.reconfigure(conn, vms.find(conn, "odd01"),
                    vms.add_disk(key, 5, "[LocalDS_0] odd01/lun.vmdk", lun))  # fmt: skip
    labels = [line.split()[0] for line in vcsim.govc("device.ls", *vm).splitlines()
              if "VirtualDisk" in line]  # fmt: skip
    assert len(labels) == 5
    outcome = convert_vm(vcsim, password, "odd01", out)
    assert_one_line_error(outcome, PERMANENT, "Unsupported")
    own, scratch, cluster, mapped = labels[0], labels[2], labels[3], labels[4]
    assert f"{scratch}: disk mode independent_nonpersistent" in outcome.stderr
    assert f"{cluster}: shared with other VMs (multi-writer)" in outcome.stderr
    assert f"{mapped}: a raw device mapping" in outcome.stderr
    assert f"{own}: " not in outcome.stderr
    assert leftovers(out) == []


def test_a_name_two_vms_carry_is_ambiguous(vcsim: Vcsim, password: Path, out: Path) -> None:
    for folder in ("a", "b"):
        vcsim.govc("folder.create", f"/DC0/vm/{folder}")
        vcsim.govc("vm.create", "-on=false", "-host", vms.HOST, "-ds", vms.DATASTORE, "-force",
                   "-net", vms.NETWORKS[0], "-disk", "8MB", "-folder", f"/DC0/vm/{folder}",
                   "twin")  # fmt: skip
    outcome = convert_vm(vcsim, password, "twin", out)
    assert_one_line_error(outcome, PERMANENT, "InvalidJob")
    assert "the name 'twin' is ambiguous: 2 VMs carry it" in outcome.stderr
    assert leftovers(out) == []


def test_a_name_vsphere_escapes_is_found_as_written(
    vcsim: Vcsim, password: Path, out: Path
) -> None:
    """vSphere keeps "a/b%c" as "a%2fb%25c"; this VM has no disk, so it is found, then refused."""
    vcsim.govc("vm.create", "-on=false", "-host", vms.HOST, "-ds", vms.DATASTORE,
               "-net", vms.NETWORKS[0], "a/b%c")  # fmt: skip
    outcome = convert_vm(vcsim, password, "a/b%c", out)
    assert_one_line_error(outcome, PERMANENT, "Unsupported")
    assert "VM a/b%c cannot be copied faithfully: it has no virtual disks" in outcome.stderr


def test_the_datacenter_of_a_vm_is_found_inside_its_folders(vcsim: Vcsim, tmp_path: Path) -> None:
    vms.datacenter_in_a_folder(vcsim, tmp_path / "ds9")
    context = vsphere_session.tls_context(str(vcsim.ca_pem), False)
    base = vcsim.url.removesuffix("/sdk")
    session = vsphere_session.login(base, vcsim.username, vcsim.password, context)
    try:
        found = vsphere_inventory.find_vm(session, "app01")
        assert found.datacenter == "Europe/DC9"
        assert [d.extent for d in found.disks] == ["[ds9] app01/app01-flat.vmdk"]
        assert vsphere_inventory.find_vm(session, "app01", "/Europe/DC9/").moref == found.moref
        with pytest.raises(BadInput) as raised:
            vsphere_inventory.find_vm(session, "app01", "DC0")
        assert raised.value.reason is Reason.SOURCE_NOT_FOUND
    finally:
        vsphere_session.logout(session)


def test_usage_errors_say_what_goes_with_vm(vcsim: Vcsim, password: Path, out: Path) -> None:
    with_source = convert_vm(vcsim, password, "web 01", out, "[LocalDS_0] x/x-flat.vmdk")
    assert_one_line_error(with_source, 2, "InvalidJob")
    without_vsphere = subprocess.run(
        [str(WORKER), "convert", "--vm", "web 01", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert without_vsphere.returncode == 2
    assert "--vm needs --vsphere and --output-dir" in without_vsphere.stderr


# ---------------------------------------------------------------------------- replies alone

_XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'


def _reply(props: str) -> ET.Element:
    """A RetrievePropertiesEx reply of vm-42 with `props` (propSet elements), as vCenter
    sends it."""
    text = (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        f'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" {_XSI}><soapenv:Body>'
        '<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects>'
        f'<obj type="VirtualMachine">vm-42</obj>{props}</objects></returnval>'
        "</RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"
    )
    root: ET.Element = defusedxml.ElementTree.fromstring(text)
    return root


def _prop(name: str, value: str, kind: str) -> str:
    return f'<propSet><name>{name}</name><val xsi:type="{kind}">{value}</val></propSet>'


def _disk(key: int, label: str, backing: str, file: str, *extra: str) -> str:
    return (
        f'<VirtualDevice xsi:type="VirtualDisk"><key>{key}</key><deviceInfo><label>{label}'
        f'</label></deviceInfo><backing xsi:type="{backing}"><fileName>{file}</fileName>'
        f"{''.join(extra)}</backing><controllerKey>1000</controllerKey>"
        f"<capacityInKB>8192</capacityInKB><capacityInBytes>{key << 20}</capacityInBytes>"
        "</VirtualDevice>"
    )


def _file(key: int, name: str, kind: str) -> str:
    return (
        f"<VirtualMachineFileLayoutExFileInfo><key>{key}</key><name>{name}</name>"
        f"<type>{kind}</type></VirtualMachineFileLayoutExFileInfo>"
    )


def _layout(key: int, *units: tuple[int, ...]) -> str:
    chains = "".join(
        "<chain>" + "".join(f"<fileKey>{k}</fileKey>" for k in unit) + "</chain>" for unit in units
    )
    kind = "VirtualMachineFileLayoutExDiskLayout"
    return f"<{kind}><key>{key}</key>{chains}</{kind}>"


FLAT = "VirtualDiskFlatVer2BackingInfo"
DEVICES = (
    '<VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key>'
    "<busNumber>0</busNumber><sharedBus>noSharing</sharedBus></VirtualDevice>"
    + _disk(2000, "Hard disk 1", FLAT, "[fast ssd] web01/web01.vmdk",
            "<diskMode>persistent</diskMode>", "<sharing>sharingNone</sharing>")
    + _disk(2001, "Hard disk 2", FLAT, "[fast ssd] web01/web01_1.vmdk",
            "<diskMode>persistent</diskMode>")
)  # fmt: skip
LAYOUT = (
    _prop("layoutEx.disk", _layout(2000, (1, 2)) + _layout(2001, (3, 4)),
          "ArrayOfVirtualMachineFileLayoutExDiskLayout")
    + _prop("layoutEx.file", _file(1, "[fast ssd] web01/web01.vmdk", "diskDescriptor")
            + _file(2, "[fast ssd] web01/web01-flat.vmdk", "diskExtent")
            + _file(3, "[fast ssd] web01/web01_1.vmdk", "diskDescriptor")
            + _file(4, "[slow] moved/elsewhere-flat.vmdk", "diskExtent")
            + _file(5, "[fast ssd] web01/web01.vmx", "config"),
            "ArrayOfVirtualMachineFileLayoutExFileInfo")
)  # fmt: skip


def _vm(devices: str = DEVICES, layout: str = LAYOUT, more: str = "") -> Vm:
    props = vsphere_inventory.property_values(
        _reply(
            _prop("name", "web%2f01%25", "xsd:string")
            + _prop("parent", "group-v3", "ManagedObjectReference").replace(
                "<val ", '<val type="Folder" '
            )
            + _prop("config.hardware.device", devices, "ArrayOfVirtualDevice")
            + _prop("runtime.powerState", "poweredOff", "VirtualMachinePowerState")
            + layout
            + more
        )
    )
    return vsphere_inventory.vm_from_properties("vm-42", props)


def test_a_reply_reads_as_disks_with_the_extents_layout_names() -> None:
    vm = _vm()
    assert (vm.moref, vm.name, vm.power_state, vm.snapshots) == (
        "vm-42",
        "web/01%",
        "poweredOff",
        (),
    )
    assert vm.parent == vsphere_inventory.Ref("Folder", "group-v3")
    assert vm.disks == (
        VmDisk(label="Hard disk 1", capacity_bytes=2000 << 20, backing=FLAT,
               file_name="[fast ssd] web01/web01.vmdk", disk_mode="persistent",
               sharing="sharingNone", bus_sharing="noSharing", encrypted=False, delta=False,
               extent="[fast ssd] web01/web01-flat.vmdk"),
        VmDisk(label="Hard disk 2", capacity_bytes=2001 << 20, backing=FLAT,
               file_name="[fast ssd] web01/web01_1.vmdk", disk_mode="persistent", sharing=None,
               bus_sharing="noSharing", encrypted=False, delta=False,
               extent="[slow] moved/elsewhere-flat.vmdk"),
    )  # fmt: skip
    assert vsphere_inventory.refusals(vm) == []


def test_the_extent_is_that_of_the_last_unit_of_a_chain() -> None:
    layout = LAYOUT.replace(_layout(2001, (3, 4)), _layout(2001, (3, 4), (5, 2)))
    vm = _vm(layout=layout)
    assert vm.disks[1].extent == "[fast ssd] web01/web01-flat.vmdk"
    assert vm.disks[1].delta
    assert vsphere_inventory.refusals(vm) == [
        "Hard disk 2: a delta disk over a parent (a linked clone): consolidate it first"
    ]


def test_a_disk_without_an_extent_is_refused_once_the_layout_is_read() -> None:
    vm = _vm(layout="")
    assert [d.extent for d in vm.disks] == [None, None]
    assert vsphere_inventory.refusals(vm, located=False) == []
    assert vsphere_inventory.refusals(vm) == [
        "Hard disk 1: vSphere names no flat extent file for it",
        "Hard disk 2: vSphere names no flat extent file for it",
    ]


def test_snapshots_are_named_depth_first() -> None:
    tree = (
        "<rootSnapshotList><name>base</name><childSnapshotList><name>one</name>"
        "<childSnapshotList><name>two</name></childSnapshotList></childSnapshotList>"
        "<childSnapshotList><name>other</name></childSnapshotList></rootSnapshotList>"
    )
    vm = _vm(more=_prop("snapshot", tree, "VirtualMachineSnapshotInfo"))
    assert vm.snapshots == ("base", "one", "two", "other")
    assert vsphere_inventory.refusals(vm) == [
        "it has snapshots ('base', 'one', 'two', 'other'): delete or consolidate them first"
    ]


def test_each_kind_of_disk_that_is_not_a_plain_file_is_refused_by_label() -> None:
    devices = DEVICES.replace("noSharing", "physicalSharing") + "".join(
        [
            _disk(2002, "Hard disk 3", "VirtualDiskRawDiskMappingVer1BackingInfo", "[a] x/l.vmdk"),
            _disk(2003, "Hard disk 4", "VirtualDiskSeSparseBackingInfo", "[a] x/s.vmdk"),
            _disk(2004, "Hard disk 5", FLAT, "[a] x/n.vmdk",
                  "<diskMode>independent_nonpersistent</diskMode>"),
            _disk(2005, "Hard disk 6", FLAT, "[a] x/m.vmdk",
                  "<sharing>sharingMultiWriter</sharing>"),
            _disk(2006, "Hard disk 7", FLAT, "[a] x/k.vmdk", "<keyId><keyId>k</keyId></keyId>"),
        ]
    )  # fmt: skip
    found = vsphere_inventory.refusals(_vm(devices=devices))
    for label, why in [
        ("Hard disk 1", "on a controller with SCSI bus sharing (physicalSharing)"),
        ("Hard disk 3", "a raw device mapping"),
        ("Hard disk 4", "its backing is VirtualDiskSeSparseBackingInfo"),
        ("Hard disk 5", "disk mode independent_nonpersistent"),
        ("Hard disk 6", "shared with other VMs (multi-writer)"),
        ("Hard disk 7", "encrypted: decrypt it first"),
    ]:
        assert any(r.startswith(f"{label}: {why}") for r in found), (label, found)


def test_what_a_reply_holds_is_bounded() -> None:
    many = "".join(_disk(3000 + n, f"d{n}", FLAT, f"[a] x/{n}.vmdk") for n in range(65))
    with pytest.raises(BadInput, match="65 disks, over 64"):
        _vm(devices=many)
    long = _disk(2000, "Hard disk 1", FLAT, "[a] " + "x" * 5000 + ".vmdk")
    with pytest.raises(BadInput, match="fileName of more than 4096 characters"):
        _vm(devices=long)
    label = "y" * 2000
    assert (
        _vm(devices=_disk(2000, label, FLAT, "[a] x.vmdk")).disks[0].label == label[:1024] + "..."
    )


def test_a_reply_vcsim_sends_reads_the_same() -> None:
    """vcsim names the XML Schema instance namespace with a prefix of its own."""
    recorded = _reply(
        "<propSet><name>runtime.powerState</name><val xmlns:_XMLSchema-instance="
        '"http://www.w3.org/2001/XMLSchema-instance" _XMLSchema-instance:type='
        '"VirtualMachinePowerState">poweredOn</val></propSet><propSet><name>'
        'config.hardware.device</name><val xmlns:_XMLSchema-instance="http://www.w3.org/2001/'
        'XMLSchema-instance" _XMLSchema-instance:type="ArrayOfVirtualDevice"><VirtualDevice '
        '_XMLSchema-instance:type="VirtualDisk"><key>203</key><deviceInfo _XMLSchema-instance:'
        'type="Description"><label>disk-202-0</label></deviceInfo><backing _XMLSchema-instance:'
        'type="VirtualDiskFlatVer2BackingInfo"><fileName>[LocalDS_0] web01/web01.vmdk</fileName>'
        "<diskMode>persistent</diskMode></backing><capacityInBytes>67108864</capacityInBytes>"
        "</VirtualDevice></val></propSet>"
    )
    vm = vsphere_inventory.vm_from_properties("vm-63", vsphere_inventory.property_values(recorded))
    assert [(d.label, d.backing, d.capacity_bytes) for d in vm.disks] == [
        ("disk-202-0", FLAT, 64 * MiB)
    ]
    assert vsphere_inventory.refusals(vm, located=False) == [
        "it is powered on: power it off first (a guest changes its disks as it runs)"
    ]
