"""offline_fix against a real Debian guest with VMware-style problems (tests/guest).

The guest is built once and cached (see tests/guest/build_guest.py). libguestfs runs
with KVM when the worker finds it usable and with TCG otherwise; the checks read the
fixed image from outside with guestfish and, in the slow test, boot it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import psutil
import pytest

from hyper2kvm_worker import hardware, kubevirt, libguestfs
from tests import requirements
from tests.guest import build_guest
from tests.worker.conftest import WORKER, Outcome, assert_one_line_error, leftovers
from tests.worker.images import MiB, run

pytestmark = pytest.mark.needs(
    *requirements.WORKER_TOOLS,
    "guestfish",
    "kernel",
    "qemu-system-x86_64",
    "debootstrap",
    "cryptsetup",
    "mkfs.ext4",
    "setpriv",
)

MARKER = "HYPER2KVM-FIRSTBOOT-OK"
# allow-hotplug interfaces come up after network-online.target: wait for eth0's address.
FIRSTBOOT = f"""#!/bin/sh
for _ in $(seq 120); do ip -4 -o addr show dev eth0 | grep -q inet && break; sleep 1; done
{{ echo "{MARKER}"; ip -4 -o addr show; }} > /dev/ttyS0 2>&1
"""
ALL_FIXES = (
    "fstab",
    "crypttab",
    "resume",
    "network",
    "vmware_tools",
    "grub",
    "initramfs",
    "firstboot",
    "cloud_init",
)


@functools.cache
def kvm_works() -> bool:
    """The worker's own probe, once per session (it boots a kernel: up to 5 s)."""
    return libguestfs.kvm_works()


def _guest_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_CACHEDIR", os.environ.get("TMPDIR", "/var/tmp"))
    if not kvm_works():
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


@pytest.fixture(scope="session")
def guest_vmdk() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the Debian test guest needs root (debootstrap, chroot)")
    return build_guest.build()


