"""Pure rewriting of a Linux guest's storage and boot configuration (no I/O).

Kernel device names (/dev/sda1, /dev/hdb, /dev/xvda2, ...) change when a disk moves from a
VMware controller to virtio (vda): every place that names one is rewritten to the
filesystem's UUID= (or LABEL=) reference. The caller supplies the references it read from
the disks, keyed by the appliance's own names (/dev/sdX in attachment order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

BACKUP_SUFFIX = ".hyper2kvm.bak"
VIRTIO_MODULES = ("virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci")

_KERNEL_DEVICE = re.compile(r"^/dev/(?:sd|hd|vd|xvd)([a-z]{1,2})(\d*)$")
_DEVICE_TOKEN = re.compile(r"/dev/(?:sd|hd|vd|xvd)[a-z]{1,2}\d*")
_CMDLINE_VARIABLE = re.compile(r'^(\s*GRUB_CMDLINE_LINUX(?:_DEFAULT)?=)(["\']?)(.*?)\2\s*$')
_DEVICE_ARGUMENTS = ("root", "resume")


@dataclass
class Rewrite:
    """The new text, what changed (one line per change) and what could not be resolved."""

    text: str
    changes: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def appliance_device(name: str) -> str | None:
    """The appliance's name for a guest kernel device name: /dev/vdb2 -> /dev/sdb2."""
    match = _KERNEL_DEVICE.match(name)
    if match is None:
        return None
    return f"/dev/sd{match.group(1)}{match.group(2)}"


def is_kernel_device(name: str) -> bool:
    return _KERNEL_DEVICE.match(name) is not None


def reference_for(device: str, references: Mapping[str, str]) -> str | None:
    """UUID=... or LABEL=... for a guest device name, when the disks hold that device."""
    key = appliance_device(device)
    return references.get(key) if key else None


def backup_path(path: str) -> str:
    """Where the copy of an edited file goes: beside it, hidden where a directory is globbed."""
    directory, _, name = path.rpartition("/")
    if directory == "/etc/network/interfaces.d":
        # `source /etc/network/interfaces.d/*` would read a visible copy as configuration.
        return f"{directory}/.{name}{BACKUP_SUFFIX}"
    return f"{path}{BACKUP_SUFFIX}"


def _rewrite_field(text: str, column: int, references: Mapping[str, str], what: str) -> Rewrite:
    out = Rewrite(text="")
    lines = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(line)
            continue
        fields = list(re.finditer(r"\S+", line))
        if len(fields) <= column or not is_kernel_device(fields[column].group()):
            lines.append(line)
            continue
        device = fields[column].group()
        reference = reference_for(device, references)
        if reference is None:
            out.unresolved.append(device)
            lines.append(line)
            continue
        start, end = fields[column].span()
        lines.append(line[:start] + reference + line[end:])
        out.changes.append(f"{what}: {device} -> {reference}")
    out.text = "".join(lines)
    return out


def rewrite_fstab(text: str, references: Mapping[str, str]) -> Rewrite:
    """/etc/fstab: the first field of every entry naming a kernel device."""
    return _rewrite_field(text, 0, references, "fstab")


def rewrite_crypttab(text: str, references: Mapping[str, str]) -> Rewrite:
    """/etc/crypttab: the second field (the encrypted device)."""
    return _rewrite_field(text, 1, references, "crypttab")


