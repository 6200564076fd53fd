"""The CRD is generated from the API models, is structural, and the committed copy is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hyper2kvm_operator import crd

REPO = Path(__file__).resolve().parents[2]


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(walk(value, f"{path}[{index}]"))
    return found


def schema() -> dict[str, Any]:
    version = crd.crd_manifest()["spec"]["versions"][0]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        if path.endswith("x-kubernetes-validations") or ".x-kubernetes-validations[" in path:
            continue
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path


def test_printer_columns_and_names() -> None:
    manifest = crd.crd_manifest()
    version = manifest["spec"]["versions"][0]
    columns = [(c["name"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Operation", 0),
        ("Phase", 0),
        ("Progress", 0),
        ("Node", 0),
        ("Age", 0),
        ("Throughput", 1),
        ("ETA", 1),
        ("Attempt", 1),
    ]
    assert manifest["spec"]["names"]["shortNames"] == ["mj"]
    assert version["subresources"] == {"status": {}}


def test_defaults_reach_the_api_server() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["verify"]["default"] is True
    assert spec["retries"]["default"] == 3
    output = spec["disks"]["items"]["properties"]["output"]["properties"]
    assert output["format"]["default"] == "qcow2"


@pytest.mark.parametrize("name", sorted(crd.MANIFESTS))
def test_committed_crds_are_current(name: str) -> None:
    committed = (REPO / "crds" / name).read_text()
    assert committed == crd.render(crd.MANIFESTS[name]), "crds/ is stale: run `make crds`"


def test_provider_crd_is_structural_with_its_columns() -> None:
    manifest = crd.provider_crd_manifest()
    version = manifest["spec"]["versions"][0]
    for path, node in walk(version["schema"]["openAPIV3Schema"]):
        if "properties" in node:
            assert node.get("type") == "object", path
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == [
        "URL", "Ready", "Reason", "Product", "Version", "Checked", "MaxPerHost", "Age",
    ]  # fmt: skip
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["url", "credentialsSecretRef"]
    assert set(spec["properties"]) == {
        "url",
        "credentialsSecretRef",
        "caBundle",
        "thumbprint",
        "insecureSkipVerify",
        "maxDisksPerHost",
    }
