#!/usr/bin/env bash
# Build VMware's vCenter simulator (vcsim) and its CLI (govc) from the govmomi module.
#
# Output: ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/vcsim-<govmomi version>-<inputs>/bin/
#   vcsim govc
# The govmomi version comes from go.mod; <inputs> is a digest of this directory's sources,
# so any edit here builds afresh. A second run finds the binaries and returns at once,
# printing the bin directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
# shellcheck source=../cache-lock.sh
source "$here/../cache-lock.sh"
cache_lock vcsim

# shellcheck source=../go-env.sh
source "$here/../go-env.sh"

version="$(awk '$1 == "require" && $2 == "github.com/vmware/govmomi" {print $3; exit}
                $1 == "github.com/vmware/govmomi" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "vcsim/build.sh: no govmomi version in go.mod" >&2; exit 1; }
inputs="$(cd "$here" && cat go.mod go.sum build.sh vcsim/main.go govc/main.go | sha256sum | cut -c1-12)"
out="$cache/vcsim-$version-$inputs/bin"

if [[ -x "$out/vcsim" && -x "$out/govc" ]]; then echo "$out"; exit 0; fi

start=$(date +%s)
mkdir -p "$out"
echo "vcsim/build.sh: building vcsim and govc (govmomi $version) into $out" >&2
# The version stamps upstream's release build sets; netgo as upstream builds them.
ldflags="-s -w -X main.buildVersion=$version -X github.com/vmware/govmomi/cli/flags.BuildVersion=$version"
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -tags netgo \
  -p "${HYPER2KVM_BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" -o "$out/" ./vcsim ./govc)
echo "vcsim/build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
