#!/usr/bin/env bash
# Install the Debian packages the worker and the tests need, only when missing.
# Idempotent: a machine that has them all runs no apt command at all.
set -euo pipefail

packages=(
    qemu-utils          # qemu-img, qemu-nbd: conversion, compare, map
    nbdkit              # sources: file and ssh plugins, tar and retry filters
    nbdkit-plugin-python  # runs the worker's HTTP(S) range reader (range_reader.py)
    openssh-server      # sshd: the tests' ESXi-over-SSH source is a real OpenSSH server
    openssh-client      # ssh-keygen: the tests' host and client keys
    libnbd-bin          # nbdcopy, nbdinfo: streaming virtual content for digests
    libguestfs-tools    # offline_fix and guest inspection
    linux-image-amd64   # the kernel supermin builds libguestfs' appliance from: a machine that
                        # boots an external kernel has none in /boot
    qemu-system-x86     # the libguestfs appliance, and the offline_fix boot test
    debootstrap         # the Debian test guest of the offline_fix tests
    cryptsetup-bin      # an encrypted test disk that offline_fix must refuse
    util-linux          # blkid: filesystem detection; sfdisk for test disks
    fdisk               # sfdisk (Debian 12 ships it apart from util-linux)
    e2fsprogs           # mkfs.ext4 for test and demo disks
    tar                 # the nbdkit tar filter runs it
    prometheus          # promtool: the chart's alert rules are unit-tested with it
    lua5.1              # the Argo CD health check (Argo CD runs Lua 5.1) is tested with it
    buildah             # make images: builds the Dockerfiles with no daemon and no registry
    gcc                 # the pause image's program (Kubernetes' pause.c), built static
    libc6-dev           #   with its static C library
    runc                # the test cluster's nodes: containerd runs containers with it
    containernetworking-plugins  # their Pod networks (bridge, host-local, portmap, loopback)
    iptables            # kube-proxy's Service rules and the CNI bridge's, inside each node
    mount               # losetup: loop devices behind the test cluster's Block volumes
    nginx-light         # make bench: the web server behind the remote benchmark's shaped link
    iproute2            # make bench: its network namespace, veth pair and tc rate limit
)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "installing Debian packages: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
