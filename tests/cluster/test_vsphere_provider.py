"""VSphereProvider on the real control plane: the operator logs in to a real vCenter API
(VMware's simulator) as each provider says, and writes what it found into the status."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster
from tests.cluster.harness.processes import wait_until
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_operator import kubectl, running_operator
from tests.vsphere import vcsim

CREDENTIALS_LABEL = {"hyper2kvm.io/credentials": "true"}


@pytest.fixture(scope="module")
def simulator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vcsim.Vcsim]:
    """On the host's cluster address: loopback is a network providers may not name."""
    host = cluster.host_address
    with vcsim.running(tmp_path_factory.mktemp("vcsim"), host=host) as sim:
        yield sim


def operator_with_providers(
    cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    settings: dict[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """The operator, once the VSphereProvider CRD serves too."""
    log = tmp_path_factory.mktemp("operator") / "log"
    with running_operator(cluster, log, settings) as process:
        kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s",
                "crd/vsphereproviders.hyper2kvm.io")  # fmt: skip
        yield process


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    yield from operator_with_providers(cluster, tmp_path_factory)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CA that never signed vcsim's certificate."""
    folder = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=not vcsim", "-keyout", str(folder / "key.pem"),
         "-out", str(folder / "ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return (folder / "ca.pem").read_text()


@pytest.fixture(autouse=True)
def providers_removed(cluster: Cluster, namespace: str) -> Iterator[None]:
    """Providers go while the operator runs: it holds a finalizer on each."""
    yield
    cluster.kubectl("delete", "vsphereproviders", "--all", "-n", namespace, "--timeout=60s")


def closed_port(host: str) -> int:
    """A port of `host` nothing listens on (once bound, now free)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def apply(cluster: Cluster, *manifests: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))


def secret(
    namespace: str, name: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": CREDENTIALS_LABEL if labels is None else labels,
        },
        "stringData": data,
    }


def provider(namespace: str, name: str, url: str, secret_name: str, **trust: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "VSphereProvider",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "credentialsSecretRef": {"name": secret_name}, **trust},
    }


def ready_condition(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    done = cluster.kubectl("get", "vsphereprovider", name, "-n", namespace, "-o", "json")
    if done.returncode != 0:
        return None
    status = json.loads(done.stdout).get("status") or {}
    found = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return {**found[0], "status_object": status} if found else None


def wait_ready(
    cluster: Cluster, namespace: str, name: str, status: str, reason: str
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        condition = ready_condition(cluster, namespace, name)
        if condition and (condition["status"], condition["reason"]) == (status, reason):
            return condition
        return None

    return wait_until(settled, timeout=90, what=f"provider {name} Ready={status} ({reason})")


def test_a_provider_that_logs_in_is_ready_and_shows_the_server(
    cluster: Cluster, namespace: str, operator: OperatorProcess, simulator: vcsim.Vcsim
) -> None:
    apply(
        cluster,
        secret(namespace, "vc", {"username": simulator.username, "password": simulator.password}),
        provider(namespace, "vc", simulator.url, "vc", caBundle=simulator.ca_pem.read_text()),
    )
    condition = wait_ready(cluster, namespace, "vc", "True", "Connected")
    status = condition["status_object"]
    assert status["product"] == "VMware vCenter Server"
    assert status["apiType"] == "VirtualCenter"
    assert status["version"] and status["lastChecked"]
    assert status["observedGeneration"] == 1
    table = kubectl(cluster, "get", "vsphereproviders", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "URL", "READY", "REASON", "PRODUCT", "VERSION", "CHECKED"]
    assert row.split()[:4] == ["vc", simulator.url, "True", "Connected"]
    # The password reached no status, event or log of the operator.
    assert simulator.password not in json.dumps(status)
    assert simulator.password not in operator.log.read_text(errors="replace")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-password", "InvalidLogin"),
        ("other-ca", "CertificateMismatch"),
        ("wrong-thumbprint", "CertificateMismatch"),
        ("closed-port", "Unreachable"),
        ("unmarked-secret", "CredentialsRefused"),
        ("no-password", "IncompleteCredentials"),
        ("loopback", "PolicyViolation"),
    ],
)
def test_a_provider_that_cannot_be_used_says_why(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    simulator: vcsim.Vcsim,
    other_ca: str,
    case: str,
    reason: str,
) -> None:
    login = {"username": simulator.username, "password": simulator.password}
    url = simulator.url
    labels: dict[str, str] | None = None
    trust: dict[str, Any] = {"caBundle": simulator.ca_pem.read_text()}
    if case == "wrong-password":
        login["password"] = "not-the-password"
    elif case == "other-ca":
        trust = {"caBundle": other_ca}
    elif case == "wrong-thumbprint":
        trust = {"thumbprint": ":".join(["AB"] * 32)}
    elif case == "closed-port":
        url = f"https://{simulator.host}:{closed_port(simulator.host)}/sdk"
    elif case == "loopback":
        url = f"https://127.0.0.1:{simulator.port}/sdk"
    elif case == "unmarked-secret":
        labels = {}
    elif case == "no-password":
        del login["password"]
    apply(
        cluster,
        secret(namespace, "vc", login, labels),
        provider(namespace, "vc", url, "vc", **trust),
    )
    condition = wait_ready(cluster, namespace, "vc", "False", reason)
    assert condition["message"], condition
    assert simulator.password not in condition["message"]


def test_a_changed_spec_is_checked_again_and_a_pinned_thumbprint_is_trusted(
    cluster: Cluster, namespace: str, operator: OperatorProcess, simulator: vcsim.Vcsim
) -> None:
    login = {"username": simulator.username, "password": simulator.password}
    apply(
        cluster,
        secret(namespace, "vc", login),
        provider(namespace, "vc", simulator.url, "vc", thumbprint=":".join(["00"] * 20)),
    )
    wait_ready(cluster, namespace, "vc", "False", "CertificateMismatch")
    apply(cluster, provider(namespace, "vc", simulator.url, "vc",
                            thumbprint=simulator.thumbprint_sha256))  # fmt: skip
    condition = wait_ready(cluster, namespace, "vc", "True", "Connected")
    assert condition["observedGeneration"] == 2


@pytest.mark.parametrize(
    ("trust", "words"),
    [
        ({}, "exactly one of caBundle, thumbprint, or insecureSkipVerify"),
        ({"insecureSkipVerify": True, "thumbprint": ":".join(["AB"] * 20)}, "exactly one of"),
        ({"thumbprint": "not a fingerprint"}, "spec.thumbprint"),
    ],
)
def test_the_api_server_refuses_a_provider_that_does_not_say_how_to_trust_the_server(
    cluster: Cluster, namespace: str, operator: OperatorProcess, trust: dict[str, Any], words: str
) -> None:
    manifest = provider(namespace, "vc", "https://vcenter.example/sdk", "vc", **trust)
    done = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert done.returncode != 0
    assert words in done.stderr, done.stderr
