"""Dynamic provisioning of PersistentVolumeClaims as host folders.

The real PV controller in kube-controller-manager binds claims; what a cluster adds is a
provisioner for its StorageClass. This one creates, for each pending claim of its class, a
hostPath PersistentVolume on <root>/<namespace>/<claim> already reserved for the claim, and
deletes released volumes of its own (reclaim policy Delete) with their folders.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tests.cluster.harness.kube import Kube, KubeError
from tests.cluster.harness.volumes import pvc_fallback_dir

Obj = dict[str, Any]
STORAGE_CLASS = "hyper2kvm-host-folder"
PROVISIONER = "hyper2kvm.io/host-folder"
_log = logging.getLogger("hyper2kvm.cluster.provisioner")


class HostFolderProvisioner:
    def __init__(self, kube: Kube, root: Path) -> None:
        self.kube = kube
        self.root = root

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

    def on_claim(self, event: str, pvc: Obj) -> None:
        spec = pvc.get("spec", {})
        if (
            event == "DELETED"
            or spec.get("volumeName")
            or spec.get("storageClassName") != (STORAGE_CLASS)
        ):
            return
        meta = pvc["metadata"]
        folder = pvc_fallback_dir(self.root, meta["namespace"], meta["name"])
        folder.mkdir(parents=True, exist_ok=True)
        size = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        volume: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta['uid']}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                # The PV controller completes the binding of a volume reserved this way.
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
            },
        }
        try:
            self.kube.create("/api/v1/persistentvolumes", volume)
        except KubeError as exc:
            if exc.status != 409:
                _log.warning("provisioning %s/%s: %s", meta["namespace"], meta["name"], exc)

    def on_volume(self, event: str, pv: Obj) -> None:
        meta, spec = pv.get("metadata", {}), pv.get("spec", {})
        ours = meta.get("annotations", {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        released = pv.get("status", {}).get("phase") == "Released"
        if event == "DELETED" or not ours or not released:
            return
        folder = Path(spec.get("hostPath", {}).get("path", ""))
        # Only folders this provisioner made are removed with the volume.
        if folder.is_relative_to(self.root) and folder != self.root:
            shutil.rmtree(folder, ignore_errors=True)
        self.kube.delete(f"/api/v1/persistentvolumes/{meta['name']}")
