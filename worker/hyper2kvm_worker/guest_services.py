"""Guest services offline_fix plans: VMware Tools off (or removed), a first-boot script,
a cloud-init seed. Each function reads the guest and returns a Plan; nothing is written.
"""

from __future__ import annotations

from hyper2kvm_worker import guest_text
from hyper2kvm_worker.guest_inspection import GuestInfo
from hyper2kvm_worker.guest_plan import Action, Plan
from hyper2kvm_worker.libguestfs import GuestFish
from hyper2kvm_worker.protocol import FixOptions

FIRSTBOOT_SCRIPT = "/usr/local/libexec/hyper2kvm/firstboot"
FIRSTBOOT_UNIT = "hyper2kvm-firstboot.service"
FIRSTBOOT_DONE = "/var/lib/hyper2kvm/firstboot.done"
CLOUD_SEED = "/var/lib/cloud/seed/nocloud"
VMWARE_UNITS = (
    "open-vm-tools.service",
    "vmtoolsd.service",
    "vgauth.service",
    "vmware-tools.service",
    "vmware-tools-thinprint.service",
    "vmware-vmblock-fuse.service",
    "run-vmblock\\x2dfuse.mount",
)
_UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system")
_SYSV_SERVICES = ("open-vm-tools", "vmware-tools", "vmtoolsd")


def plan_vmware_tools(fish: GuestFish, info: GuestInfo, options: FixOptions) -> Plan:
    plan = Plan("vmware_tools")
    packages = [name for name in info.vmware_tools if "tarball" not in name]
    if options.remove_vmware_tools and packages:
        if info.package_format == "deb":
            command = f"dpkg --purge {' '.join(packages)}"
        elif info.package_format == "rpm":
            command = f"rpm -e --nodeps {' '.join(packages)}"
        else:
            plan.error = f"cannot remove packages of format {info.package_format}"
            return plan
        plan.run(f"removed {', '.join(packages)} ({command})", command)
        plan.check = lambda: _still_installed(fish, info, packages)
    if options.remove_vmware_tools and "vmware-tools (tarball)" in info.vmware_tools:
        script = "/usr/bin/vmware-uninstall-tools.pl"
        if fish.exists(script):
            plan.run("removed VMware Tools (tarball install)", f"{script} </dev/null")
    for wants in fish.listdir("/etc/systemd/system"):
        directory = f"/etc/systemd/system/{wants}"
        if not wants.endswith(".wants"):
            continue
        for unit in fish.listdir(directory):
            if unit in VMWARE_UNITS:
                plan.changes.append(f"disabled {unit} ({wants})")
                plan.actions.append(Action("remove", f"{directory}/{unit}"))
    for unit in VMWARE_UNITS:
        mask = f"/etc/systemd/system/{unit}"
        shipped = any(fish.exists(f"{directory}/{unit}") for directory in _UNIT_DIRS)
        masked = fish.is_symlink(mask) and fish.call("readlink", mask).strip() == "/dev/null"
        if shipped and not masked:
            plan.changes.append(f"masked {unit}")
            plan.actions.append(Action("link", mask, "/dev/null"))
    for level in "2345":
        directory = f"/etc/rc{level}.d"
        for name in fish.listdir(directory):
            if name.startswith("S") and name[3:] in _SYSV_SERVICES:
                plan.changes.append(f"disabled {directory}/{name}")
                plan.actions.append(Action("remove", f"{directory}/{name}"))
    return plan


def _still_installed(fish: GuestFish, info: GuestInfo, packages: list[str]) -> str | None:
    if info.package_format == "deb":
        installed = guest_text.dpkg_installed(fish.read_text("/var/lib/dpkg/status") or "")
        left = [name for name in packages if name in installed]
    else:
        answer = fish.sh(f"rpm -q {' '.join(packages)} || :")
        left = [name for name in packages if f"package {name} is not installed" not in answer]
    return f"still installed after removal: {', '.join(left)}" if left else None


def plan_firstboot(fish: GuestFish, info: GuestInfo, options: FixOptions) -> Plan:
    plan = Plan("firstboot")
    script = options.firstboot_script
    if script is None:
        return plan
    if info.init_system != "systemd":
        plan.error = f"a first-boot script needs systemd; this guest runs {info.init_system}"
        return plan
    unit = f"/etc/systemd/system/{FIRSTBOOT_UNIT}"
    wants = f"/etc/systemd/system/multi-user.target.wants/{FIRSTBOOT_UNIT}"
    if fish.read_text(FIRSTBOOT_SCRIPT) != script:
        plan.changes.append(f"installed {FIRSTBOOT_SCRIPT}")
        plan.write(FIRSTBOOT_SCRIPT, script, 0o755)
    if fish.read_text(unit) != _FIRSTBOOT_UNIT_TEXT:
        plan.changes.append(f"installed {unit}")
        plan.write(unit, _FIRSTBOOT_UNIT_TEXT)
    if not fish.is_symlink(wants):
        plan.changes.append(f"enabled {FIRSTBOOT_UNIT}")
        plan.actions.append(Action("link", wants, unit))
    return plan


def plan_cloud_init(fish: GuestFish, info: GuestInfo, options: FixOptions) -> Plan:
    plan = Plan("cloud_init")
    seed = options.cloud_init
    if seed is None:
        return plan
    if not fish.exists("/usr/bin/cloud-init"):
        plan.error = "cloud-init is not installed in the guest; its seed would never be read"
        return plan
    files = {"user-data": seed.user_data, "meta-data": seed.meta_data}
    if seed.network_config is not None:
        files["network-config"] = seed.network_config
    for name, text in files.items():
        path = f"{CLOUD_SEED}/{name}"
        if fish.read_text(path) != text:
            plan.changes.append(f"wrote {path}")
            plan.write(path, text, 0o600)
    return plan


_FIRSTBOOT_UNIT_TEXT = f"""\
[Unit]
Description=hyper2kvm first-boot script
Wants=network-online.target
After=network-online.target
ConditionPathExists=!{FIRSTBOOT_DONE}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={FIRSTBOOT_SCRIPT}
ExecStartPost=/bin/sh -c 'mkdir -p {FIRSTBOOT_DONE.rpartition("/")[0]} && touch {FIRSTBOOT_DONE}'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""
