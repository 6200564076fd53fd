"""Build a small real Debian 12 guest disk with VMware-style problems, cached outside the clone.

    python -m tests.guest.build_guest          # prints the VMDK's path; builds it when missing

The guest: debootstrap (minbase) with a kernel, initramfs-tools, systemd, ifupdown, GRUB in
the MBR and open-vm-tools, on an MBR disk with an ext4 root and a swap partition. Planted
problems, as a VMware guest has them: /etc/fstab, the resume config and the kernel command
line name /dev/sdaN; /etc/network/interfaces configures `ens192` bound to a VMware MAC (and
a udev rule names it so); open-vm-tools is enabled; the initramfs holds no virtio drivers.

The result is cached under ${HYPER2KVM_CACHE:-~/.cache/hyper2kvm}/guest/, keyed by the
recipe version: a second call returns at once. Needs root (debootstrap, chroot) and the
Debian mirror; the disk itself is assembled with libguestfs (TCG is enough).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RECIPE = "3"  # bump when anything below changes the image
SUITE = "bookworm"
MIRROR = os.environ.get("HYPER2KVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
    "systemd-sysv",
    "udev",
    "kmod",
    "ifupdown",
    "iproute2",
    "open-vm-tools",
    "grub-pc-bin",
    "grub2-common",
)
VMWARE_MAC = "00:50:56:8a:12:34"
STATIC_ADDRESS = "192.168.77.10/24"
DISK_MIB = 1024
SWAP_MIB = 32
ROOT_LABEL = "debroot"
# Kernel module trees a small virtual machine never loads: dropped to keep the image small.
UNUSED_MODULES = (
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/net/ethernet/mellanox",
    "drivers/net/ethernet/intel",
    "drivers/net/ethernet/broadcom",
    "drivers/net/ethernet/chelsio",
    "drivers/net/ethernet/qlogic",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/bluetooth",
    "drivers/iio",
    "drivers/isdn",
    "drivers/usb/gadget",
    "drivers/scsi/lpfc",
    "drivers/scsi/qla2xxx",
    "drivers/scsi/mpt3sas",
    "drivers/scsi/megaraid",
    "drivers/hid",
    "drivers/input/touchscreen",
    "drivers/mtd",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
    "sound",
    "fs/ocfs2",
    "fs/gfs2",
    "fs/nls",
    "fs/xfs",
    "fs/btrfs",
)
FILES = {
    "etc/hostname": "vmware-guest\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 vmware-guest\n",
    "etc/fstab": (
        "# /etc/fstab as a VMware guest has it: by kernel device name\n"
        "/dev/sda1  /     ext4  errors=remount-ro  0  1\n"
        "/dev/sda2  none  swap  sw                 0  0\n"
    ),
    "etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sda2\n",
    # Only the listed modules go into the initramfs: VMware's, not virtio.
    "etc/initramfs-tools/conf.d/modules-list": "MODULES=list\n",
    "etc/initramfs-tools/modules": "vmw_pvscsi\nmptspi\nahci\nata_piix\nsd_mod\next4\nvmxnet3\n",
    "etc/default/grub": (
        "GRUB_DEFAULT=0\n"
        "GRUB_TIMEOUT=1\n"
        "GRUB_DISTRIBUTOR=Debian\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="resume=/dev/sda2"\n'
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\n'
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
        "GRUB_DISABLE_LINUX_UUID=true\n"
        "GRUB_DISABLE_RECOVERY=true\n"
        "GRUB_DISABLE_OS_PROBER=true\n"
    ),
    "etc/network/interfaces": (
        "source /etc/network/interfaces.d/*\n"
        "\n"
        "auto lo\n"
        "iface lo inet loopback\n"
        "\n"
        "allow-hotplug ens192\n"
        "iface ens192 inet static\n"
        f"    address {STATIC_ADDRESS}\n"
        "    gateway 192.168.77.1\n"
        f"    hwaddress ether {VMWARE_MAC}\n"
    ),
    "etc/udev/rules.d/70-persistent-net.rules": (
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="vmxnet3", '
        f'ATTR{{address}}=="{VMWARE_MAC}", NAME="ens192"\n'
    ),
}


def cache_dir() -> Path:
    base = os.environ.get("HYPER2KVM_CACHE") or str(Path.home() / ".cache" / "hyper2kvm")
    return Path(base) / "guest"


def image_path() -> Path:
    return cache_dir() / f"debian12-vmware-r{RECIPE}.vmdk"


def build(log: bool = True) -> Path:
    """The cached guest VMDK, built first when missing (serialised by a lock file)."""
    final = image_path()
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / ".build.lock"):
        if final.is_file():  # built by another process while this one waited
            return final
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as scratch:
            work = Path(scratch)
            tarball = _rootfs_tarball(work)
            raw = _assemble_disk(tarball, work / "disk.raw")
            partial = work / final.name
            _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(partial))
            partial.replace(final)
        for stale in final.parent.glob("debian12-vmware-r*.vmdk"):
            if stale != final:
                stale.unlink()
        if log:
            print(f"built {final} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout


def _rootfs_tarball(work: Path) -> Path:
    rootfs = work / "rootfs"
    _run(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(rootfs),
        MIRROR,
    )
    for name, text in FILES.items():
        target = rootfs / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    _strip(rootfs)
    with _proc_mounted(rootfs):
        _run("chroot", str(rootfs), "update-initramfs", "-u", "-k", "all")
    tarball = work / "rootfs.tar"
    _run("tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), ".")
    shutil.rmtree(rootfs)
    return tarball


def _strip(rootfs: Path) -> None:
    """Drop what a test guest never uses: documentation, locales, caches, unused drivers."""
    for name in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
        shutil.rmtree(rootfs / name, ignore_errors=True)
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    for modules in (rootfs / "usr/lib/modules").iterdir():
        for tree in UNUSED_MODULES:
            shutil.rmtree(modules / "kernel" / tree, ignore_errors=True)
        _run("chroot", str(rootfs), "depmod", "-a", modules.name)


@contextlib.contextmanager
def _proc_mounted(rootfs: Path) -> Iterator[None]:
    proc = rootfs / "proc"
    _run("mount", "-t", "proc", "proc", str(proc))
    try:
        yield
    finally:
        _run("umount", "-l", str(proc))


def _assemble_disk(tarball: Path, raw: Path) -> Path:
    """Partition, format, fill and make bootable (GRUB in the MBR) with libguestfs."""
    with raw.open("wb") as stream:
        stream.truncate(DISK_MIB << 20)
    sectors = DISK_MIB * 2048
    swap_start = sectors - SWAP_MIB * 2048
    script = "\n".join(
        [
            f"add {raw} format:raw",
            "run",
            "part-init /dev/sda mbr",
            f"part-add /dev/sda p 2048 {swap_start - 1}",
            f"part-add /dev/sda p {swap_start} -1",
            "part-set-bootable /dev/sda 1 true",
            f"mkfs ext4 /dev/sda1 label:{ROOT_LABEL}",
            "mkswap /dev/sda2",
            "mount /dev/sda1 /",
            f"tar-in {tarball} / xattrs:true",
            'command "grub-install --target=i386-pc /dev/sda"',
            'command "update-grub"',
            "umount-all",
            "",
        ]
    )
    env = dict(os.environ)
    if not _kvm_works():
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    done = subprocess.run(["guestfish"], input=script, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"guestfish failed: {done.stderr[-3000:]}")
    return raw


def _kvm_works() -> bool:
    from hyper2kvm_worker.libguestfs import kvm_works

    return kvm_works()


if __name__ == "__main__":
    print(build())
