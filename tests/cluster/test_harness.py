"""The harness is a real cluster: admission, garbage collection, RBAC, scheduling, watches.

Every wait is on a condition with a deadline; no test asserts on timing.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import ssl
import subprocess
import threading
from pathlib import Path
from typing import IO, Any, cast

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from tests.cluster.conftest import Cluster
from tests.cluster.harness.node_agent import NodeAgent
from tests.cluster.harness.processes import wait_until

Obj = dict[str, Any]
GROUP = "harness.hyper2kvm.io"
CRD_NAME = f"widgets.{GROUP}"
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"
CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": CEL_MESSAGE,
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, stdin=stdin)


def widget(name: str, minimum: int, maximum: int) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": minimum, "maxReplicas": maximum},
    }


def pod_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def wait_pod(cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 90) -> Obj:
    def probe() -> Obj | None:
        pod = cluster.kube.get(pod_path(namespace, name))
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_until(probe, timeout=timeout, what=f"pod {namespace}/{name} to be {phase}")


def wait_gone(cluster: Cluster, path: str, timeout: float = 90) -> None:
    wait_until(
        lambda: cluster.kube.get_or_none(path) is None, timeout=timeout, what=f"{path} to be gone"
    )


def shell_pod(name: str, script: str, **spec: Any) -> Obj:
    container: Obj = {
        "name": "main",
        "image": "local/shell",
        "command": ["/bin/sh", "-c", script],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


# -- admission ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def widget_crd(cluster: Cluster) -> Any:
    result = kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(CRD))
    assert result.returncode == 0, result.stderr
    established = kubectl(
        cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}"
    )
    assert established.returncode == 0, established.stderr
    yield
    kubectl(cluster, "delete", f"crd/{CRD_NAME}", "--wait=false")


@pytest.mark.usefixtures("widget_crd")
def test_cel_rule_refuses_a_bad_object_with_the_servers_message(
    cluster: Cluster, namespace: str
) -> None:
    bad = kubectl(
        cluster, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(widget("bad", 5, 1))
    )
    assert bad.returncode != 0
    assert CEL_MESSAGE in bad.stderr
    assert "is invalid" in bad.stderr

    custom = k8s_client.CustomObjectsApi(cluster.api_client)
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP, "v1", namespace, "widgets", widget("bad", 3, 2)
        )
    assert refused.value.status == 422
    assert CEL_MESSAGE in json.loads(refused.value.body or "{}")["message"]

    good = kubectl(
        cluster, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(widget("ok", 1, 3))
    )
    assert good.returncode == 0, good.stderr
    stored = cast(Obj, custom.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "ok"))
    assert stored["spec"] == {"minReplicas": 1, "maxReplicas": 3}


# -- garbage collection ---------------------------------------------------------------------


def test_pod_owned_by_a_deleted_object_is_garbage_collected(
    cluster: Cluster, namespace: str
) -> None:
    owner = cluster.kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "owner"}}
    )
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    reference["uid"] = owner["metadata"]["uid"]
    # With the node agent the Pod really runs, so collection also ends a live process;
    # without it the Pod stays unscheduled and is collected all the same.
    selector = cluster.selector if cluster.agent else {"no-such-node": "true"}
    pod = shell_pod(
        "owned",
        "exec sleep 600",
        metadata={"ownerReferences": [reference]},
        nodeSelector=selector,
        terminationGracePeriodSeconds=5,
    )
    created = cluster.kube.create(pod_path(namespace), pod)
    if cluster.agent:
        wait_pod(cluster, namespace, "owned", "Running")

    cluster.kube.delete(
        f"/api/v1/namespaces/{namespace}/configmaps/owner",
        {"propagationPolicy": "Background"},
    )
    wait_gone(cluster, pod_path(namespace, "owned"))
    if cluster.agent:
        pod_dir = cluster.agent.pod_dir(namespace, "owned", created["metadata"]["uid"])
        assert (pod_dir / "main.log").exists()
        assert not cluster.agent.is_running(created["metadata"]["uid"])


# -- RBAC ---------------------------------------------------------------------------------


def test_service_account_is_denied_what_its_role_does_not_allow(
    cluster: Cluster, namespace: str
) -> None:
    kube = cluster.kube
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "narrow"}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    kube.create(
        f"{rbac}/roles",
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    kube.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "narrow-reads-configmaps"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": namespace}],
        },
    )
    token = kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/narrow/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )["status"]["token"]

    config = k8s_client.Configuration()
    config.host = cluster.configuration.host
    config.ssl_ca_cert = cluster.configuration.ssl_ca_cert
    config.verify_ssl = cluster.configuration.verify_ssl
    config.api_key = {"BearerToken": token}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    core = k8s_client.CoreV1Api(k8s_client.ApiClient(config))

    # The RBAC authorizer caches nothing for new bindings, but the binding itself reaches the
    # authorizer through an informer: wait until the allowed call works.
    wait_until(
        lambda: core.list_namespaced_config_map(namespace) is not None,
        timeout=30,
        what="the Role to take effect",
    )
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_config_map(
            namespace, k8s_client.V1ConfigMap(metadata=k8s_client.V1ObjectMeta(name="nope"))
        )
    assert denied.value.status == 403
    message = json.loads(denied.value.body or "{}")["message"]
    assert f"system:serviceaccount:{namespace}:narrow" in message
    with pytest.raises(ApiException) as secrets_denied:
        core.list_namespaced_secret(namespace)
    assert secrets_denied.value.status == 403

    can_i = kubectl(cluster, "auth", "can-i", "delete", "configmaps", "-n", namespace,
                    f"--as=system:serviceaccount:{namespace}:narrow")  # fmt: skip
    assert can_i.stdout.strip() == "no"


# -- scheduling and the node agent ----------------------------------------------------------


def test_pod_with_node_selector_is_scheduled_and_runs_to_succeeded(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.require_agent()
    target = cluster.nodes[1]
    script = (
        'printf "ip=%s node=%s pod=%s/%s" "$POD_IP" "$NODE_NAME" "$POD_NAMESPACE" "$POD_NAME"'
        ' > "$MESSAGE_FILE"; echo hello > "$1/out.txt"'
    )
    field = [("POD_IP", "status.podIP"), ("NODE_NAME", "spec.nodeName"),
             ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]  # fmt: skip
    env = [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in field]
    env.append({"name": "MESSAGE_FILE", "value": "/dev/termination-log"})
    pod = shell_pod(
        "selected",
        script,
        nodeSelector={"kubernetes.io/hostname": target, **cluster.selector},
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        container={
            "args": ["sh", "/output"],
            "env": env,
            "volumeMounts": [{"name": "out", "mountPath": "/output"}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)

    done = wait_pod(cluster, namespace, "selected", "Succeeded")
    assert done["spec"]["nodeName"] == target
    pod_ip = done["status"]["podIP"]
    assert pod_ip.startswith("127.0.") and pod_ip != "127.0.0.1"
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"] == f"ip={pod_ip} node={target} pod={namespace}/selected"
    assert (tmp_path / "out.txt").read_text() == "hello\n"

    events = cluster.kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    scheduled = [e for e in events if e.get("reason") == "Scheduled"]
    assert scheduled and target in scheduled[0]["message"]


def test_failing_container_reports_its_exit_code_and_message(
    cluster: Cluster, namespace: str
) -> None:
    cluster.require_agent()
    pod = shell_pod(
        "failing",
        'echo "disk not found" > "$1"; exit 3',
        nodeSelector=cluster.selector,
        # The container path as an argument: the agent rewrites it to the pod's own file.
        container={"args": ["sh", "/dev/termination-log"]},
    )
    cluster.kube.create(pod_path(namespace), pod)
    failed = wait_pod(cluster, namespace, "failing", "Failed")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "disk not found\n"


def test_pod_waits_for_a_missing_secret_then_runs(cluster: Cluster, namespace: str) -> None:
    cluster.require_agent()
    secret_ref = {"secretKeyRef": {"name": "credentials", "key": "user"}}
    pod = shell_pod(
        "needs-secret",
        'printf "%s" "$USER_NAME" > "$1"',
        nodeSelector=cluster.selector,
        container={
            "args": ["sh", "/dev/termination-log"],
            "env": [{"name": "USER_NAME", "valueFrom": secret_ref}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)

    def waiting_reason() -> str | None:
        statuses = cluster.kube.get(pod_path(namespace, "needs-secret"))["status"]
        for status in statuses.get("containerStatuses", []):
            reason = status.get("state", {}).get("waiting", {}).get("reason")
            if reason == "CreateContainerConfigError":
                return str(reason)
        return None

    wait_until(waiting_reason, timeout=60, what="the missing Secret to be reported")
    cluster.kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "credentials"}, "stringData": {"user": "migrator"}},
    )
    done = wait_pod(cluster, namespace, "needs-secret", "Succeeded")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "migrator"


def test_deleting_a_pod_sends_sigterm_and_removes_it(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.require_agent()
    script = "trap 'echo term > \"$MARKS/got-term\"; exit 0' TERM; while :; do sleep 0.1; done"
    pod = shell_pod(
        "long",
        script,
        nodeSelector=cluster.selector,
        terminationGracePeriodSeconds=30,
        volumes=[{"name": "marks", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        container={
            "env": [{"name": "MARKS", "value": "/marks"}],
            "volumeMounts": [{"name": "marks", "mountPath": "/marks"}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "long", "Running")
    cluster.kube.delete(pod_path(namespace, "long"))
    wait_gone(cluster, pod_path(namespace, "long"))
    assert (tmp_path / "got-term").read_text() == "term\n"


def test_claim_is_provisioned_bound_and_mapped_to_a_host_folder(
    cluster: Cluster, namespace: str
) -> None:
    cluster.require_agent()
    claim = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "hyper2kvm-host-folder",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kube.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)
    pod = shell_pod(
        "writer",
        'echo "$HYPER2KVM_VOLUME_MAP" > "$1/map.json"',
        nodeSelector=cluster.selector,
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        container={
            "args": ["sh", "/var/lib/data"],
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/data"}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "writer", "Succeeded")
    bound = cluster.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/data")
    assert bound["status"]["phase"] == "Bound"
    volume = cluster.kube.get(f"/api/v1/persistentvolumes/{bound['spec']['volumeName']}")
    folder = Path(volume["spec"]["hostPath"]["path"])
    mapping = json.loads((folder / "map.json").read_text())
    assert mapping["/var/lib/data"] == str(folder)


# -- kubectl ------------------------------------------------------------------------------


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


class KubectlStream:
    """A long-running kubectl (`get -w`, `logs -f`) whose output lines arrive as it runs."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        self.process = subprocess.Popen(
            ["kubectl", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.kubectl_env(),
        )
        self._arrived: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        self._pump = threading.Thread(
            target=_pump, args=(self.process.stdout, self._arrived), daemon=True
        )
        self._pump.start()

    def lines(self) -> list[str]:
        while not self._arrived.empty():
            self.seen.append(self._arrived.get_nowait())
        return self.seen

    def all_lines(self) -> list[str]:
        """Every line, once the process has ended and its output is read to the end."""
        self._pump.join(timeout=30)
        return self.lines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def test_kubectl_watch_streams_pod_changes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.require_agent()
    # The pod runs until the test creates "go": the change to Completed then happens while
    # kubectl is already watching, whenever kubectl got there.
    pod = shell_pod(
        "watched",
        'while [ ! -e "$1/go" ]; do sleep 0.1; done',
        nodeSelector=cluster.selector,
        volumes=[{"name": "gate", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        container={
            "args": ["sh", "/gate"],
            "volumeMounts": [{"name": "gate", "mountPath": "/gate"}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "watched", "Running")

    watch = KubectlStream(cluster, "get", "pods", "-n", namespace, "-w", "--no-headers")

    def saw(status: str) -> bool:
        seen = watch.lines()
        return any(line.split()[:3] == ["watched", "1/1" if status == "Running" else "0/1",
                                        status] for line in seen if line.strip())  # fmt: skip

    try:
        wait_until(lambda: saw("Running"), timeout=60, what="kubectl -w to list the pod")
        (tmp_path / "go").touch()
        wait_until(lambda: saw("Completed"), timeout=60, what="kubectl -w to stream Completed")
    finally:
        watch.stop()


def test_local_control_plane_runs_the_pinned_release(cluster: Cluster) -> None:
    if not cluster.local:
        pytest.skip("KUBECONFIG points at an existing cluster")
    version = cluster.kube.get("/version")
    build = Path(__file__).resolve().parents[2] / "hack" / "k8s" / "go.mod"
    assert f"k8s.io/kubernetes {version['gitVersion']}" in build.read_text()
    nodes = cluster.kube.get("/api/v1/nodes")["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    }
    assert set(cluster.nodes) <= ready


# -- kubectl logs (the node agent's kubelet endpoint) -----------------------------------------


def require_kubelet_endpoint(cluster: Cluster) -> NodeAgent:
    agent = cluster.require_agent()
    if not cluster.local:
        pytest.skip("the API server of an existing cluster cannot reach the agent on 127.0.0.1")
    return agent


def test_kubectl_logs_returns_the_containers_output(cluster: Cluster, namespace: str) -> None:
    require_kubelet_endpoint(cluster)
    pod = shell_pod(
        "printer",
        "echo alpha; echo beta >&2; echo gamma",
        metadata={"labels": {"app": "printer"}},
        nodeSelector=cluster.selector,
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "printer", "Succeeded")

    logs = kubectl(cluster, "logs", "-n", namespace, "printer")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "alpha\nbeta\ngamma\n"

    tail = kubectl(cluster, "logs", "-n", namespace, "printer", "--tail=1")
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout == "gamma\n"

    stamped = kubectl(cluster, "logs", "-n", namespace, "pod/printer", "--timestamps")
    assert stamped.returncode == 0, stamped.stderr
    lines = stamped.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["alpha", "beta", "gamma"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line.split(" ")[0])
               for line in lines)  # fmt: skip

    selected = kubectl(cluster, "logs", "-n", namespace, "-l", "app=printer", "--prefix")
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.splitlines() == [
        f"[pod/printer/main] {word}" for word in ("alpha", "beta", "gamma")
    ]

    limited = kubectl(cluster, "logs", "-n", namespace, "printer", "--limit-bytes=8")
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout == "alpha\nbe"


def test_kubectl_logs_follow_streams_until_the_process_exits(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    require_kubelet_endpoint(cluster)
    # Five lines, then a wait for the test's go-ahead, then five more and the exit: the first
    # half is seen while the process still runs, whenever kubectl got there.
    script = (
        'for i in 1 2 3 4 5 6 7 8 9 10; do echo "line $i"; '
        'if [ "$i" = 5 ]; then while [ ! -e "$1/go" ]; do sleep 0.1; done; fi; '
        "sleep 0.2; done"
    )
    pod = shell_pod(
        "ticker",
        script,
        nodeSelector=cluster.selector,
        volumes=[{"name": "gate", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        container={
            "args": ["sh", "/gate"],
            "volumeMounts": [{"name": "gate", "mountPath": "/gate"}],
        },
    )
    created = cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "ticker", "Running")

    follow = KubectlStream(cluster, "logs", "-f", "-n", namespace, "ticker")

    try:
        wait_until(
            lambda: "line 5" in follow.lines(), timeout=60, what="kubectl logs -f to stream line 5"
        )
        assert cluster.agent is not None
        assert cluster.agent.is_running(created["metadata"]["uid"])
        (tmp_path / "go").touch()
        # kubectl ends by itself once the process has exited and its output is sent.
        stderr = follow.process.stderr
        assert follow.process.wait(timeout=60) == 0, stderr.read() if stderr else ""
    finally:
        follow.stop()
    assert follow.all_lines() == [f"line {i}" for i in range(1, 11)]
    wait_pod(cluster, namespace, "ticker", "Succeeded")


def test_kubectl_logs_of_a_container_that_does_not_run_fails_clearly(
    cluster: Cluster, namespace: str
) -> None:
    require_kubelet_endpoint(cluster)
    pod = shell_pod("pair", "echo from-main", nodeSelector=cluster.selector)
    pod["spec"]["containers"].append(
        {"name": "sidecar", "image": "local/shell", "command": ["sleep", "600"]}
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "pair", "Succeeded")

    main = kubectl(cluster, "logs", "-n", namespace, "pair", "-c", "main")
    assert main.returncode == 0, main.stderr
    assert main.stdout == "from-main\n"

    # Not in the Pod at all: the API server refuses before asking the node.
    unknown = kubectl(cluster, "logs", "-n", namespace, "pair", "-c", "nope")
    assert unknown.returncode != 0
    assert "container nope is not valid for pod pair" in unknown.stderr

    # In the Pod, but the agent runs only the first container: its kubelet endpoint says so.
    sidecar = kubectl(cluster, "logs", "-n", namespace, "pair", "-c", "sidecar")
    assert sidecar.returncode != 0
    assert "BadRequest" in sidecar.stderr
    assert 'container "sidecar" in pod' in sidecar.stderr
    assert 'runs only the first container, "main"' in sidecar.stderr


def test_kubelet_endpoint_is_advertised_and_answers_only_what_it_serves(
    cluster: Cluster,
) -> None:
    agent = cluster.require_agent()
    port = agent.kubelet.port
    for name in cluster.nodes:
        node = cluster.kube.get(f"/api/v1/nodes/{name}")
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == port
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == "127.0.0.1"

    def get(path: str) -> tuple[int, str]:
        # The endpoint's certificate is self-signed, as an unbootstrapped kubelet's is.
        context = ssl._create_unverified_context()  # noqa: S323 - loopback test endpoint
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    assert get("/healthz") == (200, "ok\n")
    status, body = get("/containerLogs/no-such-namespace/no-such-pod/main")
    assert status == 404
    assert 'pod "no-such-namespace/no-such-pod" is not run by the test node agent' in body
    status, body = get("/exec/no-such-namespace/no-such-pod/main?command=ls")
    assert status == 404
    assert "no exec" in body
