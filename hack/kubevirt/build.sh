#!/usr/bin/env bash
# Build kubevirt-check (main.go, rules.go): decodes a VirtualMachine strictly into KubeVirt's own Go
# type, so the worker's `kubevirt` output is checked against the API it targets.
#
# Output: ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/kubevirt-check-<api version>-<source hash>/bin/
#   kubevirt-check
# A second run finds it and returns at once, printing the bin directory.
# --print-bin-dir prints that directory without building (the tests ask it where to look).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
# shellcheck source=../cache-lock.sh
source "$here/../cache-lock.sh"
cache_lock kubevirt

api_version="$(awk '$1 == "kubevirt.io/api" {print $2; exit}' "$here/go.mod")"
[[ -n "$api_version" ]] || { echo "kubevirt/build.sh: no kubevirt.io/api in go.mod" >&2; exit 1; }
# The checker's own source is part of the key: an edit to it builds a new binary.
source_hash="$(cat "$here"/*.go "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
bin="$cache/kubevirt-check-$api_version-$source_hash/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then echo "$bin"; exit 0; fi
if [[ -x "$bin/kubevirt-check" ]]; then echo "$bin"; exit 0; fi

# shellcheck source=../go-env.sh
source "$here/../go-env.sh"
start=$(date +%s)
echo "kubevirt/build.sh: building kubevirt-check (kubevirt.io/api $api_version) into $bin" >&2
mkdir -p "$bin"
# Built beside its final name and renamed: an interrupted build leaves no binary that runs.
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
  -p "${HYPER2KVM_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" -o "$bin/.kubevirt-check.partial" .)
mv -f "$bin/.kubevirt-check.partial" "$bin/kubevirt-check"
echo "kubevirt/build.sh: ready in $(( $(date +%s) - start ))s" >&2
echo "$bin"
