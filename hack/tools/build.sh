#!/usr/bin/env bash
# Build the chart tooling from Go modules and fetch the monitoring CRDs the chart renders
# against; nothing comes from a release download page.
#
# Output: ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/tools-<helm version>/
#   bin/helm                      helm, from helm.sh/helm/v3 (version pinned in go.mod)
#   crds/monitoring.coreos.com_*  ServiceMonitor and PrometheusRule CRDs, from the
#                                 prometheus-operator module (version below)
# A second run finds them and returns at once, printing the directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
# shellcheck source=../cache-lock.sh
source "$here/../cache-lock.sh"
cache_lock tools
prometheus_operator_version=v0.85.0

# shellcheck source=../go-env.sh
source "$here/../go-env.sh"

helm_version="$(awk '$1 == "helm.sh/helm/v3" {print $2; exit}' "$here/go.mod")"
[[ -n "$helm_version" ]] || { echo "tools/build.sh: no helm version in go.mod" >&2; exit 1; }
client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$here/go.mod")"
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
out="$cache/tools-helm-$helm_version-k8s1.$k8s_minor-po-$prometheus_operator_version"
crds=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

ready=true
[[ -x "$out/bin/helm" ]] || ready=false
for c in "${crds[@]}"; do [[ -f "$out/crds/$c" ]] || ready=false; done
if $ready; then echo "$out"; exit 0; fi

start=$(date +%s)
mkdir -p "$out/bin" "$out/crds"
if [[ ! -x "$out/bin/helm" ]]; then
  echo "tools/build.sh: building helm $helm_version into $out/bin" >&2
  # The stamps helm's own Makefile sets: its version, and the default Kubernetes version
  # of `helm template` and `helm lint`, derived from client-go (v0.N -> 1.N) as upstream
  # does. Unstamped, helm renders for Kubernetes 1.20 and fails any kubeVersion >= 1.21.
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  (cd "$here" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
    -p "${HYPER2KVM_BUILD_JOBS:-2}" -trimpath -ldflags "$ldflags" \
    -o "$out/bin/helm" helm.sh/helm/v3/cmd/helm)
fi
module_dir="$(cd "$here" && go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
for c in "${crds[@]}"; do
  install -m 0644 "$module_dir/example/prometheus-operator-crd/$c" "$out/crds/$c"
done
echo "tools/build.sh: ready in $(( $(date +%s) - start ))s" >&2
echo "$out"
