"""Freeing a guest's network configuration from VMware NIC names and MAC addresses."""

from __future__ import annotations

from hyper2kvm_worker import guest_network

PLAN = {"ens192": "eth0", "ens224": "eth1"}


def test_names_sort_by_slot_and_map_to_eth() -> None:
    texts = ["auto ens224\niface ens224 inet dhcp\n", "iface ens192 inet static\n# ens999\n"]
    names = guest_network.interface_names(texts)
    assert names == ["ens192", "ens224"]
    assert guest_network.rename_plan(names) == PLAN
    assert guest_network.rename_plan(["eth0", "ens160"]) == {"ens160": "eth1"}
    assert guest_network.rename_plan(["eth0"]) == {}


def test_only_interface_names_count_not_words_that_look_alike() -> None:
    text = "iface enp11s0 inet dhcp\n  pre-up /usr/local/bin/ensure-route eno\n  # ens33\n"
    assert guest_network.interface_names([text]) == ["enp11s0"]
    names = ["eno1", "enx0050568a1234", "ens160f1", "enp3s0"]
    assert set(guest_network.interface_names([" ".join(names)])) == set(names)


def test_ifupdown_keeps_static_address_and_drops_the_mac() -> None:
    text = (
        "auto lo\niface lo inet loopback\n\n"
        "allow-hotplug ens192\n"
        "iface ens192 inet static\n"
        "    address 192.168.77.10/24\n"
        "    gateway 192.168.77.1\n"
        "    hwaddress ether 00:50:56:8a:12:34\n"
        "auto ens192.100\niface ens192.100 inet manual\n"
        "auto br0\niface br0 inet dhcp\n    bridge_ports ens224\n"
    )
    result = guest_network.rewrite_ifupdown(text, PLAN)
    assert result.text == (
        "auto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\n"
        "iface eth0 inet static\n"
        "    address 192.168.77.10/24\n"
        "    gateway 192.168.77.1\n"
        "auto eth0.100\niface eth0.100 inet manual\n"
        "auto br0\niface br0 inet dhcp\n    bridge_ports eth1\n"
    )
    again = guest_network.rewrite_ifupdown(result.text, guest_network.rename_plan(["eth0"]))
    assert not again.changed


def test_netplan_drops_mac_matches_and_empty_match_blocks() -> None:
    text = (
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    ens192:\n"
        "      match:\n"
        "        macaddress: 00:50:56:8a:12:34\n"
        "      set-name: ens192\n"
        "      addresses: [192.168.77.10/24]\n"
        "    ens224:\n"
        "      match:\n"
        "        macaddress: 00:50:56:8a:12:35\n"
        "        driver: vmxnet3\n"
        "      dhcp4: true\n"
    )
    result = guest_network.rewrite_netplan(text, PLAN)
    assert result.text == (
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    eth0:\n"
        "      addresses: [192.168.77.10/24]\n"
        "    eth1:\n"
        "      match:\n"
        "        driver: vmxnet3\n"
        "      dhcp4: true\n"
    )


def test_networkmanager_keyfile() -> None:
    text = (
        "[connection]\nid=Wired\ntype=ethernet\ninterface-name=ens192\n\n"
        "[ethernet]\nmac-address=00:50:56:8A:12:34\ncloned-mac-address=preserve\n\n"
        "[ipv4]\naddress1=10.0.0.5/24,10.0.0.1\nmethod=manual\n"
    )
    result = guest_network.rewrite_keyfile(text, PLAN)
    assert "interface-name=eth0\n" in result.text
    assert "mac-address=00:50" not in result.text
    assert "cloned-mac-address=preserve" in result.text
    assert "address1=10.0.0.5/24,10.0.0.1" in result.text


def test_ifcfg_and_networkd() -> None:
    ifcfg = guest_network.rewrite_ifcfg(
        "DEVICE=ens192\nNAME=ens192\nHWADDR=00:50:56:8a:12:34\nIPADDR=10.0.0.5\n", PLAN
    )
    assert ifcfg.text == "DEVICE=eth0\nNAME=eth0\nIPADDR=10.0.0.5\n"
    networkd = guest_network.rewrite_networkd(
        "[Match]\nName=ens192\nMACAddress=00:50:56:8a:12:34\n\n[Network]\nAddress=10.0.0.5/24\n",
        PLAN,
    )
    assert networkd.text == "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.5/24\n"


def test_udev_rules_binding_vmware_nics_are_dropped() -> None:
    text = (
        "# generated\n"
        'SUBSYSTEM=="net", ATTR{address}=="00:50:56:8a:12:34", NAME="ens192"\n'
        'SUBSYSTEM=="net", ATTR{address}=="52:54:00:12:34:56", NAME="lan0"\n'
    )
    result = guest_network.rewrite_udev_rules(text)
    assert (
        result.text
        == '# generated\nSUBSYSTEM=="net", ATTR{address}=="52:54:00:12:34:56", NAME="lan0"\n'
    )
    assert guest_network.is_vmware_link_file(
        "[Match]\nMACAddress=00:0c:29:aa:bb:cc\n[Link]\nName=lan0\n"
    )
    assert not guest_network.is_vmware_link_file("[Match]\nDriver=virtio_net\n[Link]\nName=lan0\n")
