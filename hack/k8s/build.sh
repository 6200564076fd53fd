#!/usr/bin/env bash
# Build the upstream control-plane binaries for the cluster tests from Go modules.
#
# Output: ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/k8s-<version>/bin/
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd
# A second run finds the binaries and returns at once. Versions come from go.mod
# (Kubernetes) and etcd/go.mod (etcd), so bumping a release is a go.mod edit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
# shellcheck source=../cache-lock.sh
source "$here/../cache-lock.sh"
cache_lock k8s

# shellcheck source=../go-env.sh
source "$here/../go-env.sh"

# A go.mod requirement line: "require MOD VER" or, inside a block, "MOD VER [// indirect]".
mod_version() {
  awk -v m="$2" '$1 == "require" && $2 == m {print $3; exit}
                 $1 == m && $2 ~ /^v/ {print $2; exit}' "$1"
}
k8s_version="$(mod_version "$here/go.mod" k8s.io/kubernetes)"
etcd_version="$(mod_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" ]] || {
  echo "build.sh: cannot read versions from go.mod files" >&2; exit 1; }

out="$cache/k8s-$k8s_version/bin"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd)

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$out"; exit 0
fi

missing=()
for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || missing+=("$b"); done
# etcd's version is part of the stamp: a new etcd pin rebuilds etcd only.
if [[ -x "$out/etcd" && "$(cat "$out/.etcd-version" 2>/dev/null)" != "$etcd_version" ]]; then
  missing+=(etcd)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
# Two cores are shared with other work: keep the package-level parallelism modest.
jobs="${HYPER2KVM_BUILD_JOBS:-2}"
major_minor="${k8s_version#v}"
major="${major_minor%%.*}"
minor="${major_minor#*.}"; minor="${minor%%.*}"
# Without the version stamp the binaries report v0.0.0-master, which breaks version
# skew checks in kubectl and the compatibility-version defaults of the API server.
vpkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldx=()
for p in "${vpkgs[@]}"; do
  ldx+=("-X $p.gitVersion=$k8s_version" "-X $p.gitMajor=$major" "-X $p.gitMinor=$minor"
        "-X $p.gitTreeState=clean" "-X $p.buildDate=1970-01-01T00:00:00Z")
done
ldflags="-s -w ${ldx[*]}"

start=$(date +%s)
k8s_pkgs=()
for b in "${missing[@]}"; do
  [[ "$b" == etcd ]] || k8s_pkgs+=("k8s.io/kubernetes/cmd/$b")
done
if [[ ${#k8s_pkgs[@]} -gt 0 ]]; then
  echo "build.sh: building ${k8s_pkgs[*]} ($k8s_version) into $out" >&2
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -p "$jobs" -trimpath \
    -ldflags="$ldflags" -o "$out/" "${k8s_pkgs[@]}")
fi
for b in "${missing[@]}"; do
  if [[ "$b" == etcd ]]; then
    echo "build.sh: building etcd ($etcd_version) into $out" >&2
    (cd "$here/etcd" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -p "$jobs" -trimpath \
      -ldflags="-s -w" -o "$out/etcd" .)
    echo "$etcd_version" > "$out/.etcd-version"
    break
  fi
done
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
