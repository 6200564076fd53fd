"""Dynamic provisioning of PersistentVolumeClaims as local volumes that kubelet mounts.

The real PV controller in kube-controller-manager binds claims; what a cluster adds is a
provisioner for its StorageClass. This one creates, for each pending claim of its class, a
`local` PersistentVolume already reserved for the claim:

- volumeMode Filesystem: a folder <root>/<namespace>/<claim>. kubelet bind-mounts it and
  applies the Pod's fsGroup to it, as with any local or CSI volume;
- volumeMode Block: a sparse file of the claim's size behind a loop device, which kubelet
  maps into the container as a block device.

Every node sees the host's file system, so the volume's node affinity names all nodes and a
claim can be used from any of them (ReadWriteMany included). Released volumes of this class
(reclaim policy Delete) are deleted with their folder, or their loop device and file.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.cluster.harness.kube import Kube, KubeError

Obj = dict[str, Any]
STORAGE_CLASS = "hyper2kvm-local"
PROVISIONER = "hyper2kvm.io/local"
BACKING_ANNOTATION = "hyper2kvm.io/backing-file"  # a Block volume's file behind its loop device
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6,
          "G": 10**9, "T": 10**12}  # fmt: skip
_log = logging.getLogger("hyper2kvm.cluster.provisioner")


def quantity_bytes(quantity: str) -> int:
    for suffix, factor in sorted(_UNITS.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


class LocalProvisioner:
    def __init__(self, kube: Kube, root: Path, nodes: tuple[str, ...]) -> None:
        self.kube = kube
        self.root = root
        self.nodes = nodes

    def ensure_storage_class(self, *, default: bool) -> None:
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
        body: Obj = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": annotations},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            self.kube.create("/apis/storage.k8s.io/v1/storageclasses", body)
        except KubeError as exc:
            if exc.status != 409:
                raise

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.root / namespace / claim

    def on_claim(self, event: str, pvc: Obj) -> None:
        spec = pvc.get("spec", {})
        if (
            event == "DELETED"
            or spec.get("volumeName")
            or spec.get("storageClassName") != STORAGE_CLASS
        ):
            return
        meta = pvc["metadata"]
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        mode = spec.get("volumeMode", "Filesystem")
        annotations = {"pv.kubernetes.io/provisioned-by": PROVISIONER}
        folder = self.claim_dir(meta["namespace"], meta["name"])
        if mode == "Block":
            path, backing = self._loop_device(folder, quantity_bytes(size))
            annotations[BACKING_ANNOTATION] = str(backing)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder)
        volume: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}", "annotations": annotations},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": mode,
                # The PV controller completes the binding of a volume reserved this way.
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "local": {"path": path},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": list(self.nodes),
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        try:
            self.kube.create("/api/v1/persistentvolumes", volume)
        except KubeError as exc:
            if exc.status != 409:
                _log.warning("provisioning %s/%s: %s", meta["namespace"], meta["name"], exc)

    def _loop_device(self, folder: Path, size: int) -> tuple[str, Path]:
        folder.parent.mkdir(parents=True, exist_ok=True)
        backing = folder.with_name(folder.name + ".block")
        with backing.open("wb") as stream:
            stream.truncate(size)
        done = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip(), backing

    def on_volume(self, event: str, pv: Obj) -> None:
        meta, spec = pv.get("metadata", {}), pv.get("spec", {})
        annotations = meta.get("annotations", {})
        ours = annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        released = pv.get("status", {}).get("phase") == "Released"
        if event == "DELETED" or not ours or not released:
            return
        self.kube.delete(f"/api/v1/persistentvolumes/{meta['name']}")
        self._release(spec.get("local", {}).get("path", ""), annotations.get(BACKING_ANNOTATION))

    def _release(self, path: str, backing: str | None) -> None:
        if backing is not None:
            subprocess.run(["losetup", "--detach", path], capture_output=True, check=False)
            Path(backing).unlink(missing_ok=True)
            return
        folder = Path(path)
        # Only folders this provisioner made are removed with the volume.
        if folder.is_relative_to(self.root) and folder != self.root:
            shutil.rmtree(folder, ignore_errors=True)

    def release_all(self) -> None:
        """At the cluster's end: loop devices whose files are under this provisioner's root."""
        done = subprocess.run(
            ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in done.stdout.splitlines():
            name, _, file = line.strip().partition(" ")
            if file.strip() and Path(file.strip()).is_relative_to(self.root):
                subprocess.run(["losetup", "--detach", name], capture_output=True, check=False)
