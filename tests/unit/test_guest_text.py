"""Rewriting a guest's storage and boot configuration: device names to UUID=/LABEL=."""

from __future__ import annotations

from hyper2kvm_worker import guest_text

REFS = {"/dev/sda1": "UUID=1111", "/dev/sda2": "UUID=2222", "/dev/sdb1": "LABEL=data"}


def test_appliance_device_maps_every_controller_naming() -> None:
    assert guest_text.appliance_device("/dev/sda1") == "/dev/sda1"
    assert guest_text.appliance_device("/dev/vdb2") == "/dev/sdb2"
    assert guest_text.appliance_device("/dev/hda") == "/dev/sda"
    assert guest_text.appliance_device("/dev/xvda3") == "/dev/sda3"
    assert guest_text.appliance_device("/dev/mapper/vg-root") is None
    assert guest_text.appliance_device("UUID=1111") is None


def test_fstab_rewrites_device_names_and_keeps_everything_else() -> None:
    text = (
        "# comment /dev/sda1\n"
        "/dev/sda1  /      ext4  errors=remount-ro  0  1\n"
        "/dev/sda2\tnone\tswap\tsw\t0\t0\n"
        "/dev/sdb1 /data xfs defaults 0 2\n"
        "UUID=9999 /boot ext4 defaults 0 2\n"
        "/dev/mapper/vg-home /home ext4 defaults 0 2\n"
    )
    result = guest_text.rewrite_fstab(text, REFS)
    assert result.text == (
        "# comment /dev/sda1\n"
        "UUID=1111  /      ext4  errors=remount-ro  0  1\n"
        "UUID=2222\tnone\tswap\tsw\t0\t0\n"
        "LABEL=data /data xfs defaults 0 2\n"
        "UUID=9999 /boot ext4 defaults 0 2\n"
        "/dev/mapper/vg-home /home ext4 defaults 0 2\n"
    )
    assert len(result.changes) == 3
    assert result.unresolved == []
    again = guest_text.rewrite_fstab(result.text, REFS)
    assert not again.changed and again.text == result.text


def test_fstab_reports_a_device_on_no_disk_of_the_job() -> None:
    result = guest_text.rewrite_fstab("/dev/sdc1 /srv ext4 defaults 0 2\n", REFS)
    assert result.unresolved == ["/dev/sdc1"]
    assert result.text == "/dev/sdc1 /srv ext4 defaults 0 2\n"


def test_crypttab_rewrites_the_second_field() -> None:
    text = "home_crypt /dev/sdb1 none luks\nswap /dev/urandom none swap\n"
    result = guest_text.rewrite_crypttab(text, REFS)
    assert result.text == "home_crypt LABEL=data none luks\nswap /dev/urandom none swap\n"


def test_resume_setting() -> None:
    result = guest_text.rewrite_resume("RESUME=/dev/sda2\n", REFS)
    assert result.text == "RESUME=UUID=2222\n"
    assert not guest_text.rewrite_resume(result.text, REFS).changed
    assert guest_text.rewrite_resume("RESUME=none\n", REFS).text == "RESUME=none\n"


def test_cmdline_rewrites_root_and_resume_and_adds_arguments_once() -> None:
    result = guest_text.rewrite_cmdline("ro root=/dev/sda1 resume=/dev/sda2 quiet", REFS, ["x=1"])
    assert result.text == "ro root=UUID=1111 resume=UUID=2222 quiet x=1"
    again = guest_text.rewrite_cmdline(result.text, REFS, ["x=1"])
    assert not again.changed and again.text == result.text


def test_grub_default_rewrites_cmdlines_and_allows_uuids() -> None:
    text = (
        "GRUB_DEFAULT=0\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=/dev/sda2"\n'
        'GRUB_CMDLINE_LINUX="console=ttyS0"\n'
        "GRUB_DISABLE_LINUX_UUID=true\n"
    )
    result = guest_text.rewrite_grub_default(text, REFS, ["net.ifnames=0"])
    assert result.text == (
        "GRUB_DEFAULT=0\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=UUID=2222"\n'
        'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"\n'
        "GRUB_DISABLE_LINUX_UUID=false\n"
    )
    assert not guest_text.rewrite_grub_default(result.text, REFS, ["net.ifnames=0"]).changed