def worker_run(job: dict[str, Any], directory: Path) -> Outcome:
    job_file = directory / f"{job['name']}.json"
    job_file.write_text(json.dumps(job))
    done = subprocess.run(
        [str(WORKER), "run", "--job", str(job_file), "--no-listen"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def fix_job(
    name: str, source: Path, output: Path | None, fix: dict[str, Any] | None = None
) -> dict[str, Any]:
    disk: dict[str, Any] = {
        "name": "system",
        "source": {"kind": "file", "root": str(source.parent), "path": source.name},
    }
    if output is not None:
        disk["output"] = {"root": str(output.parent), "path": output.name}
    return {"name": name, "operation": "offline_fix", "disks": [disk], "fix": fix or {}}


def file_digest(path: Path) -> str:
    hasher = blake3.blake3()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def content_digest(image: Path, scratch: Path) -> str:
    raw = scratch / f"{image.name}.raw"
    run("qemu-img", "convert", "-O", "raw", image, raw)
    try:
        return f"blake3:{file_digest(raw)}"
    finally:
        raw.unlink()


def read_guest(image: Path, commands: list[str]) -> list[str]:
    """Each command's output, from one read-only guestfish session over the image."""
    script = []
    for index, command in enumerate(commands):
        script += [f"echo ==={index}===", command]
    done = subprocess.run(
        ["guestfish", "--ro", "-a", str(image), "-i"],
        input="\n".join(script) + "\n",
        capture_output=True,
        text=True,
        env=_guest_env(),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    parts = done.stdout.split("===")
    return [parts[2 * index + 2].strip("\n") for index in range(len(commands))]


def fix_events(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {
        event["fix"]: event
        for event in outcome.events()
        if event["type"] == "fix" and "fix" in event
    }


@dataclass(frozen=True)
class FixedGuest:
    source: Path
    source_digest_before: str
    output: Path
    outcome: Outcome
    workdir: Path


@pytest.fixture(scope="module")
def fixed(guest_vmdk: Path, tmp_path_factory: pytest.TempPathFactory) -> FixedGuest:
    """One real offline_fix run of the planted guest, shared by the checks below."""
    workdir = tmp_path_factory.mktemp("fixed")
    before = file_digest(guest_vmdk)
    output = workdir / "out" / "system.qcow2"
    output.parent.mkdir()
    outcome = worker_run(
        fix_job("fix-debian", guest_vmdk, output, {"firstboot_script": FIRSTBOOT}), workdir
    )
    return FixedGuest(guest_vmdk, before, output, outcome, workdir)


def test_every_problem_is_fixed_and_reported(fixed: FixedGuest) -> None:
    assert fixed.outcome.returncode == 0, fixed.outcome.stderr
    result = fixed.outcome.result()
    assert result["state"] == "succeeded"
    (disk,) = result["disks"]
    assert disk["fixes"] == {
        "fstab": "applied",
        "crypttab": "not_needed",
        "resume": "applied",
        "network": "applied",
        "vmware_tools": "applied",
        "grub": "applied",
        "initramfs": "applied",
        "firstboot": "applied",
        "cloud_init": "not_needed",
    }
    inspection = disk["inspection"]
    assert inspection["os"] == "linux" and inspection["distro"] == "debian"
    assert inspection["version"].startswith("12.")
    assert (inspection["boot"], inspection["bootloader"], inspection["init"]) == (
        "bios",
        "grub2",
        "systemd",
    )
    assert inspection["network"] == "ifupdown" and inspection["vmware_tools"] is True
    report = next(e for e in fixed.outcome.events() if e["type"] == "report" and "fixes" in e)
    guest = report["guest"]
    assert guest["kernels"] and guest["kernels"][0].endswith("-amd64")
    assert guest["initramfs_tool"] == "initramfs-tools"
    assert guest["vmware_tools"] == ["open-vm-tools"]
    assert [entry["fix"] for entry in report["fixes"]] == list(ALL_FIXES)


def test_events_say_which_accelerator_and_follow_every_step(fixed: FixedGuest) -> None:
    events = fixed.outcome.events()
    (appliance,) = [e for e in events if e["type"] == "fix" and e["step"] == "appliance"]
    assert appliance["accelerator"] == ("kvm" if kvm_works() else "tcg")
    assert appliance["why"]
    started = [e["step"] for e in events if e["type"] == "fix" and e.get("status") == "started"]
    assert started == ["inspect", "plan", *ALL_FIXES]
    phases = {
        disk["phase"] for event in events if event["type"] == "progress" for disk in event["disks"]
    }
    assert {"fixing", "done"} <= phases
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states[0] == "validating" and states[-1] == "succeeded"


def test_source_is_untouched_and_the_digest_is_the_fixed_output(fixed: FixedGuest) -> None:
    assert fixed.outcome.returncode == 0, fixed.outcome.stderr
    assert file_digest(fixed.source) == fixed.source_digest_before
    (disk,) = fixed.outcome.result()["disks"]
    assert disk["output"] == str(fixed.output)
    assert leftovers(fixed.output.parent) == ["system.qcow2"]
    assert disk["digest"] == content_digest(fixed.output, fixed.workdir)
    assert disk["digest"] != content_digest(fixed.source, fixed.workdir)


def test_fixed_image_checked_from_outside(fixed: FixedGuest) -> None:
    assert fixed.outcome.returncode == 0, fixed.outcome.stderr
    (
        fstab,
        fstab_backup,
        resume,
        grub_default,
        grub_cfg,
        interfaces,
        udev_rules,
        wants,
        mask,
        modules,
        initramfs,
        firstboot_link,
    ) = read_guest(
        fixed.output,
        [
            "cat /etc/fstab",
            "cat /etc/fstab.hyper2kvm.bak",
            "cat /etc/initramfs-tools/conf.d/resume",
            "cat /etc/default/grub",
            "cat /boot/grub/grub.cfg",
            "cat /etc/network/interfaces",
            "cat /etc/udev/rules.d/70-persistent-net.rules",
            "ls /etc/systemd/system/multi-user.target.wants",
            "readlink /etc/systemd/system/open-vm-tools.service",
            "cat /etc/initramfs-tools/modules",
            "sh 'lsinitramfs /boot/initrd.img-*'",
            "readlink /etc/systemd/system/multi-user.target.wants/hyper2kvm-firstboot.service",
        ],
    )
    entries = [line.split() for line in fstab.splitlines() if line and not line.startswith("#")]
    assert [entry[0].split("=")[0] for entry in entries] == ["UUID", "UUID"]
    assert "/dev/sda1" in fstab_backup and "/dev/sda2" in fstab_backup
    assert resume.strip().startswith("RESUME=UUID=")
    assert "GRUB_DISABLE_LINUX_UUID=false" in grub_default and "net.ifnames=0" in grub_default
    kernel_lines = [
        line.split() for line in grub_cfg.splitlines() if line.strip().startswith("linux")
    ]
    assert kernel_lines
    for words in kernel_lines:
        assert any(word.startswith("root=UUID=") for word in words), words
        assert any(word.startswith("resume=UUID=") for word in words), words
        assert "net.ifnames=0" in words
        assert not any("/dev/sd" in word for word in words)
    assert "ens192" not in interfaces and "hwaddress" not in interfaces
    assert "iface eth0 inet static" in interfaces
    assert f"address {build_guest.STATIC_ADDRESS}" in interfaces
    assert build_guest.VMWARE_MAC not in udev_rules
    assert "open-vm-tools.service" not in wants.split()
    assert mask.strip() == "/dev/null"
    for module in ("virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci"):
        assert module in modules.split()
        assert f"/{module}.ko" in initramfs, module
    assert firstboot_link.strip() == "/etc/systemd/system/hyper2kvm-firstboot.service"


def test_a_second_run_changes_nothing(fixed: FixedGuest, fixed_vmdk: Path) -> None:
    output = fixed.workdir / "again" / "refixed.qcow2"
    output.parent.mkdir()
    outcome = worker_run(
        fix_job("fix-again", fixed_vmdk, output, {"firstboot_script": FIRSTBOOT}), fixed.workdir
    )
    assert outcome.returncode == 0, outcome.stderr
    (disk,) = outcome.result()["disks"]
    assert set(disk["fixes"].values()) == {"not_needed"}, disk["fixes"]
    # Nothing needed, so nothing was mounted writable: the content is bit for bit the same.
    assert disk["digest"] == fixed.outcome.result()["disks"][0]["digest"]


def unprivileged() -> list[str]:
    """As root, run the worker as nobody with no capabilities: offline_fix needs none."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    return [
        *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        *("--inh-caps=-all", "--bounding-set=-all"),
    ]


def test_dry_run_reports_and_writes_nothing_unprivileged(guest_vmdk: Path) -> None:
    as_nobody = unprivileged()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="hyper2kvm-test-") as directory:
        work = Path(directory)
        work.chmod(0o755)
        source = work / "guest.vmdk"
        shutil.copyfile(guest_vmdk, source)
        source.chmod(0o444)
        scratch = work / "tmp"
        scratch.mkdir()
        if as_nobody:
            os.chown(scratch, 65534, 65534)
        before = file_digest(source)
        done = subprocess.run(
            [*as_nobody, WORKER, "fix", source, "--dry-run", "--remove-vmware-tools", "--json"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            # The appliance cache stays where libguestfs keeps it, outside the scratch.
            env={**os.environ, "LIBGUESTFS_CACHEDIR": "/var/tmp", "TMPDIR": str(scratch)},
        )
        outcome = Outcome(done.returncode, done.stdout, done.stderr)
        assert outcome.returncode == 0, outcome.stderr
        (disk,) = outcome.result()["disks"]
        assert "output" not in disk and "digest" not in disk
        needed = {"fstab", "resume", "network", "vmware_tools", "grub", "initramfs"}
        assert {name for name, status in disk["fixes"].items() if status == "would_apply"} == (
            needed
        )
        details = fix_events(outcome)
        assert any("/dev/sda1 -> UUID=" in line for line in details["fstab"]["details"])
        assert any("lacks virtio_blk" in line for line in details["initramfs"]["details"])
        assert any("dpkg --purge open-vm-tools" in x for x in details["vmware_tools"]["details"])
        assert file_digest(source) == before
        assert leftovers(scratch) == []  # the overlay went with its scratch directory
        assert sorted(path.name for path in work.iterdir()) == ["guest.vmdk", "tmp"]
        if as_nobody:
            (appliance,) = [e for e in outcome.events() if e.get("step") == "appliance"]
            assert appliance["accelerator"] == "tcg"
            assert appliance["why"] != "LIBGUESTFS_BACKEND_SETTINGS=force_tcg is set"


@pytest.fixture(scope="module")
def fixed_vmdk(fixed: FixedGuest) -> Path:
    """The fixed guest as a VMDK again: the source of runs over an already fixed guest."""
    assert fixed.outcome.returncode == 0, fixed.outcome.stderr
    vmdk = fixed.workdir / "fixed.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", fixed.output, vmdk)
    return vmdk


def test_a_failed_fix_fails_the_job_and_commits_nothing(fixed_vmdk: Path, tmp_path: Path) -> None:
    """A cloud-init seed for a guest without cloud-init cannot work: the job fails."""
    seed = {"user_data": "#cloud-config\n", "meta_data": "instance-id: i-1\n"}
    output = tmp_path / "out.qcow2"
    outcome = worker_run(
        fix_job("no-cloud-init", fixed_vmdk, output, {"cloud_init": seed}), tmp_path
    )
    assert_one_line_error(outcome, 3, "Unsupported")
    assert "cloud_init: cloud-init is not installed in the guest" in outcome.stderr
    assert not output.exists()
    assert [name for name in leftovers(tmp_path) if "out" in name] == []
    report = next(e for e in outcome.events() if e["type"] == "report" and "fixes" in e)
    statuses = {entry["fix"]: entry["status"] for entry in report["fixes"]}
    assert statuses.pop("cloud_init") == "failed"
    assert set(statuses.values()) == {"not_needed"}


@pytest.mark.slow
def test_vmware_tools_removed_on_request(fixed_vmdk: Path, tmp_path: Path) -> None:
    """dpkg --purge inside the guest: about a minute and a half under TCG."""
    output = tmp_path / "removed.qcow2"
    outcome = worker_run(
        fix_job("remove-tools", fixed_vmdk, output, {"remove_vmware_tools": True}), tmp_path
    )
    assert outcome.returncode == 0, outcome.stderr
    (disk,) = outcome.result()["disks"]
    assert {name for name, status in disk["fixes"].items() if status != "not_needed"} == {
        "vmware_tools"
    }
    assert disk["fixes"]["vmware_tools"] == "applied"
    vmtoolsd, status = read_guest(
        output, ["exists /usr/bin/vmtoolsd", "sh 'dpkg-query -W -f=${Status} open-vm-tools || :'"]
    )
    assert vmtoolsd.strip() == "false"
    assert "install ok installed" not in status


def test_refuses_a_disk_without_an_os_and_an_encrypted_root(tmp_path: Path) -> None:
    blank, encrypted = tmp_path / "blank.raw", tmp_path / "luks.raw"
    for image in (blank, encrypted):
        with image.open("wb") as stream:
            stream.truncate(32 * MiB)
    run("mkfs.ext4", "-q", "-F", blank)  # a filesystem, but no operating system in it
    key = tmp_path / "key"
    key.write_text("a passphrase")
    run(
        *("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", key),
        *("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", encrypted),
    )
    for image, reason, words in (
        (blank, "InvalidImage", "no operating system found"),
        (encrypted, "Unsupported", "encrypted (LUKS)"),
    ):
        vmdk = tmp_path / f"{image.stem}.vmdk"
        run("qemu-img", "convert", "-O", "vmdk", image, vmdk)
        before = file_digest(vmdk)
        out = tmp_path / f"out-{image.stem}"
        out.mkdir()
        outcome = worker_run(fix_job(f"refuse-{image.stem}", vmdk, out / "x.qcow2"), tmp_path)
        assert_one_line_error(outcome, 3, reason)
        assert words in outcome.stderr and "nothing was changed" in outcome.stderr
        assert leftovers(out) == []
        assert file_digest(vmdk) == before


def on_a_node_without_a_kernel(*argv: str | Path, cache: Path) -> Outcome:
    """The worker as on a fresh node: /boot empty (under a tmpfs of a private mount
    namespace) and no cached appliance, so supermin finds no kernel to build one from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIBGUESTFS_", "SUPERMIN_"))}
    done = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "--"),
            *("sh", "-c", 'mount -t tmpfs hidden /boot && exec "$@"', "sh"),
            *map(str, argv),
        ],
        capture_output=True,
        text=True,
        env={**env, "LIBGUESTFS_CACHEDIR": str(cache), "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"},
        timeout=300,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def test_a_node_without_a_kernel_is_named_in_the_error_and_in_capabilities(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("hiding /boot in a mount namespace needs root")
    blank, vmdk = tmp_path / "blank.raw", tmp_path / "blank.vmdk"
    with blank.open("wb") as stream:
        stream.truncate(16 * MiB)
    run("qemu-img", "convert", "-O", "vmdk", blank, vmdk)
    job = tmp_path / "dry.json"
    job.write_text(json.dumps(fix_job("no-kernel", vmdk, None, {"dry_run": True})))
    cache = tmp_path / "cache"
    cache.mkdir()

    outcome = on_a_node_without_a_kernel(WORKER, "run", "--job", job, "--no-listen", cache=cache)
    assert_one_line_error(outcome, 75, "ToolFailed")  # another node may have one: transient
    assert "no Linux kernel in /boot" in outcome.stderr
    assert "install linux-image-amd64" in outcome.stderr

    caps = on_a_node_without_a_kernel(WORKER, "capabilities", "--json", cache=cache)
    report = json.loads(caps.stdout)
    assert report["offline_fix_ready"] is False
    assert "install linux-image-amd64" in report["offline_fix_missing"][0]
    # Inspection and conversion do not need the appliance: the node stays ready for them.
    assert report["ready"] is True, report["missing"]


def test_cancel_while_fixing_stops_the_appliance_and_writes_nothing(
    guest_vmdk: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(fix_job("cancel-me", guest_vmdk, out / "c.qcow2")))
    worker = subprocess.Popen(
        [str(WORKER), "run", "--job", str(job_file), "--no-listen"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    for line in worker.stdout:  # until the appliance is up and inspecting the guest
        if '"step":"inspect"' in line:
            break
    appliance = [
        process
        for process in psutil.process_iter(["cmdline"])
        if any(str(out) in part for part in process.info["cmdline"] or [])
    ]
    assert appliance, "no process has the staged output open"
    worker.send_signal(signal.SIGTERM)
    stdout, _ = worker.communicate(timeout=120)
    assert worker.returncode == 143
    _, alive = psutil.wait_procs(appliance, timeout=10)
    assert alive == []
    assert leftovers(out) == []
    assert '"state":"cancelled"' in stdout


def test_fix_options_belong_to_offline_fix(tmp_path: Path) -> None:
    job = fix_job("bad", tmp_path / "a.vmdk", None, {"dry_run": True})
    job["operation"] = "inspect"
    outcome = worker_run(job, tmp_path)
    assert_one_line_error(outcome, 3, "InvalidJob")
    assert "offline_fix only" in outcome.stderr


def kubevirt_machine(fixed: FixedGuest) -> dict[str, Any]:
    """The VirtualMachine the operator would make of the fixed guest: offline_fix put the
    virtio drivers in, so the generated VM names virtio (and BIOS: the guest boots GRUB from
    its MBR)."""
    report = fixed.outcome.result()["disks"][0]
    assert report["fixes"]["initramfs"] in ("applied", "not_needed"), report
    guest = hardware.Hardware(
        described_by=hardware.DescribedBy.VMX,
        name="debian12",
        cpus=1,
        memory_bytes=768 << 20,
        firmware=hardware.Firmware.BIOS,
        disks=[hardware.HardwareDisk(label="Hard disk 1", capacity_bytes=1 << 30)],
        nics=[hardware.HardwareNic(label="Network adapter 1", model="vmxnet3",
                                   mac="00:50:56:aa:bb:01", network="VM Network")],
    )  # fmt: skip
    built = kubevirt.build_vm(guest, ["debian12-root"], virtio=True,
                              networks={"VM Network": kubevirt.POD},
                              options=kubevirt.VmOptions())  # fmt: skip
    return built.manifest


def qemu_devices(machine: dict[str, Any], image: Path) -> list[str]:
    """qemu's firmware, disk and NIC options for exactly what `machine` names."""
    domain = machine["spec"]["template"]["spec"]["domain"]
    [disk] = domain["devices"]["disks"]
    [nic] = domain["devices"]["interfaces"]
    assert "efi" not in domain.get("firmware", {}).get("bootloader", {})  # SeaBIOS, qemu's own
    drive = f"file={image},format=qcow2,snapshot=on"
    bus = disk["disk"]["bus"]
    if bus == "virtio":
        disk_options = ["-drive", f"{drive},if=virtio"]
    else:
        assert bus == "sata", bus
        disk_options = ["-device", "ahci,id=sata", "-drive", f"{drive},if=none,id=d0",
                        "-device", "ide-hd,drive=d0,bus=sata.0"]  # fmt: skip
    model = {"virtio": "virtio-net-pci", "e1000e": "e1000e"}[nic["model"]]
    return [*disk_options, "-netdev", "user,id=n0",
            "-device", f"{model},netdev=n0,mac={nic['macAddress']}"]  # fmt: skip


@pytest.mark.slow
def test_fixed_guest_boots_as_its_kubevirt_vm_says(fixed: FixedGuest) -> None:
    """With the firmware, disk bus and NIC model of the VirtualMachine made for it:
    SeaBIOS, GRUB, the kernel, the initramfs on virtio-blk, fstab, eth0 and firstboot."""
    assert fixed.outcome.returncode == 0, fixed.outcome.stderr
    machine = kubevirt_machine(fixed)
    devices = machine["spec"]["template"]["spec"]["domain"]["devices"]
    assert (devices["disks"][0]["disk"]["bus"], devices["interfaces"][0]["model"]) == (
        "virtio", "virtio",
    )  # fmt: skip
    serial = fixed.workdir / "serial.log"
    accel = "kvm" if kvm_works() else "tcg"
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64",
            *("-accel", accel, "-m", "768", "-nodefaults", "-display", "none", "-no-reboot"),
            *("-serial", f"file:{serial}"),
            *qemu_devices(machine, fixed.output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        text = _wait_for(serial, qemu, MARKER, deadline=time.monotonic() + 600)
    finally:
        qemu.kill()
        qemu.wait()
    assert MARKER in text, text[-3000:]
    assert re.search(rf"eth0\s+inet {re.escape(build_guest.STATIC_ADDRESS)}", text), text[-3000:]
    assert "emergency mode" not in text


def _wait_for(log: Path, process: subprocess.Popen[bytes], marker: str, deadline: float) -> str:
    text = ""
    while time.monotonic() < deadline and process.poll() is None:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text and "inet " in text.split(marker, 1)[1]:
            return text
        time.sleep(1)
    return text
