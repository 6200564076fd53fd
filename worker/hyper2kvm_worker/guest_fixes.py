"""The repairs that make a converted Linux guest boot on KVM, planned then applied offline.

Every fix is first planned from the guest mounted read-only (what it would change, or why
it cannot), so a dry run reports exactly what a real run does and a guest that needs
nothing is never mounted writable. Applying runs the plans in order and checks each
result; an edited file's first copy is kept beside it (`.hyper2kvm.bak`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from hyper2kvm_worker import guest_network, guest_services, guest_text
from hyper2kvm_worker.guest_inspection import GuestInfo
from hyper2kvm_worker.guest_plan import Action, Outcome, Plan, Status
from hyper2kvm_worker.libguestfs import GuestFish, GuestFishError
from hyper2kvm_worker.protocol import FixOptions


class GuestFixer:
    def __init__(self, fish: GuestFish, info: GuestInfo, options: FixOptions) -> None:
        self._fish = fish
        self._info = info
        self._options = options

    # ------------------------------------------------------------------ planning

    def plan(self) -> list[Plan]:
        """Every fix, in the order they must be applied; reads the guest only."""
        fstab = self._plan_file("fstab", "/etc/fstab", guest_text.rewrite_fstab)
        crypttab = self._plan_file("crypttab", "/etc/crypttab", guest_text.rewrite_crypttab)
        resume = self._plan_resume()
        network, kernel_args = self._plan_network()
        tools = guest_services.plan_vmware_tools(self._fish, self._info, self._options)
        grub = self._plan_grub(kernel_args)
        initramfs = self._plan_initramfs(resume.changed_config)
        firstboot = guest_services.plan_firstboot(self._fish, self._info, self._options)
        cloud = guest_services.plan_cloud_init(self._fish, self._info, self._options)
        return [fstab, crypttab, resume.plan, network, tools, grub, initramfs, firstboot, cloud]

    def _plan_file(
        self,
        name: str,
        path: str,
        rewrite: Callable[[str, dict[str, str]], guest_text.Rewrite],
    ) -> Plan:
        plan = Plan(name)
        text = self._fish.read_text(path)
        if text is None:
            return plan
        result = rewrite(text, self._info.references)
        self._take(plan, path, result)
        return plan

    def _take(self, plan: Plan, path: str, result: guest_text.Rewrite) -> None:
        if result.unresolved:
            plan.error = (
                f"{path} names {', '.join(sorted(set(result.unresolved)))}, which is on none "
                "of the job's disks; add every disk of the VM to the job"
            )
        if result.changed:
            plan.changes += result.changes
            plan.write(path, result.text)

    def _plan_resume(self) -> _ResumePlan:
        plan = Plan("resume")
        directory = "/etc/initramfs-tools/conf.d"
        for name in self._fish.listdir(directory):
            if name.endswith(guest_text.BACKUP_SUFFIX):
                continue
            path = f"{directory}/{name}"
            text = self._fish.read_text(path)
            if text is not None and "RESUME=" in text:
                self._take(plan, path, guest_text.rewrite_resume(text, self._info.references))
        return _ResumePlan(plan, bool(plan.actions))

    def _plan_network(self) -> tuple[Plan, list[str]]:
        plan = Plan("network")
        files = self._network_files()
        texts = {path: self._fish.read_text(path) or "" for path, _ in files}
        names = guest_network.interface_names(
            [texts[path] for path, kind in files if kind not in ("udev", "link")]
        )
        renames = guest_network.rename_plan(names)
        for path, kind in files:
            text = texts[path]
            if kind == "link":
                if guest_network.is_vmware_link_file(text):
                    plan.changes.append(f"{path}: removed (names a NIC by a VMware MAC)")
                    plan.actions.append(Action("remove", path))
                continue
            result = _NETWORK_REWRITES[kind](text, renames)
            if not result.changed:
                continue
            target = path
            if kind == "ifcfg":
                directory, _, base = path.rpartition("/")
                device = base.removeprefix("ifcfg-")
                if device in renames:
                    target = f"{directory}/ifcfg-{renames[device]}"
                    plan.changes.append(f"{path} -> {target}")
                    plan.actions.append(Action("remove", path))
            plan.changes += [f"{path}: {change}" for change in result.changes]
            plan.write(target, result.text)
        # ethN names are only stable with the kernel's own naming
        return plan, [guest_network.KERNEL_ARGUMENT] if names else []

    def _network_files(self) -> list[tuple[str, str]]:
        fish = self._fish
        files: list[tuple[str, str]] = []

        def add(directory: str, kind: str, accept: Callable[[str], bool]) -> None:
            for name in fish.listdir(directory):
                path = f"{directory}/{name}"
                backup = name.endswith(guest_text.BACKUP_SUFFIX) or name.startswith(".")
                if not backup and accept(name) and fish.is_file(path):
                    files.append((path, kind))

        if fish.is_file("/etc/network/interfaces"):
            files.append(("/etc/network/interfaces", "ifupdown"))
        add("/etc/network/interfaces.d", "ifupdown", lambda name: True)
        add("/etc/netplan", "netplan", lambda name: name.endswith((".yaml", ".yml")))
        add("/etc/NetworkManager/system-connections", "keyfile", lambda name: True)
        for directory in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network"):
            add(directory, "ifcfg", lambda name: name.startswith("ifcfg-") and name != "ifcfg-lo")
        add("/etc/systemd/network", "networkd", lambda name: name.endswith(".network"))
        add("/etc/systemd/network", "link", lambda name: name.endswith(".link"))
        add("/etc/udev/rules.d", "udev", lambda name: "net" in name and name.endswith(".rules"))
        return files

    def _plan_grub(self, kernel_args: list[str]) -> Plan:
        plan = Plan("grub")
        fish = self._fish
        config = next(
            (p for p in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg") if fish.is_file(p)), None
        )
        if config is None:
            if self._info.bootloader != "unknown":
                plan.error = f"bootloader {self._info.bootloader} is not handled (GRUB 2 only)"
            return plan
        default = fish.read_text("/etc/default/grub")
        if default is not None:
            self._take(
                plan,
                "/etc/default/grub",
                guest_text.rewrite_grub_default(default, self._info.references, kernel_args),
            )
        for name in fish.listdir("/boot/loader/entries"):
            path = f"/boot/loader/entries/{name}"
            text = fish.read_text(path) or ""
            lines = []
            for line in text.splitlines(keepends=True):
                if line.startswith("options "):
                    new = guest_text.rewrite_cmdline(line[8:].strip(), self._info.references)
                    plan.changes += [f"{path}: {c}" for c in new.changes]
                    line = f"options {new.text}\n" if new.changed else line
                lines.append(line)
            if "".join(lines) != text:
                plan.write(path, "".join(lines))
        stale = _grub_cfg_stale(fish.read_text(config) or "", kernel_args)
        if plan.actions or stale:
            generator = _first_present(fish, ("update-grub", "grub2-mkconfig", "grub-mkconfig"))
            if generator is None:
                plan.error = "no grub-mkconfig in the guest to regenerate its GRUB configuration"
                return plan
            command = generator if generator == "update-grub" else f"{generator} -o {config}"
            plan.run(f"regenerated {config} ({command})", command)
            plan.changes += stale
            plan.check = lambda: (
                "; ".join(_grub_cfg_stale(fish.read_text(config) or "", kernel_args)) or None
            )
        return plan

    def _plan_initramfs(self, resume_changed: bool) -> Plan:
        plan = Plan("initramfs")
        fish, info = self._fish, self._info
        wanted = list(guest_text.VIRTIO_MODULES)
        boot = fish.listdir("/boot")
        stale: list[str] = []
        for kernel in info.kernels:
            missing = self._missing_modules(kernel, boot)
            if missing is None:
                plan.error = f"kernel {kernel} has no initramfs in /boot"
                return plan
            if missing or resume_changed:
                stale.append(kernel)
                detail = f"lacks {', '.join(missing)}" if missing else "has the old resume device"
                plan.changes.append(f"initramfs of {kernel} {detail}")
        if not info.kernels:
            plan.error = "no installed kernel found (/boot/vmlinuz-* with /lib/modules/*)"
        if not stale or plan.error:
            return plan
        for kernel in stale:
            absent = [m for m in wanted if not _module_present(fish, kernel, m)]
            if absent:
                plan.error = f"kernel {kernel} has no {', '.join(absent)} module"
                return plan
        if info.initramfs_tool == "initramfs-tools":
            path = "/etc/initramfs-tools/modules"
            rewrite = guest_text.add_module_lines(fish.read_text(path) or "", wanted)
            if rewrite.changed:
                plan.changes += rewrite.changes
                plan.write(path, rewrite.text)
            for kernel in stale:
                plan.run(
                    f"regenerated the initramfs of {kernel}",
                    f"update-initramfs -u -k {shlex.quote(kernel)}",
                )
        elif info.initramfs_tool == "dracut":
            path = "/etc/dracut.conf.d/hyper2kvm-virtio.conf"
            if fish.read_text(path) != guest_text.dracut_conf(wanted):
                plan.changes.append(f"{path}: add_drivers {' '.join(wanted)}")
                plan.write(path, guest_text.dracut_conf(wanted))
            for kernel in stale:
                image = guest_text.initramfs_for(kernel, boot) or f"initramfs-{kernel}.img"
                plan.run(
                    f"regenerated the initramfs of {kernel}",
                    f"dracut -f /boot/{shlex.quote(image)} {shlex.quote(kernel)}",
                )
        else:
            plan.error = f"initramfs tool {info.initramfs_tool} is not handled"
            return plan

        def check() -> str | None:
            boot_now = fish.listdir("/boot")
            still = {k: self._missing_modules(k, boot_now) for k in stale}
            bad = [f"{k}: {', '.join(m or ['no initramfs'])}" for k, m in still.items() if m != []]
            return f"still missing after regeneration: {'; '.join(bad)}" if bad else None

        plan.check = check
        return plan

    def _missing_modules(self, kernel: str, boot: list[str]) -> list[str] | None:
        image = guest_text.initramfs_for(kernel, boot)
        if image is None:
            return None
        lister = "lsinitrd" if self._info.initramfs_tool == "dracut" else "lsinitramfs"
        listing = self._fish.sh(f"{lister} /boot/{shlex.quote(image)}").splitlines()
        builtin = self._fish.read_text(f"/lib/modules/{kernel}/modules.builtin") or ""
        return guest_text.missing_initramfs_modules(listing, builtin.splitlines())

    # ------------------------------------------------------------------ applying

    def apply(self, plan: Plan) -> Outcome:
        if plan.error is not None:
            return Outcome(plan.name, Status.FAILED, (plan.error,))
        if not plan.actions:
            return Outcome(plan.name, Status.NOT_NEEDED)
        try:
            for action in plan.actions:
                self._act(action)
            problem = plan.check() if plan.check else None
        except GuestFishError as error:
            return Outcome(plan.name, Status.FAILED, (*plan.changes, f"failed: {error.detail}"))
        if problem:
            return Outcome(plan.name, Status.FAILED, (*plan.changes, problem))
        return Outcome(plan.name, Status.APPLIED, tuple(plan.changes))

    def _act(self, action: Action) -> None:
        fish = self._fish
        if action.kind == "run":
            fish.sh(action.content)
            return
        if action.kind == "remove":
            if fish.is_symlink(action.path):
                fish.call("rm", action.path)
            elif fish.exists(action.path):
                self._backup(action.path, move=True)
            return
        fish.call("mkdir-p", action.path.rpartition("/")[0] or "/")
        if action.kind == "link":
            fish.call("ln-sf", action.content, action.path)
            return
        self._backup(action.path, move=False)
        fish.write_text(action.path, action.content, action.mode)

    def _backup(self, path: str, move: bool) -> None:
        """Keep the first original of an edited file; later runs never overwrite it."""
        fish = self._fish
        backup = guest_text.backup_path(path)
        if fish.is_file(path) and not fish.exists(backup):
            fish.call("cp-a", path, backup)
        if move:
            fish.call("rm-f", path)


@dataclass(frozen=True)
class _ResumePlan:
    plan: Plan
    changed_config: bool


_NETWORK_REWRITES: dict[str, Callable[[str, dict[str, str]], guest_text.Rewrite]] = {
    "ifupdown": guest_network.rewrite_ifupdown,
    "netplan": guest_network.rewrite_netplan,
    "keyfile": guest_network.rewrite_keyfile,
    "ifcfg": guest_network.rewrite_ifcfg,
    "networkd": guest_network.rewrite_networkd,
    "udev": lambda text, _renames: guest_network.rewrite_udev_rules(text),
}


def _grub_cfg_stale(text: str, kernel_args: list[str]) -> list[str]:
    problems = [f"grub.cfg still has {word}" for word in guest_text.grub_cfg_problems(text)]
    for argument in kernel_args:
        if any(argument not in args for args in guest_text.grub_cfg_kernel_args(text)):
            problems.append(f"grub.cfg kernel lines lack {argument}")
    return problems


def _first_present(fish: GuestFish, commands: tuple[str, ...]) -> str | None:
    for command in commands:
        for directory in ("/usr/sbin", "/sbin", "/usr/bin"):
            if fish.exists(f"{directory}/{command}"):
                return command
    return None


def _module_present(fish: GuestFish, kernel: str, module: str) -> bool:
    builtin = fish.read_text(f"/lib/modules/{kernel}/modules.builtin") or ""
    if any(line.strip().endswith(f"/{module}.ko") for line in builtin.splitlines()):
        return True
    found = fish.sh(
        f"find /lib/modules/{shlex.quote(kernel)} -name '{module}.ko*' -print -quit"
    ).strip()
    return bool(found)
