"""The Helm chart renders, lints and agrees with the operator, with every toggle on and off."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyper2kvm_operator.settings import Settings
from tests.chart.helm import ALL_ON, helm_binary, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hyper2kvm"

NAMESPACED = ("operator.watchNamespaces={migrations,staging}",)
EXISTING_CLAIMS = (
    "storage.input.existingClaim=vmware-exports",
    "storage.output.existingClaim=kvm-images",
    "storage.scratch.existingClaim=scratch",
)
VARIANTS = {"defaults": (), "all-on": ALL_ON, "namespaced": NAMESPACED, "claims": EXISTING_CLAIMS}


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(variant: str) -> None:
    sets = [arg for value in VARIANTS[variant] for arg in ("--set", value)]
    result = helm("lint", "--strict", str(CHART), *sets)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_the_operator_and_nothing_optional() -> None:
    objects = render()
    assert kinds(objects) == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


def test_a_single_replica_has_no_disruption_budget() -> None:
    assert "PodDisruptionBudget" not in kinds(render("operator.replicas=1"))


def test_templates_use_nothing_that_changes_between_renders() -> None:
    """Argo CD re-renders on every sync: time, randomness or cluster lookups would drift."""
    unstable = re.compile(r"\b(now|date\w*|rand\w*|uuidv4|gen[A-Z]\w*|lookup)\b")
    for template in (CHART / "templates").iterdir():
        for action in re.findall(r"{{(.*?)}}", template.read_text(), re.DOTALL):
            if not action.lstrip("- ").startswith("/*"):
                assert not unstable.search(action), (template.name, action)


def test_every_toggle_on_adds_its_objects() -> None:
    found = kinds(render(*ALL_ON))
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap"):
        assert kind in found
    assert found.count("PersistentVolumeClaim") == 2  # scratch is per Pod, not a chart claim


def test_renders_are_byte_identical() -> None:
    args = ["template", "r", str(CHART), "--namespace", "hyper2kvm-system"]
    for value in ALL_ON:
        args += ["--set", value]
    first, second = helm(*args), helm(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("worker.slotsPerNode=0", "/worker/slotsPerNode"),
        ("operator.replica=2", "additional properties 'replica' not allowed"),
        ("worker.resources.limits.memory=2GB", "/worker/resources/limits/memory"),
        ("metrics.prometheusRule.queuedTooLong=two hours", "/metrics/prometheusRule/queuedTooLong"),
        ("worker.nodeLabel=not a label", "/worker/nodeLabel"),
        ("operator.image.digest=latest", "/operator/image/digest"),
    ],
)
def test_bad_values_fail_at_install_time_with_the_key(value: str, message: str) -> None:
    result = helm("template", "r", str(CHART), "--set", value)
    assert result.returncode != 0
    assert message in result.stderr


def deployment_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("HYPER2KVM_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def test_operator_reads_the_values_the_chart_sets(environment: pytest.MonkeyPatch) -> None:
    objects = render(
        *ALL_ON,
        "worker.image.tag=1.2.3",
        "worker.slotsPerNode=5",
        "worker.nodeLabel=example.com/v2v",
        "worker.resources.requests.cpu=2",
        "worker.resources.limits.memory=8Gi",
        "storage.scratch.size=200Gi",
        "worker.imagePullSecrets[0].name=regcred",
        "worker.image.pullPolicy=Always",
        "worker.tolerations[0].key=dedicated",
        "worker.tolerations[0].operator=Exists",
        "worker.tolerations[0].effect=NoSchedule",
    )
    for name, value in deployment_env(objects).items():
        environment.setenv(name, value)
    settings = Settings.from_environment()
    assert settings.worker_image == "ghcr.io/hyper2kvm/worker:1.2.3"
    assert settings.default_slots == 5
    assert settings.node_label == "example.com/v2v"
    assert dict(settings.worker_requests) == {"cpu": "2", "memory": "256Mi"}
    assert dict(settings.worker_limits) == {"memory": "8Gi"}
    assert settings.policy.privileged_fix("any-namespace") is True
    assert (settings.scratch_size, settings.scratch_storage_class) == ("200Gi", "fast-local")
    assert settings.scratch_claim is None
    assert settings.worker_pull_secrets == ("regcred",)
    assert settings.worker_pull_policy == "Always"
    assert [dict(t) for t in settings.worker_tolerations] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_existing_scratch_claim_wins(environment: pytest.MonkeyPatch) -> None:
    env = deployment_env(render(*EXISTING_CLAIMS, "storage.scratch.enabled=true"))
    assert env["HYPER2KVM_SCRATCH_CLAIM"] == "scratch"
    assert "HYPER2KVM_SCRATCH_SIZE" not in env
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in render(*EXISTING_CLAIMS))


def test_operator_pod_is_restricted() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"livenessProbe", "readinessProbe", "resources"} <= container.keys()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objects if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_grants_no_secret_lists_no_wildcards_no_escalation(variant: str) -> None:
    granted = rules(render(*VARIANTS[variant]))
    for rule in granted:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        # One by name, for its label; made and removed: a vSphere attempt's own session.
        # Never listed, watched or changed: no Secret of a tenant's is ever rewritten.
        if "secrets" in rule["resources"]:
            assert (rule["resources"], rule["verbs"]) == (["secrets"], ["get", "create", "delete"])
        if "update" in rule["verbs"]:  # only the workers' NetworkPolicy is ever rewritten
            assert rule["resources"] == ["networkpolicies"]
    pods = [r for r in granted if r["resources"] == ["pods"]]
    assert pods == [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "list", "watch", "create", "delete"],
        }
    ]


def test_namespaced_mode_binds_per_namespace_and_peers_there() -> None:
    objects = render(*NAMESPACED)
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["migrations", "staging"]
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["migrations", "staging"]
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=migrations" in args and "--namespace=staging" in args
    assert not any(o["kind"] == "ClusterKopfPeering" for o in objects)


def test_data_claims_survive_uninstall_and_have_the_advised_modes() -> None:
    claims = {
        o["metadata"]["name"]: o
        for o in render(*ALL_ON, "storage.output.storageClassName=cephfs")
        if o["kind"] == "PersistentVolumeClaim"
    }
    assert set(claims) == {"test-hyper2kvm-input", "test-hyper2kvm-output"}
    for claim in claims.values():
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    modes = {name.rsplit("-", 1)[1]: c["spec"]["accessModes"] for name, c in claims.items()}
    assert modes == {"input": ["ReadOnlyMany"], "output": ["ReadWriteMany"]}


def test_schema_is_valid_json() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
