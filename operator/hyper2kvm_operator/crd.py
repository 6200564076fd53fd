"""Generate the CRDs from the pydantic API models (`python -m hyper2kvm_operator.crd crds/`).

Pydantic's JSON schema is turned into a Kubernetes *structural* schema: references
inlined, optional fields unwrapped, titles dropped, `additionalProperties: false`
removed (the API server prunes unknown fields instead, and forbids the two together).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from hyper2kvm_operator import api, provider_api

_DROP = {"title", "discriminator"}
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Operation", "type": "string", "jsonPath": ".spec.operation"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Node", "type": "string", "jsonPath": ".status.node"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Throughput", "type": "string", "jsonPath": ".status.throughput", "priority": 1},
    {"name": "ETA", "type": "string", "jsonPath": ".status.eta", "priority": 1},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
]


def structural(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural OpenAPI v3 node."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"only Optional[X] unions fit a structural schema: {schema}")
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        if schema.get("default") is not None:
            rest["default"] = schema["default"]
        return structural({**options[0], **rest}, definitions)
    node: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            node[key] = {name: structural(sub, definitions) for name, sub in value.items()}
        elif key == "items":
            node[key] = structural(value, definitions)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                node[key] = structural(value, definitions)
        elif key == "default" and value is None:
            continue
        else:
            node[key] = value
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node["type"] = "object"
    return node


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
    return structural(raw, raw.get("$defs", {}))


def crd_manifest() -> dict[str, Any]:
    """The MigrationJob CRD."""
    spec = model_schema(api.MigrationJobSpec)
    spec["description"] = "What to migrate and how; see `kubectl explain migrationjob.spec`."
    status = model_schema(api.MigrationJobStatus)
    return _manifest(
        kind=api.KIND,
        plural=api.PLURAL,
        short_names=["mj"],
        description="One VM's disks to inspect, convert or repair for KVM.",
        spec=spec,
        status=status,
        columns=PRINTER_COLUMNS,
        root_rules=[api.IMMUTABLE_AFTER_START],
    )


def provider_crd_manifest() -> dict[str, Any]:
    """The VSphereProvider CRD."""
    spec = model_schema(provider_api.VSphereProviderSpec)
    spec["description"] = "Where vCenter or ESXi is, and how to log in and trust it."
    return _manifest(
        kind=provider_api.KIND,
        plural=provider_api.PLURAL,
        short_names=["vsp"],
        description="A connection to vCenter or ESXi that MigrationJobs read VMs from.",
        spec=spec,
        status=model_schema(provider_api.VSphereProviderStatus),
        columns=provider_api.PRINTER_COLUMNS,
        root_rules=[],
    )


def _manifest(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
    root_rules: list[dict[str, str]],
) -> dict[str, Any]:
    status["description"] = "Written by the operator only."
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            # Deleting a CRD deletes every object of its kind and, for MigrationJobs, running
            # workers: GitOps tools (Argo CD, and Helm for chart-managed copies) must never
            # prune it.
            "annotations": {
                "argocd.argoproj.io/sync-options": "Delete=false,ServerSideApply=true",
                "helm.sh/resource-policy": "keep",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["hyper2kvm"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases: shared rule lists are written out wherever they apply."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


MANIFESTS = {  # file name in crds/ -> its CRD
    f"{api.PLURAL}.{api.GROUP}.yaml": crd_manifest,
    f"{provider_api.PLURAL}.{api.GROUP}.yaml": provider_crd_manifest,
}


def render(manifest: Callable[[], dict[str, Any]] = crd_manifest) -> str:
    header = "# Generated from operator/hyper2kvm_operator by `make crds`; do not edit.\n"
    body = yaml.dump(manifest(), Dumper=_PlainDumper, sort_keys=False, width=100)
    return header + body


def write_all(directory: Path) -> None:
    for name, manifest in MANIFESTS.items():
        (directory / name).write_text(render(manifest), encoding="utf-8")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
