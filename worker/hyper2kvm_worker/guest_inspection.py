"""What a guest is, read offline through libguestfs: OS, boot, kernels, network, VMware Tools.

`GuestInspector.inspect` finds the operating system, refuses what offline_fix cannot
repair (Windows, other systems, no system, an encrypted root) with a clear reason and
before anything is written, and mounts the guest's filesystems read-only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hyper2kvm_worker import guest_text
from hyper2kvm_worker.errors import BadInput, Reason
from hyper2kvm_worker.libguestfs import GuestFish, GuestFishError

_ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
VMWARE_PACKAGES = (
    "open-vm-tools",
    "open-vm-tools-desktop",
    "open-vm-tools-sdmp",
    "open-vm-tools-containerinfo",
    "vmware-tools",
    "VMwareTools",
)


@dataclass
class GuestInfo:
    root: str
    os_type: str
    distro: str
    version: str
    product: str
    arch: str
    package_format: str
    mountpoints: list[tuple[str, str]]  # (mount point, appliance device), parents first
    boot_mode: str  # bios or uefi
    bootloader: str  # grub2, grub-legacy, systemd-boot, extlinux or unknown
    init_system: str  # systemd, upstart, openrc, sysvinit or unknown
    initramfs_tool: str  # initramfs-tools, dracut, mkinitcpio or unknown
    kernels: list[str]
    network: list[str]  # ifupdown, netplan, NetworkManager, ifcfg, systemd-networkd
    vmware_tools: list[str]  # installed packages, or "vmware-tools (tarball)"
    references: dict[str, str] = field(default_factory=dict)  # device -> UUID=/LABEL=

    def report(self) -> dict[str, Any]:
        data = asdict(self)
        data["mountpoints"] = {point: device for point, device in self.mountpoints}
        return data

    def summary(self) -> dict[str, object]:
        return {
            "os": self.os_type,
            "distro": self.distro,
            "version": self.version,
            "root": self.root,
            "boot": self.boot_mode,
            "bootloader": self.bootloader,
            "init": self.init_system,
            "kernels": len(self.kernels),
            "network": ",".join(self.network),
            "vmware_tools": bool(self.vmware_tools),
        }


class GuestInspector:
    def __init__(self, fish: GuestFish) -> None:
        self._fish = fish

    def inspect(self) -> GuestInfo:
        """Inspect, refuse what cannot be fixed, and leave the guest mounted read-only."""
        fish = self._fish
        filesystems = _filesystems(fish)
        roots = fish.lines("inspect-os")
        if not roots:
            if _encrypted(fish):
                raise BadInput(
                    Reason.UNSUPPORTED,
                    "the guest's root filesystem is encrypted (LUKS); offline_fix cannot "
                    "unlock it, so nothing was changed",
                )
            raise BadInput(
                Reason.INVALID_IMAGE,
                "no operating system found on the disk(s); offline_fix repairs Linux guests "
                "only, nothing was changed",
            )
        if len(roots) > 1:
            raise BadInput(
                Reason.UNSUPPORTED,
                f"several operating systems found ({', '.join(roots)}); offline_fix repairs "
                "single-OS Linux guests only, nothing was changed",
            )
        root = roots[0]
        os_type = fish.call("inspect-get-type", root).strip()
        if os_type == "windows":
            raise BadInput(
                Reason.UNSUPPORTED,
                "Windows guests are unsupported by offline_fix (Linux only); nothing was changed",
            )
        if os_type != "linux":
            raise BadInput(
                Reason.UNSUPPORTED,
                f"{os_type} guests are unsupported by offline_fix (Linux only); "
                "nothing was changed",
            )
        mountpoints = _mountpoints(fish, root)
        mount_all(fish, mountpoints, read_only=True)
        major = fish.call("inspect-get-major-version", root).strip()
        minor = fish.call("inspect-get-minor-version", root).strip()
        boot_files = fish.listdir("/boot")
        module_dirs = fish.listdir("/lib/modules")
        packages = _packages(fish, root)
        return GuestInfo(
            root=root,
            os_type=os_type,
            distro=fish.call("inspect-get-distro", root).strip(),
            version=f"{major}.{minor}",
            product=fish.call("inspect-get-product-name", root).strip(),
            arch=fish.call("inspect-get-arch", root).strip(),
            package_format=fish.call("inspect-get-package-format", root).strip(),
            mountpoints=mountpoints,
            boot_mode=_boot_mode(fish, mountpoints, filesystems),
            bootloader=_bootloader(fish),
            init_system=_init_system(fish),
            initramfs_tool=_initramfs_tool(fish),
            kernels=guest_text.kernel_versions(boot_files, module_dirs),
            network=_network_styles(fish),
            vmware_tools=_vmware_tools(fish, packages),
            references=_references(fish, filesystems),
        )


def mount_all(fish: GuestFish, mountpoints: list[tuple[str, str]], read_only: bool) -> None:
    fish.call("umount-all")
    for point, device in mountpoints:
        if read_only:
            fish.call("mount-ro", device, point)
        else:
            fish.call("mount", device, point)


def _encrypted(fish: GuestFish) -> bool:
    """Whether a partition or disk holds LUKS (list-filesystems leaves locked ones out)."""
    for device in fish.lines("list-partitions") + fish.lines("list-devices"):
        try:
            if fish.call("vfs-type", device).strip() == "crypto_LUKS":
                return True
        except GuestFishError:
            continue  # no filesystem signature at all
    return False


def _filesystems(fish: GuestFish) -> dict[str, str]:
    found = {}
    for line in fish.lines("list-filesystems"):
        device, _, kind = line.partition(": ")
        found[device] = kind.strip()
    return found


def _mountpoints(fish: GuestFish, root: str) -> list[tuple[str, str]]:
    pairs = []
    for line in fish.lines("inspect-get-mountpoints", root):
        point, _, device = line.partition(": ")
        pairs.append((point.strip(), device.strip()))
    return sorted(pairs, key=lambda pair: (pair[0].count("/") - (pair[0] == "/"), pair[0]))


def _references(fish: GuestFish, filesystems: dict[str, str]) -> dict[str, str]:
    references = {}
    for device, kind in filesystems.items():
        if kind in ("unknown", "crypto_LUKS") or not device.startswith("/dev/sd"):
            continue
        uuid = fish.call("vfs-uuid", device).strip()
        label = fish.call("vfs-label", device).strip()
        if uuid:
            references[device] = f"UUID={uuid}"
        elif label:
            references[device] = f"LABEL={label}"
    return references


def _packages(fish: GuestFish, root: str) -> dict[str, str]:
    status = fish.read_text("/var/lib/dpkg/status")
    if status is not None:
        return guest_text.dpkg_installed(status)
    packages: dict[str, str] = {}
    name = ""
    for line in fish.lines("inspect-list-applications2", root):
        key, _, value = line.strip().partition(": ")
        if key == "app2_name":
            name = value
        elif key == "app2_version" and name:
            packages[name] = value
    return packages


def _vmware_tools(fish: GuestFish, packages: dict[str, str]) -> list[str]:
    found = [name for name in VMWARE_PACKAGES if name in packages]
    if fish.exists("/etc/vmware-tools/locations") or fish.exists(
        "/usr/bin/vmware-uninstall-tools.pl"
    ):
        found.append("vmware-tools (tarball)")
    return found


def _boot_mode(
    fish: GuestFish, mountpoints: list[tuple[str, str]], filesystems: dict[str, str]
) -> str:
    if any(point == "/boot/efi" for point, _ in mountpoints):
        return "uefi"
    for device in filesystems:
        disk, number = _split_partition(device)
        if disk is None or fish.call("part-get-parttype", disk).strip() != "gpt":
            continue
        if fish.call("part-get-gpt-type", disk, number).strip().upper() == _ESP_GPT_TYPE:
            return "uefi"
    return "bios"


def _split_partition(device: str) -> tuple[str | None, str]:
    disk = device.rstrip("0123456789")
    number = device[len(disk) :]
    if not number or not device.startswith("/dev/sd"):
        return None, ""
    return disk, number


def _bootloader(fish: GuestFish) -> str:
    for path, name in (
        ("/boot/grub/grub.cfg", "grub2"),
        ("/boot/grub2/grub.cfg", "grub2"),
        ("/boot/grub/menu.lst", "grub-legacy"),
        ("/boot/loader/loader.conf", "systemd-boot"),
        ("/boot/efi/loader/loader.conf", "systemd-boot"),
        ("/boot/extlinux/extlinux.conf", "extlinux"),
        ("/boot/syslinux/syslinux.cfg", "extlinux"),
    ):
        if fish.is_file(path):
            return name
    return "unknown"


def _init_system(fish: GuestFish) -> str:
    for path in ("/sbin/init", "/usr/sbin/init"):
        if fish.is_symlink(path):
            target = fish.call("readlink", path).strip()
            if "systemd" in target:
                return "systemd"
            if "upstart" in target:
                return "upstart"
    if fish.exists("/lib/systemd/systemd") and fish.is_dir("/etc/systemd/system"):
        return "systemd"
    if fish.exists("/sbin/openrc"):
        return "openrc"
    if fish.exists("/sbin/upstart") or fish.is_dir("/etc/init"):
        return "upstart"
    if fish.is_file("/etc/inittab"):
        return "sysvinit"
    return "unknown"


def _initramfs_tool(fish: GuestFish) -> str:
    for path, name in (
        ("/usr/sbin/update-initramfs", "initramfs-tools"),
        ("/usr/bin/dracut", "dracut"),
        ("/sbin/dracut", "dracut"),
        ("/usr/bin/mkinitcpio", "mkinitcpio"),
    ):
        if fish.exists(path):
            return name
    return "unknown"


def _network_styles(fish: GuestFish) -> list[str]:
    styles = []
    interfaces = fish.read_text("/etc/network/interfaces") or ""
    configured = [
        line
        for line in interfaces.splitlines()
        if line.strip().startswith("iface") and " lo " not in f"{line} "
    ]
    if configured or any(not n.startswith(".") for n in fish.listdir("/etc/network/interfaces.d")):
        styles.append("ifupdown")
    if any(name.endswith(".yaml") for name in fish.listdir("/etc/netplan")):
        styles.append("netplan")
    if fish.listdir("/etc/NetworkManager/system-connections"):
        styles.append("NetworkManager")
    scripts = fish.listdir("/etc/sysconfig/network-scripts") + fish.listdir(
        "/etc/sysconfig/network"
    )
    if any(name.startswith("ifcfg-") and name != "ifcfg-lo" for name in scripts):
        styles.append("ifcfg")
    if any(name.endswith(".network") for name in fish.listdir("/etc/systemd/network")):
        styles.append("systemd-networkd")
    return styles
