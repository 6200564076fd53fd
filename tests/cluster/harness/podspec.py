"""What a container would see, turned into a local process's argv, environment and paths.

Pure functions over the Pod as a dict; the node agent supplies API look-ups and host folders.

Paths: without a mount namespace a process cannot see a volume at its mountPath, so every
volume mount (and the termination-message file) becomes an entry ``container path -> host
path``. The entries are applied to argv, env values and workingDir: a value that equals a
container path, starts with it followed by "/", or is ``--flag=<such a path>`` is rewritten to
the host path. The table is also given to the process as JSON in HYPER2KVM_VOLUME_MAP so a
program can translate paths it reads from files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
# (kind, namespace, name) -> object or None; kind is "secrets" or "configmaps".
Lookup = Callable[[str, str, str], Obj | None]
VOLUME_MAP_ENV = "HYPER2KVM_VOLUME_MAP"


class PodConfigError(ValueError):
    """The Pod asks for what this node cannot provide (kubelet: CreateContainerConfigError)."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, the rest stays."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            end = value.find(")", i + 2) if nxt == "(" else -1
            if end != -1:
                name = value[i + 2 : end]
                out.append(env.get(name, value[i : end + 1]))
                i = end + 1
                continue
        out.append(value[i])
        i += 1
    return "".join(out)


def field_ref(pod: Obj, path: str) -> str:
    """The downward-API value of ``path`` (the fields kubelet supports for env)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs", [])),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(meta.get(source, {}).get(path[len(prefix) + 2 : -2], ""))
    raise PodConfigError(f"unsupported fieldRef {path!r}")


def _key_ref(ref: Obj, kind: str, namespace: str, lookup: Lookup) -> str | None:
    obj = lookup(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise PodConfigError(f"{kind[:-1]} {ref['name']!r} not found")
    value = _data(obj, kind).get(ref["key"])
    if value is None and not optional:
        raise PodConfigError(f"key {ref['key']!r} not found in {kind[:-1]} {ref['name']!r}")
    return value


def _data(obj: Obj, kind: str) -> dict[str, str]:
    if kind == "secrets":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return dict(obj.get("data", {}))


def container_env(pod: Obj, container: Obj, lookup: Lookup) -> dict[str, str]:
    """The container's environment in kubelet's order: envFrom first, then env."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f"{kind[:-1]} {ref['name']!r} not found")
            env.update({prefix + k: v for k, v in _data(obj, kind).items()})
    for var in container.get("env", []):
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secrets" if "secretKeyRef" in source else "configmaps"
            ref = source.get("secretKeyRef") or source["configMapKeyRef"]
            value = _key_ref(ref, kind, namespace, lookup)
            if value is not None:
                env[name] = value
        else:
            raise PodConfigError(f"unsupported valueFrom for {name!r}: {sorted(source)}")
    return env


@dataclass
class PathMap:
    """Container path -> host path, applied longest container path first."""

    entries: dict[str, str] = field(default_factory=dict)

    def add(self, container_path: str, host_path: str) -> None:
        # "/" would capture every absolute path; such a mount cannot be represented.
        if container_path.rstrip("/"):
            self.entries[container_path.rstrip("/")] = host_path.rstrip("/") or "/"

    def rewrite(self, value: str) -> str:
        mapped = self._map_path(value)
        if mapped is not None:
            return mapped
        head, sep, tail = value.partition("=")
        if sep and head.startswith("-"):
            mapped = self._map_path(tail)
            if mapped is not None:
                return head + sep + mapped
        return value

    def _map_path(self, value: str) -> str | None:
        for cpath in sorted(self.entries, key=len, reverse=True):
            if value == cpath or value.startswith(cpath + "/"):
                return self.entries[cpath] + value[len(cpath) :]
        return None

    def to_json(self) -> str:
        return json.dumps(self.entries, sort_keys=True)


def mount_table(container: Obj, volume_dirs: Mapping[str, str]) -> PathMap:
    """The container's volumeMounts resolved against the host folder of each volume."""
    table = PathMap()
    for mount in container.get("volumeMounts", []):
        host = volume_dirs.get(mount["name"])
        if host is None:
            raise PodConfigError(f"volume {mount['name']!r} is not available on this node")
        sub = mount.get("subPath") or ""
        if sub.startswith("/") or ".." in sub.split("/"):
            raise PodConfigError(f"invalid subPath {sub!r}")
        table.add(mount["mountPath"], f"{host}/{sub}" if sub else host)
    return table


def command_line(container: Obj, env: Mapping[str, str], paths: PathMap) -> list[str]:
    """command + args with $(VAR) expansion and path rewriting.

    There is no image here to supply an ENTRYPOINT, so a container without ``command`` runs
    its ``args`` as the command line.
    """
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv:
        raise PodConfigError("the container has neither command nor args")
    return [paths.rewrite(expand(a, env)) for a in argv]
