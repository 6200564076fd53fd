#!/usr/bin/env bash
# `make demo`: build a small Linux-like VMware disk, inspect it, convert it with a live
# progress bar, prove the result independently, then run the same work as a protocol job.
set -euo pipefail
cd "$(dirname "$0")/.."

worker=.venv/bin/hyper2kvm-worker
demo=demo-output
rm -rf "$demo"
mkdir -p "$demo/vmware" "$demo/kvm" "$demo/rootfs/etc"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. A 1 GiB guest disk as VMware exports it: GPT, an ext4 root, swap, inside an OVA"
raw="$demo/guest.raw"
truncate -s 1G "$raw"
printf 'label: gpt\nstart=2048, size=1638400, type=L, name=root\nsize=262144, type=S, name=swap\n' \
    | sfdisk -q "$raw"
echo "demo-guest" > "$demo/rootfs/etc/hostname"
printf 'UUID=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 / ext4 defaults 0 1\n' > "$demo/rootfs/etc/fstab"
head -c 96M /dev/urandom > "$demo/rootfs/payload.bin"   # something worth converting
mkfs.ext4 -q -F -L root -U 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 -d "$demo/rootfs" "$demo/root.ext4" 800M
mkswap -q -L swap "$demo/root.swap" >/dev/null 2>&1 || { truncate -s 128M "$demo/root.swap"; mkswap -q -L swap "$demo/root.swap"; }
dd if="$demo/root.ext4" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$demo/root.swap" of="$raw" bs=512 seek=1640448 conv=notrunc status=none
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$raw" "$demo/vmware/web01-disk1.vmdk"
tar -C "$demo/vmware" -cf "$demo/vmware/web01.ova" web01-disk1.vmdk
ls -lh "$demo/vmware"

say "2. What this node can do"
"$worker" capabilities --location "$demo/kvm" | grep -E '^(qemu_img|nbdkit|nbdcopy|libguestfs|kvm|ready):'

say "3. Inspect the disk inside the OVA, without extracting it"
"$worker" inspect "$demo/vmware/web01.ova"

say "4. Convert it to qcow2 (verified): nothing appears at the output path until it is proven equal"
"$worker" convert "$demo/vmware/web01.ova" "$demo/kvm/web01.qcow2"

say "5. Check the result independently"
qemu-img info "$demo/kvm/web01.qcow2" | grep -E 'file format|virtual size|disk size|compat'
qemu-img compare -f raw -F qcow2 "$raw" "$demo/kvm/web01.qcow2"

say "6. The same work as a Worker Job Protocol v1 job, as the operator runs it in a Pod"
cat > "$demo/job.json" <<JOB
{
  "version": "hyper2kvm.io/worker-job/v1",
  "name": "web01",
  "operation": "convert",
  "disks": [{
    "name": "disk1",
    "source": {"kind": "ova", "root": "$PWD/$demo/vmware", "path": "web01.ova"},
    "output": {"root": "$PWD/$demo/kvm", "path": "web01-job.raw", "format": "raw"}
  }]
}
JOB
"$worker" run --job "$demo/job.json" --listen 127.0.0.1:0 --result "$demo/result.json" \
    --events "$demo/events.jsonl" | grep -E '"type":"(state|listening)"'
echo "result ($(wc -c < "$demo/result.json") bytes, what a Pod's termination message carries):"
python3 -m json.tool "$demo/result.json"

rm -rf "$demo/rootfs" "$demo/root.ext4" "$demo/root.swap"

say "7. The operator, installed with its Helm chart on a local cluster: the images built here, run by real nodes"
state="$PWD/$demo/cluster"
cleanup() {
    hack/cluster.sh down "$state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
images="$(hack/images.sh)"   # built once and cached; imported into every node
hack/images.sh --sizes
image_values=""
for component in operator worker; do
    ref="$(cat "$images/$component.ref")"
    image_values+=" --set $component.image.repository=${ref%:*} --set $component.image.tag=${ref##*:}"
    image_values+=" --set $component.image.pullPolicy=Never"   # no registry: never pulled
done
export KUBECONFIG
KUBECONFIG="$(hack/cluster.sh up "$state")"
kubectl get nodes -o wide
# hostPath is off unless the admin's policy lists the folders jobs may read and write.
host_paths="--set policy.hostPaths[0].prefix=$PWD/$demo --set policy.hostPaths[0].write=true"
make -s deploy NAMESPACE=hyper2kvm-system \
    HELM_ARGS="--set operator.replicas=1 $image_values $host_paths" \
    | sed '/^2\./,$d'
make -s label-nodes NODES="$(kubectl get nodes -o jsonpath='{.items[*].metadata.name}')" >/dev/null
make -s status NAMESPACE=hyper2kvm-system
# hostPath keeps the node's ownership (fsGroup does not apply to it): the worker's user
# (10001, non-root in its image) must own the folder it writes.
install -d -o 10001 -g 10001 "$demo/kvm-cluster"
cat > "$demo/migrationjob.yaml" <<MJ
apiVersion: hyper2kvm.io/v1alpha1
kind: MigrationJob
metadata:
  name: web01
  namespace: default
spec:
  operation: convert
  disks:
    - name: disk1
      source:
        ova: {hostPath: {path: $PWD/$demo/vmware/web01.ova}}
      output:
        hostPath: {path: $PWD/$demo/kvm-cluster}
        path: web01.qcow2
MJ
cat "$demo/migrationjob.yaml"
make -s submit JOB="$demo/migrationjob.yaml" \
    || { echo "the job did not succeed; see: make logs NAMESPACE=hyper2kvm-system"; exit 1; }
echo
kubectl get mj web01 -o jsonpath='{range .status.history[*]}{.time}  {.phase}{"\n"}{end}'
kubectl get mj web01 -o jsonpath='digest: {.status.disks[0].digest}{"\n"}'
qemu-img compare -f raw -F qcow2 "$raw" "$demo/kvm-cluster/web01.qcow2"
make -s job-events JOB=web01 NS=default
say "Done: outputs are in $demo/kvm and $demo/kvm-cluster"