def rewrite_resume(text: str, references: Mapping[str, str]) -> Rewrite:
    """initramfs-tools' RESUME= setting (conf.d/resume)."""
    out = Rewrite(text="")
    lines = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^(\s*RESUME=)([\"']?)(/dev/\S+?)\2(\s*)$", line)
        if match is None or not is_kernel_device(match.group(3)):
            lines.append(line)
            continue
        device = match.group(3)
        reference = reference_for(device, references)
        if reference is None:
            out.unresolved.append(device)
            lines.append(line)
            continue
        lines.append(f"{match.group(1)}{reference}{match.group(4)}")
        out.changes.append(f"resume: {device} -> {reference}")
    out.text = "".join(lines)
    return out


def rewrite_cmdline(
    cmdline: str, references: Mapping[str, str], add: Sequence[str] = ()
) -> Rewrite:
    """A kernel command line: root=/resume= by reference; `add` appended when missing."""
    out = Rewrite(text="")
    words = cmdline.split()
    result = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key in _DEVICE_ARGUMENTS and is_kernel_device(value):
            reference = reference_for(value, references)
            if reference is None:
                out.unresolved.append(value)
            else:
                out.changes.append(f"{key}={value} -> {key}={reference}")
                word = f"{key}={reference}"
        result.append(word)
    for argument in add:
        if argument not in result:
            result.append(argument)
            out.changes.append(f"added {argument}")
    out.text = " ".join(result) if out.changes else cmdline
    return out


def rewrite_grub_default(
    text: str, references: Mapping[str, str], add: Sequence[str] = ()
) -> Rewrite:
    """/etc/default/grub: device arguments by reference, UUIDs allowed, `add` in the cmdline."""
    out = Rewrite(text="")
    lines = []
    added = False
    for line in text.splitlines(keepends=True):
        ending = "\n" if line.endswith("\n") else ""
        match = _CMDLINE_VARIABLE.match(line.rstrip("\n"))
        if match is not None:
            default = match.group(1).strip().startswith("GRUB_CMDLINE_LINUX_DEFAULT")
            extra = () if default else add
            added = added or not default
            rewritten = rewrite_cmdline(match.group(3), references, extra)
            out.changes += rewritten.changes
            out.unresolved += rewritten.unresolved
            if rewritten.changed:
                quote = match.group(2) or '"'
                line = f"{match.group(1)}{quote}{rewritten.text}{quote}{ending}"
        elif re.match(r"^\s*GRUB_DISABLE_LINUX_UUID=[\"']?true[\"']?\s*$", line):
            line = f"GRUB_DISABLE_LINUX_UUID=false{ending}"
            out.changes.append("GRUB_DISABLE_LINUX_UUID=true -> false")
        lines.append(line)
    if add and not added:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f'GRUB_CMDLINE_LINUX="{" ".join(add)}"\n')
        out.changes.append(f"added GRUB_CMDLINE_LINUX with {' '.join(add)}")
    out.text = "".join(lines)
    return out


def grub_cfg_problems(text: str) -> list[str]:
    """Kernel lines of a generated grub.cfg that still name a kernel device for root/resume."""
    problems = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("linux", "linux16", "linuxefi", "kernel"):
            continue
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if sep and key in _DEVICE_ARGUMENTS and is_kernel_device(value):
                problems.append(word)
    return sorted(set(problems))


def grub_cfg_kernel_args(text: str) -> list[list[str]]:
    """The arguments of every kernel line of a grub.cfg, in order."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("linux", "linux16", "linuxefi"):
            found.append(words[2:])
    return found


def missing_initramfs_modules(
    initramfs_files: Sequence[str], builtin: Sequence[str], wanted: Sequence[str] = VIRTIO_MODULES
) -> list[str]:
    """Which of `wanted` neither the initramfs holds (as NAME.ko*) nor the kernel has built in."""
    present = set()
    for path in initramfs_files:
        name = path.rsplit("/", 1)[-1]
        if ".ko" in name:
            present.add(name.split(".ko", 1)[0].replace("-", "_"))
    for path in builtin:
        name = path.strip().rsplit("/", 1)[-1]
        if name.endswith(".ko"):
            present.add(name[: -len(".ko")].replace("-", "_"))
    return [module for module in wanted if module not in present]


def add_module_lines(text: str, modules: Sequence[str]) -> Rewrite:
    """initramfs-tools' /etc/initramfs-tools/modules: one module a line, added when missing."""
    listed = {
        line.split()[0] for line in text.splitlines() if line.strip() and line.strip()[0] != "#"
    }
    missing = [module for module in modules if module not in listed]
    if not missing:
        return Rewrite(text=text)
    prefix = text if not text or text.endswith("\n") else text + "\n"
    body = "# virtio drivers for KVM, added by hyper2kvm\n" + "".join(f"{m}\n" for m in missing)
    return Rewrite(text=prefix + body, changes=[f"initramfs-tools modules: +{m}" for m in missing])


def dracut_conf(modules: Sequence[str]) -> str:
    """A dracut.conf.d drop-in that puts the modules into every initramfs."""
    return f'# virtio drivers for KVM, added by hyper2kvm\nadd_drivers+=" {" ".join(modules)} "\n'


def dpkg_installed(status: str) -> dict[str, str]:
    """Installed packages and versions from /var/lib/dpkg/status."""
    packages: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def kernel_versions(boot_files: Sequence[str], module_dirs: Sequence[str]) -> list[str]:
    """Kernels that have both an image in /boot (vmlinuz-V or vmlinux-V) and /lib/modules/V."""
    images = {
        name.split("-", 1)[1]
        for name in boot_files
        if name.startswith(("vmlinuz-", "vmlinux-")) and "-" in name
    }
    return sorted(images & set(module_dirs), key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)
    ]


def initramfs_for(kernel: str, boot_files: Sequence[str]) -> str | None:
    """The initramfs file name in /boot for a kernel (Debian, Fedora/RHEL and SUSE names)."""
    for name in (f"initrd.img-{kernel}", f"initramfs-{kernel}.img", f"initrd-{kernel}"):
        if name in boot_files:
            return name
    return None
