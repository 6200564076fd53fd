#!/usr/bin/env bash
# A local Kubernetes cluster (control plane and real nodes), for manual use and the demo.
#
#   hack/cluster.sh up    [STATE_DIR]   build if needed, start in the background, print KUBECONFIG
#   hack/cluster.sh down  [STATE_DIR]   stop everything that "up" started
#   hack/cluster.sh env   [STATE_DIR]   print "export KUBECONFIG=..." for eval
#
# STATE_DIR defaults to ${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}/cluster. It holds the
# kubeconfig, certificates, etcd data, component logs (logs/), the supervisor's log
# (harness.log), each node's kubelet, containerd and logs (nodes/NAME/) and the claims'
# volumes (volumes/). HYPER2KVM_CLUSTER_NODES sets how many nodes run (default 2). Needs
# root: the nodes are network, mount and PID namespaces of this machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
python="${PYTHON:-$root/.venv/bin/python}"
cmd="${1:-}"
state="${2:-$cache/cluster}"
pidfile="$state/harness.pid"
nodes="${HYPER2KVM_CLUSTER_NODES:-2}"

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

case "$cmd" in
  up)
    if running; then
      echo "$state/kubeconfig"
      exit 0
    fi
    # Built (or found in the cache) before the supervisor starts, so that a cold build shows.
    bash "$root/hack/k8s/build.sh" >/dev/null
    bash "$root/hack/node/build.sh" >/dev/null
    bash "$root/hack/images.sh" >/dev/null
    mkdir -p "$state"
    rm -f "$state/ready"
    # The supervisor owns every component: stopping it (down) tears all of them down, and
    # if it is killed outright the kernel ends its children (parent-death signal).
    cd "$root"
    setsid "$python" -m tests.cluster.harness up --state-dir "$state" --nodes "$nodes" \
      >"$state/harness.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 600); do
      [[ -f "$state/ready" ]] && { echo "$state/kubeconfig"; exit 0; }
      running || break
      sleep 0.2
    done
    echo "cluster.sh: the cluster did not come up; see $state/harness.log and $state/logs/" >&2
    tail -n 20 "$state/harness.log" >&2 || true
    "$0" down "$state" || true
    exit 1
    ;;
  down)
    if running; then
      pid="$(cat "$pidfile")"
      kill -TERM "$pid"
      for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "cluster.sh: supervisor $pid did not stop; killing it" >&2
        kill -KILL "$pid"
      fi
    fi
    rm -f "$pidfile" "$state/ready"
    ;;
  env)
    echo "export KUBECONFIG=$state/kubeconfig"
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
