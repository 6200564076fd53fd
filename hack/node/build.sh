#!/usr/bin/env bash
# Build containerd v2, its runc shim and ctr for the test cluster's nodes, from Go modules.
#
# Output: ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/containerd-<version>/bin/
#   containerd containerd-shim-runc-v2 ctr
# A second run finds them and returns at once. The version is go.mod's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
# shellcheck source=../cache-lock.sh
source "$here/../cache-lock.sh"
cache_lock node
# shellcheck source=../go-env.sh
source "$here/../go-env.sh"

version="$(awk '$1 == "github.com/containerd/containerd/v2" {print $2; exit}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "node/build.sh: no containerd version in go.mod" >&2; exit 1; }
out="$cache/containerd-$version/bin"
bins=(containerd containerd-shim-runc-v2 ctr)

if [[ "${1:-}" == "--print-bin-dir" ]]; then echo "$out"; exit 0; fi
ready=true
for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || ready=false; done
if $ready; then echo "$out"; exit 0; fi

start=$(date +%s)
mkdir -p "$out"
echo "node/build.sh: building containerd $version into $out" >&2
pkgs=()
for b in "${bins[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b"); done
# Static, like containerd's releases: no cgo, so no btrfs snapshotter (overlayfs is used).
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
  -p "${HYPER2KVM_BUILD_JOBS:-2}" -trimpath -tags no_btrfs \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$version" \
  -o "$out/" "${pkgs[@]}")
echo "node/build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
