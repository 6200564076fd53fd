"""Pure rewriting of a Linux guest's network configuration for KVM (no I/O).

On VMware a NIC is named after its virtual PCI slot (ens160, ens192, ens224, enp11s0)
and configurations often pin it by MAC address. On KVM the virtio NIC has another slot
and another MAC, so such a configuration applies to no device and the guest comes up
without network. The fix: every Ethernet name the configuration uses is renamed, in
slot order, to eth0, eth1, ... and the kernel is told to keep those names
(`net.ifnames=0`); MAC bindings are removed. Addresses, routes and DNS stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hyper2kvm_worker.guest_text import Rewrite

KERNEL_ARGUMENT = "net.ifnames=0"
# Ethernet names as systemd/udev and older installers give them; eth names are stable.
_ETHERNET = re.compile(
    r"\b(ens\d+(?:f\d+)?(?:d\d+)?|enp\d+s\d+(?:f\d+)?(?:d\d+)?|eno\d+(?:d\d+)?"
    r"|enx[0-9a-f]{12}|eth\d+)\b"
)
_NOT_RENAMED = re.compile(r"^eth[0-9]+$")
# VMware's OUIs: ESX-assigned, static, workstation and legacy.
VMWARE_OUIS = ("00:50:56", "00:0c:29", "00:05:69", "00:1c:14")
_MAC = re.compile(r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b")


def interface_names(texts: Sequence[str]) -> list[str]:
    """Ethernet interface names the configuration texts use, in slot order."""
    names: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            names.update(match.group(1) for match in _ETHERNET.finditer(line))
    return sorted(names, key=_slot_key)


def _slot_key(name: str) -> tuple[str, list[int]]:
    return (re.sub(r"[0-9]+", "#", name), [int(n) for n in re.findall(r"[0-9]+", name)])


def rename_plan(names: Sequence[str]) -> dict[str, str]:
    """Old name -> ethN, in slot order; names already ethN keep their number when free."""
    plan: dict[str, str] = {}
    taken = {name for name in names if _NOT_RENAMED.match(name)}
    number = 0
    for name in names:
        if name in taken:
            continue
        while f"eth{number}" in taken:
            number += 1
        plan[name] = f"eth{number}"
        taken.add(plan[name])
    return plan


def _rename_line(line: str, plan: Mapping[str, str]) -> str:
    return _ETHERNET.sub(lambda m: plan.get(m.group(1), m.group(1)), line)


def _rename(text: str, plan: Mapping[str, str], what: str, out: Rewrite) -> list[str]:
    lines = []
    for line in text.splitlines(keepends=True):
        renamed = line if line.lstrip().startswith("#") else _rename_line(line, plan)
        if renamed != line:
            out.changes.append(f"{what}: {line.strip()} -> {renamed.strip()}")
        lines.append(renamed)
    return lines


def _drop_bindings(text: str, plan: Mapping[str, str], kind: str, binding: str) -> Rewrite:
    """Interfaces renamed by `plan`, and every line matching `binding` (a MAC) dropped."""
    out = Rewrite(text="")
    kept = []
    for line in _rename(text, plan, kind, out):
        if re.match(binding, line):
            out.changes.append(f"{kind}: removed {line.strip()}")
            continue
        kept.append(line)
    out.text = "".join(kept)
    return out


def rewrite_ifupdown(text: str, plan: Mapping[str, str]) -> Rewrite:
    """/etc/network/interfaces (and interfaces.d): names renamed, hwaddress lines dropped."""
    return _drop_bindings(text, plan, "interfaces", r"^\s*hwaddress\s")


def rewrite_netplan(text: str, plan: Mapping[str, str]) -> Rewrite:
    """A netplan YAML: names renamed; `macaddress` matches and `set-name` dropped.

    Works on the text, so comments and layout stay; a `match:` block left empty goes too.
    """
    out = _drop_bindings(text, plan, "netplan", r"^\s*(macaddress|set-name)\s*:")
    kept = out.text.splitlines(keepends=True)
    result: list[str] = []
    for index, line in enumerate(kept):
        if re.match(r"^\s*match\s*:\s*(\{\s*\})?\s*$", line):
            indent = len(line) - len(line.lstrip())
            following = kept[index + 1] if index + 1 < len(kept) else ""
            child = following.strip() and len(following) - len(following.lstrip()) > indent
            if not child:
                out.changes.append("netplan: removed empty match")
                continue
        result.append(line)
    out.text = "".join(result)
    return out


def rewrite_keyfile(text: str, plan: Mapping[str, str]) -> Rewrite:
    """A NetworkManager keyfile: interface-name renamed, the permanent mac-address dropped."""
    return _drop_bindings(text, plan, "keyfile", r"^\s*mac-address\s*=")


def rewrite_ifcfg(text: str, plan: Mapping[str, str]) -> Rewrite:
    """A RHEL/SUSE ifcfg file: DEVICE/NAME renamed, HWADDR and MACADDR bindings dropped."""
    return _drop_bindings(text, plan, "ifcfg", r"^\s*(HWADDR|MACADDR)\s*=")


def rewrite_networkd(text: str, plan: Mapping[str, str]) -> Rewrite:
    """A systemd-networkd .network file: Name= renamed, MACAddress= in [Match] dropped."""
    out = Rewrite(text="")
    kept = []
    section = ""
    for line in _rename(text, plan, "networkd", out):
        header = re.match(r"^\s*\[(\w+)\]", line)
        if header:
            section = header.group(1)
        if section == "Match" and re.match(r"^\s*(MACAddress|PermanentMACAddress)\s*=", line):
            out.changes.append(f"networkd: removed {line.strip()}")
            continue
        kept.append(line)
    out.text = "".join(kept)
    return out


def rewrite_udev_rules(text: str) -> Rewrite:
    """Persistent-net udev rules: rules naming a NIC by a VMware MAC or driver are dropped."""
    out = Rewrite(text="")
    kept = []
    for line in text.splitlines(keepends=True):
        if not line.lstrip().startswith("#") and "NAME=" in line and _vmware_bound(line):
            out.changes.append(f"udev: removed {line.strip()}")
            continue
        kept.append(line)
    out.text = "".join(kept)
    return out


def _vmware_bound(line: str) -> bool:
    if re.search(r'DRIVERS?=="(vmxnet3?|e1000e?|pcnet32|vlance)"', line):
        return True
    return any(mac.group().lower().startswith(VMWARE_OUIS) for mac in _MAC.finditer(line))


def is_vmware_link_file(text: str) -> bool:
    """A systemd .link file that names a NIC by a VMware MAC address."""
    return (
        "[Match]" in text
        and _vmware_bound(text)
        and re.search(r"^\s*Name\s*=", text, re.M) is not None
    )
