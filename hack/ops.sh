#!/usr/bin/env bash
# Operate hyper2kvm on a cluster: the commands behind `make deploy`, `make status`, ...
# Every command uses kubectl (and helm) against $KUBECONFIG or the current context.
#   RELEASE, NAMESPACE  the Helm release and its namespace (hyperkvm, hyper2kvm-system)
#   HELM                helm to use (default: helm on PATH, else the one hack/tools builds)
set -euo pipefail

RELEASE="${RELEASE:-hyper2kvm}"
NAMESPACE="${NAMESPACE:-hyper2kvm-system}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$here/../charts/hyper2kvm"
operator_selector="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator"
terminal="Succeeded Failed Cancelled"

die() { echo "$*" >&2; exit 2; }

helm_bin() {
  if [[ -n "${HELM:-}" ]]; then echo "$HELM"
  elif command -v helm >/dev/null; then command -v helm
  else echo "$("$here/tools/build.sh")/bin/helm"
  fi
}

# A setting of the deployed operator (an env var of its Deployment), or a default.
operator_setting() {
  local value
  value="$(kubectl get deployment -n "$NAMESPACE" -l "$operator_selector" \
    -o jsonpath="{.items[0].spec.template.spec.containers[0].env[?(@.name==\"$1\")].value}" \
    2>/dev/null || true)"
  echo "${value:-$2}"
}

cmd_deploy() {
  # helm installs crds/ on the first install only and never upgrades them: apply them
  # first, server-side (the MigrationJob CRD is too large for a client-side annotation).
  kubectl apply --server-side --force-conflicts --field-manager=hyper2kvm-deploy \
    -f "$chart/crds" >/dev/null
  "$(helm_bin)" upgrade --install "$RELEASE" "$chart" --namespace "$NAMESPACE" \
    --create-namespace --wait --timeout "${TIMEOUT:-5m}" "$@"
}

cmd_undeploy() {
  "$(helm_bin)" uninstall "$RELEASE" --namespace "$NAMESPACE" --wait
  echo "Kept: the MigrationJob CRD and its jobs, and the chart's input/output claims."
  echo "Worker Pods still running finish; nothing updates their jobs until the operator is back."
}

cmd_label_nodes() {
  [[ $# -gt 0 ]] || die 'label-nodes: name the nodes, e.g. make label-nodes NODES="node-a node-b"'
  local label
  label="$(operator_setting HYPER2KVM_NODE_LABEL hyper2kvm.io/worker)"
  kubectl label node --overwrite "$@" "$label=true"
}

cmd_submit() {
  local file="${1:-}"
  [[ -n "$file" && -f "$file" ]] || die "submit: JOB must name a MigrationJob file (got '${file}')"
  kubectl apply -f "$file"
  local last="" table phases
  while true; do
    table="$(kubectl get -f "$file" -o wide)"
    if [[ "$table" != "$last" ]]; then
      if [[ -z "$last" ]]; then echo "$table"; else echo "$table" | tail -n +2; fi
      last="$table"
    fi
    phases="$(kubectl get -f "$file" --no-headers -o custom-columns=PHASE:.status.phase)"
    local done=1 failed=0 phase
    [[ -n "$phases" ]] || done=0  # no answer is not an end
    for phase in $phases; do
      [[ " $terminal " == *" $phase "* ]] || done=0
      [[ "$phase" == Failed || "$phase" == Cancelled ]] && failed=1
    done
    if [[ $done == 1 ]]; then
      # The job may have ended between the table above and this look: show how it ended.
      table="$(kubectl get -f "$file" -o wide)"
      [[ "$table" == "$last" ]] || echo "$table" | tail -n +2
      return "$failed"
    fi
    sleep "${INTERVAL:-2}"
  done
}

job_args() {
  [[ -n "${1:-}" ]] || die "JOB=<name> is required"
  if [[ -n "${2:-}" ]]; then echo "--namespace=$2"; fi
}

cmd_job_status() {
  local ns; ns="$(job_args "$@")"
  kubectl get migrationjob "$1" $ns -o wide
  echo
  kubectl get migrationjob "$1" $ns -o jsonpath='{"reason:  "}{.status.reason}{"\nmessage: "}{.status.message}{"\nattempt: "}{.status.attempt}{"\n\nconditions:\n"}{range .status.conditions[*]}{"  "}{.type}{"="}{.status}{"  "}{.reason}{": "}{.message}{"\n"}{end}{"\ndisks:\n"}{range .status.disks[*]}{"  "}{.name}{"  "}{.phase}{"  "}{.output}{"  verified="}{.verified}{"\n"}{end}'
}

cmd_job_events() {
  local ns; ns="$(job_args "$@")"
  kubectl get events $ns --sort-by=.metadata.creationTimestamp \
    --field-selector "involvedObject.kind=MigrationJob,involvedObject.name=$1"
  local pod
  for pod in $(kubectl get pods $ns -l "hyper2kvm.io/job=$1" -o jsonpath='{.items[*].metadata.name}'); do
    echo; echo "Pod $pod:"
    kubectl get events $ns --sort-by=.metadata.creationTimestamp \
      --field-selector "involvedObject.kind=Pod,involvedObject.name=$pod"
  done
}

cmd_logs() {
  if [[ -n "${1:-}" ]]; then
    local ns; ns="$(job_args "$@")"
    kubectl logs $ns -l "hyper2kvm.io/job=$1" --prefix --tail="${TAIL:-200}"
  else
    kubectl logs -n "$NAMESPACE" -l "$operator_selector" --prefix --tail="${TAIL:-200}"
  fi
}

cmd_status() {
  echo "== operator: release $RELEASE in $NAMESPACE"
  kubectl get deployment,pods -n "$NAMESPACE" -l "$operator_selector"
  echo
  echo "== CRD"
  kubectl get crd migrationjobs.hyper2kvm.io \
    -o custom-columns='NAME:.metadata.name,ESTABLISHED:.status.conditions[?(@.type=="Established")].status,VERSIONS:.spec.versions[*].name'
  echo
  local label slots
  label="$(operator_setting HYPER2KVM_NODE_LABEL hyper2kvm.io/worker)"
  slots="$(operator_setting HYPER2KVM_DEFAULT_SLOTS 2)"
  echo "== worker nodes ($label=true)"
  # Slots as the operator counts them: the node's hyper2kvm.io/slots label, else its
  # annotation, else the default; busy = worker Pods placed there and not finished.
  {
    kubectl get nodes -l "$label=true" -o jsonpath='{range .items[*]}node {.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.metadata.labels.hyper2kvm\.io/slots}/{.metadata.annotations.hyper2kvm\.io/slots}{"\n"}{end}'
    kubectl get pods -A -l app.kubernetes.io/name=hyper2kvm-worker \
      --field-selector=status.phase!=Succeeded,status.phase!=Failed \
      -o jsonpath='{range .items[*]}pod {.metadata.labels.hyper2kvm\.io/node}{"\n"}{end}'
  } | awk -v fallback="$slots" '
    $1 == "node" { split($4, s, "/"); n = (s[1] ~ /^[0-9]+$/) ? s[1] : (s[2] ~ /^[0-9]+$/) ? s[2] : fallback
                   order[++count] = $2; ready[$2] = $3; total[$2] = n }
    $1 == "pod"  { busy[$2]++ }
    END { printf "%-32s %-6s %5s %5s %5s\n", "NODE", "READY", "SLOTS", "BUSY", "FREE"
          for (i = 1; i <= count; i++) { n = order[i]; free = total[n] - busy[n]; if (free < 0) free = 0
            printf "%-32s %-6s %5d %5d %5d\n", n, ready[n], total[n], busy[n], free }
          if (count == 0) print "(none: label nodes with make label-nodes NODES=...)" }'
  echo
  echo "== jobs by phase"
  kubectl get migrationjobs -A --no-headers -o custom-columns=PHASE:.status.phase 2>/dev/null |
    sed 's/^<none>$/New/' | sort | uniq -c | awk '{printf "%-10s %d\n", $2, $1}
                                                   END { if (NR == 0) print "(no jobs)" }'
}

cmd_capabilities() {
  local label image policy command nodes node pod rc=0
  label="$(operator_setting HYPER2KVM_NODE_LABEL hyper2kvm.io/worker)"
  image="$(operator_setting HYPER2KVM_WORKER_IMAGE "")"
  policy="$(operator_setting HYPER2KVM_WORKER_PULL_POLICY IfNotPresent)"
  command="$(operator_setting HYPER2KVM_WORKER_COMMAND hyper2kvm-worker)"
  [[ -n "$image" ]] || die "capabilities: no operator release $RELEASE in $NAMESPACE (make deploy first)"
  nodes="$(kubectl get nodes -l "$label=true" -o jsonpath='{.items[*].metadata.name}')"
  [[ -n "$nodes" ]] || die "capabilities: no node is labelled $label=true"
  local words=() argv="" word
  read -ra words <<< "$command"
  for word in "${words[@]}" capabilities; do argv+="\"$word\","; done
  for node in $nodes; do
    # A one-off Pod of the worker image on that node, as locked down as a worker.
    pod="$(kubectl create -n "$NAMESPACE" -o name -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  generateName: hyper2kvm-capabilities-
  labels: {app.kubernetes.io/name: hyper2kvm-capabilities}
spec:
  nodeName: $node
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    seccompProfile: {type: RuntimeDefault}
  volumes: [{name: tmp, emptyDir: {sizeLimit: 64Mi}}]
  containers:
    - name: capabilities
      image: $image
      imagePullPolicy: ${policy:-IfNotPresent}
      command: [${argv%,}]
      volumeMounts: [{name: tmp, mountPath: /tmp}]
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
YAML
)"
    echo "== $node"
    if kubectl wait -n "$NAMESPACE" "$pod" --timeout="${TIMEOUT:-120s}" \
        --for=jsonpath='{.status.phase}'=Succeeded >/dev/null; then
      kubectl logs -n "$NAMESPACE" "$pod"
    else
      rc=1
      kubectl get -n "$NAMESPACE" "$pod" -o wide
      kubectl logs -n "$NAMESPACE" "$pod" || true
    fi
    kubectl delete -n "$NAMESPACE" "$pod" --wait=false >/dev/null
  done
  return "$rc"
}

command="${1:-}"
[[ -n "$command" ]] || die "usage: ops.sh deploy|undeploy|label-nodes|submit|job-status|job-events|logs|status|capabilities"
shift
case "$command" in
  deploy|undeploy|submit|logs|status|capabilities) "cmd_$command" "$@" ;;
  label-nodes) cmd_label_nodes "$@" ;;
  job-status) cmd_job_status "$@" ;;
  job-events) cmd_job_events "$@" ;;
  *) die "ops.sh: unknown command $command" ;;
esac
