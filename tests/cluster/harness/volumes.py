"""Pod volumes as host folders.

hostPath    the same path on this machine (the nodes and the host are one machine)
PVC         the folder of the bound PersistentVolume (hostPath/local), else
            <state>/pvc/<namespace>/<claim>; a generic ephemeral volume is its claim
emptyDir    <pod dir>/volumes/<name>
configMap, secret, projected (configMap, secret, downwardAPI, serviceAccountToken sources)
            files written into <pod dir>/volumes/<name>, as kubelet would project them
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.cluster.harness.kube import Kube, KubeError
from tests.cluster.harness.podspec import PodConfigError, field_ref

Obj = dict[str, Any]


def pvc_fallback_dir(root: Path, namespace: str, claim: str) -> Path:
    return root / namespace / claim


class Volumes:
    def __init__(self, kube: Kube, pvc_root: Path) -> None:
        self.kube = kube
        self.pvc_root = pvc_root

    def host_dirs(self, pod: Obj, pod_dir: Path) -> dict[str, str]:
        """Create or find the host folder of every volume of ``pod``: volume name -> path."""
        dirs: dict[str, str] = {}
        for volume in pod["spec"].get("volumes", []):
            name = volume["name"]
            local = pod_dir / "volumes" / name
            if "hostPath" in volume:
                dirs[name] = self._host_path(volume["hostPath"])
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                dirs[name] = str(self._claim_dir(pod["metadata"]["namespace"], claim))
            elif "ephemeral" in volume:
                # The ephemeral-volume controller names the claim <pod>-<volume>, and the
                # scheduler binds the Pod only once that claim is bound.
                claim = f"{pod['metadata']['name']}-{name}"
                dirs[name] = str(self._claim_dir(pod["metadata"]["namespace"], claim))
            elif "emptyDir" in volume:
                local.mkdir(parents=True, exist_ok=True)
                dirs[name] = str(local)
            elif {"configMap", "secret", "projected", "downwardAPI"} & volume.keys():
                local.mkdir(parents=True, exist_ok=True)
                for rel, content in self._projected_files(pod, volume).items():
                    target = local / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                dirs[name] = str(local)
            else:
                kinds = sorted(set(volume) - {"name"})
                raise PodConfigError(f"volume {name!r}: unsupported type {kinds}")
        return dirs

    @staticmethod
    def _host_path(spec: Obj) -> str:
        path = Path(spec["path"])
        kind = spec.get("type", "")
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif kind in ("Directory", "File") and not path.exists():
            raise PodConfigError(f"hostPath {path} does not exist")
        return str(path)

    def _claim_dir(self, namespace: str, claim: str) -> Path:
        pvc = self.kube.get_or_none(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"
        )
        if pvc is None:
            raise PodConfigError(f"persistentvolumeclaim {claim!r} not found")
        volume_name = pvc.get("spec", {}).get("volumeName")
        if volume_name:
            pv = self.kube.get_or_none(f"/api/v1/persistentvolumes/{volume_name}") or {}
            spec = pv.get("spec", {})
            source = spec.get("hostPath") or spec.get("local")
            if source:
                path = Path(source["path"])
                path.mkdir(parents=True, exist_ok=True)
                return path
        path = pvc_fallback_dir(self.pvc_root, namespace, claim)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _projected_files(self, pod: Obj, volume: Obj) -> dict[str, bytes]:
        if "projected" in volume:
            sources = volume["projected"].get("sources", [])
        else:
            sources = [{k: v for k, v in volume.items() if k != "name"}]
        files: dict[str, bytes] = {}
        for source in sources:
            files.update(self._source_files(pod, source))
        return files

    def _source_files(self, pod: Obj, source: Obj) -> dict[str, bytes]:
        namespace = pod["metadata"]["namespace"]
        if "configMap" in source or "secret" in source:
            kind = "configmaps" if "configMap" in source else "secrets"
            spec = source.get("configMap") or source["secret"]
            name = spec.get("name") or spec.get("secretName")
            obj = self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
            if obj is None:
                if spec.get("optional"):
                    return {}
                raise PodConfigError(f"{kind[:-1]} {name!r} not found")
            data = {k: v.encode() for k, v in obj.get("data", {}).items()}
            if kind == "secrets":
                data = {k: base64.b64decode(v) for k, v in data.items()}
            else:
                data.update({k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()})
            items = spec.get("items")
            if not items:
                return data
            return {i["path"]: data[i["key"]] for i in items if i["key"] in data}
        if "downwardAPI" in source:
            return {
                item["path"]: field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
                for item in source["downwardAPI"].get("items", [])
                if "fieldRef" in item
            }
        if "serviceAccountToken" in source:
            return {source["serviceAccountToken"]["path"]: self._token(pod, source).encode()}
        raise PodConfigError(f"unsupported projected source {sorted(source)}")

    def _token(self, pod: Obj, source: Obj) -> str:
        spec = source["serviceAccountToken"]
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [spec["audience"]] if spec.get("audience") else [],
                "expirationSeconds": spec.get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            token: str = self.kube.create(path, request)["status"]["token"]
        except KubeError as exc:
            raise PodConfigError(f"token for service account {account!r}: {exc.message}") from exc
        return token