def test_grub_default_without_cmdline_gets_one_for_added_arguments() -> None:
    result = guest_text.rewrite_grub_default("GRUB_TIMEOUT=5", REFS, ["net.ifnames=0"])
    assert result.text == 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="net.ifnames=0"\n'


def test_grub_cfg_problems_and_kernel_arguments() -> None:
    cfg = (
        "menuentry 'Debian' {\n"
        "\tsearch --no-floppy --fs-uuid --set=root 1111\n"
        "\tlinux\t/boot/vmlinuz-6.1 root=/dev/sda1 ro resume=UUID=2222\n"
        "\tinitrd\t/boot/initrd.img-6.1\n"
        "}\n"
    )
    assert guest_text.grub_cfg_problems(cfg) == ["root=/dev/sda1"]
    assert guest_text.grub_cfg_kernel_args(cfg) == [["root=/dev/sda1", "ro", "resume=UUID=2222"]]
    assert guest_text.grub_cfg_problems(cfg.replace("/dev/sda1", "UUID=1111")) == []


def test_missing_initramfs_modules_counts_compressed_and_builtin_modules() -> None:
    listing = [
        "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko.xz",
        "usr/lib/modules/6.1/kernel/drivers/scsi/vmw_pvscsi.ko",
        "usr/lib/modules/6.1/kernel/drivers/net/virtio_net.ko.zst",
    ]
    builtin = ["kernel/drivers/virtio/virtio_pci.ko"]
    assert guest_text.missing_initramfs_modules(listing, builtin) == ["virtio_scsi"]
    assert guest_text.missing_initramfs_modules([], []) == list(guest_text.VIRTIO_MODULES)


def test_module_lines_are_added_once() -> None:
    result = guest_text.add_module_lines(
        "# modules\nvmw_pvscsi\nvirtio_blk\n", ["virtio_blk", "virtio_net"]
    )
    assert result.text.endswith(
        "virtio_blk\n# virtio drivers for KVM, added by hyper2kvm\nvirtio_net\n"
    )
    assert result.changes == ["initramfs-tools modules: +virtio_net"]
    assert not guest_text.add_module_lines(result.text, ["virtio_blk", "virtio_net"]).changed


def test_dracut_conf_lists_the_drivers() -> None:
    assert 'add_drivers+=" virtio_blk virtio_net "' in guest_text.dracut_conf(
        ["virtio_blk", "virtio_net"]
    )


def test_dpkg_status_lists_only_installed_packages() -> None:
    status = (
        "Package: open-vm-tools\nStatus: install ok installed\nVersion: 2:12.2.0\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: bash\nStatus: install ok installed\nDescription: shell\n continued\n"
    )
    assert guest_text.dpkg_installed(status) == {"open-vm-tools": "2:12.2.0", "bash": ""}


def test_kernels_need_an_image_and_modules_and_sort_by_version() -> None:
    boot = ["vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "vmlinuz-5.10.0-1-amd64", "grub"]
    modules = ["6.1.0-10-amd64", "6.1.0-9-amd64", "4.19.0-1-amd64"]
    assert guest_text.kernel_versions(boot, modules) == ["6.1.0-9-amd64", "6.1.0-10-amd64"]
    assert guest_text.initramfs_for("6.1", ["initramfs-6.1.img"]) == "initramfs-6.1.img"
    assert guest_text.initramfs_for("6.1", ["initrd.img-6.1"]) == "initrd.img-6.1"
    assert guest_text.initramfs_for("6.2", ["initrd.img-6.1"]) is None


def test_backups_in_globbed_directories_are_hidden() -> None:
    assert guest_text.backup_path("/etc/fstab") == "/etc/fstab.hyper2kvm.bak"
    assert (
        guest_text.backup_path("/etc/network/interfaces.d/ens192")
        == "/etc/network/interfaces.d/.ens192.hyper2kvm.bak"
    )
