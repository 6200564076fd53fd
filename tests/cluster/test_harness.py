"""The harness is a real cluster: admission, garbage collection, RBAC, scheduling, watches,
and real nodes that run the project's images in containers the way any kubelet does.

Every wait is on a condition with a deadline; no test asserts on timing.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import IO, Any, cast

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from tests.cluster.conftest import WORKER_UID, Cluster, host_folder
from tests.cluster.harness.node import KUBELET_SYSCTLS
from tests.cluster.harness.processes import free_port, wait_until
from tests.cluster.harness.provisioner import STORAGE_CLASS

from hyper2kvm_operator.worker_pod import CONTAINER_SECURITY_CONTEXT

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
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
NON_ROOT = CONTAINER_SECURITY_CONTEXT  # as the operator runs its workers


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


def container_state(cluster: Cluster, namespace: str, name: str) -> Obj:
    statuses = cluster.kube.get(pod_path(namespace, name))["status"].get("containerStatuses", [])
    return dict(statuses[0]) if statuses else {}


def shell_pod(cluster: Cluster, name: str, script: str, *, image: str = "base", **spec: Any) -> Obj:
    """A Pod on this session's nodes running `sh -c script` in a project image."""
    container: Obj = {
        "name": "main",
        "image": cluster.image(image),
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": cluster.selector,
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def host_volume(name: str, path: Path) -> Obj:
    return {"name": name, "hostPath": {"path": str(path), "type": "Directory"}}


def message(pod: Obj) -> str:
    return str(pod["status"]["containerStatuses"][0]["state"]["terminated"].get("message", ""))


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
    pod = shell_pod(cluster, "owned", "exec sleep 600", metadata={"ownerReferences": [reference]})
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "owned", "Running")

    cluster.kube.delete(
        f"/api/v1/namespaces/{namespace}/configmaps/owner",
        {"propagationPolicy": "Background"},
    )
    wait_gone(cluster, pod_path(namespace, "owned"))


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


# -- the nodes ------------------------------------------------------------------------------


def test_nodes_run_the_pinned_releases_on_addresses_of_their_own(cluster: Cluster) -> None:
    local = cluster.require_local()
    version = cluster.kube.get("/version")
    k8s = (REPO / "hack" / "k8s" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {version['gitVersion']}" in k8s
    containerd = re.search(
        r"github.com/containerd/containerd/v2 (v\S+)",
        (REPO / "hack" / "node" / "go.mod").read_text(),
    )
    assert containerd is not None
    addresses = set()
    for name in cluster.nodes:
        node = cluster.kube.get(f"/api/v1/nodes/{name}")
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == version["gitVersion"]
        assert info["containerRuntimeVersion"] == f"containerd://{containerd[1].lstrip('v')}"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", ready
        internal = {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"]
        assert internal == local.node(name).network.address
        addresses.add(internal)
    assert len(addresses) == len(cluster.nodes)


def test_the_host_keeps_its_sysctls_and_firewall(cluster: Cluster, namespace: str) -> None:
    """kubelet and kube-proxy change sysctls and iptables; on the host, neither changed."""
    local = cluster.require_local()
    for key, wanted in KUBELET_SYSCTLS.items():
        assert local.host_sysctls[key] == Path(f"/proc/sys/{key}").read_text().strip(), key
        inside = local.node(cluster.nodes[0]).read_node_file(f"/proc/sys/{key}")
        assert inside.strip() == wanted, key
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert "KUBE-" not in rules
    node_rules = local.node(cluster.nodes[0]).run_on_node("iptables-save", "-t", "nat")
    assert "KUBE-SERVICES" in node_rules


def test_pod_runs_on_the_selected_node_with_the_downward_api(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    local = cluster.require_local()
    target = cluster.nodes[1]
    out = host_folder(tmp_path / "out", writable=False)
    script = (
        'printf "ip=%s node=%s pod=%s/%s" "$POD_IP" "$NODE_NAME" "$POD_NAMESPACE" "$POD_NAME"'
        " > /dev/termination-log; echo hello > /output/out.txt"
    )
    field = [("POD_IP", "status.podIP"), ("NODE_NAME", "spec.nodeName"),
             ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]  # fmt: skip
    env = [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}} for n, p in field]
    pod = shell_pod(
        cluster,
        "selected",
        script,
        nodeSelector={"kubernetes.io/hostname": target, **cluster.selector},
        volumes=[host_volume("out", out)],
        container={"env": env, "volumeMounts": [{"name": "out", "mountPath": "/output"}]},
    )
    cluster.kube.create(pod_path(namespace), pod)

    done = wait_pod(cluster, namespace, "selected", "Succeeded")
    assert done["spec"]["nodeName"] == target
    pod_ip = done["status"]["podIP"]
    network = local.node(target).network
    assert pod_ip.startswith(network.pod_cidr.rsplit(".", 2)[0] + ".")
    assert message(done) == f"ip={pod_ip} node={target} pod={namespace}/selected"
    assert (out / "out.txt").read_text() == "hello\n"

    events = cluster.kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    scheduled = [e for e in events if e.get("reason") == "Scheduled"]
    assert scheduled and target in scheduled[0]["message"]


def test_failing_container_reports_its_exit_code_and_message(
    cluster: Cluster, namespace: str
) -> None:
    pod = shell_pod(cluster, "failing", 'echo "disk not found" > /dev/termination-log; exit 3')
    cluster.kube.create(pod_path(namespace), pod)
    failed = wait_pod(cluster, namespace, "failing", "Failed")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "disk not found\n"


def test_pod_waits_for_a_missing_secret_then_runs(cluster: Cluster, namespace: str) -> None:
    secret_ref = {"secretKeyRef": {"name": "credentials", "key": "user"}}
    pod = shell_pod(
        cluster,
        "needs-secret",
        'printf "%s" "$USER_NAME" > /dev/termination-log',
        container={"env": [{"name": "USER_NAME", "valueFrom": secret_ref}]},
    )
    cluster.kube.create(pod_path(namespace), pod)

    def waiting_reason() -> str | None:
        reason = container_state(cluster, namespace, "needs-secret")
        waiting = reason.get("state", {}).get("waiting", {}).get("reason")
        return str(waiting) if waiting == "CreateContainerConfigError" else None

    wait_until(waiting_reason, timeout=60, what="the missing Secret to be reported")
    cluster.kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "credentials"}, "stringData": {"user": "migrator"}},
    )
    done = wait_pod(cluster, namespace, "needs-secret", "Succeeded")
    assert message(done) == "migrator"


def test_deleting_a_pod_sends_sigterm_and_removes_it(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    marks = host_folder(tmp_path / "marks", writable=False)
    script = "trap 'echo term > /marks/got-term; exit 0' TERM; while :; do sleep 0.1; done"
    pod = shell_pod(
        cluster,
        "long",
        script,
        terminationGracePeriodSeconds=30,
        volumes=[host_volume("marks", marks)],
        container={"volumeMounts": [{"name": "marks", "mountPath": "/marks"}]},
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "long", "Running")
    cluster.kube.delete(pod_path(namespace, "long"))
    wait_gone(cluster, pod_path(namespace, "long"))
    assert (marks / "got-term").read_text() == "term\n"


# -- what kubelet enforces -------------------------------------------------------------------


def test_the_security_context_is_enforced(cluster: Cluster, namespace: str) -> None:
    """The worker Pod's settings: non-root, read-only root, no capabilities, no token."""
    script = (
        "id -u > /dev/termination-log; grep CapEff /proc/self/status >> /dev/termination-log; "
        "touch /written 2>/dev/null && echo root-writable >> /dev/termination-log; "
        "ls /var/run/secrets/kubernetes.io 2>/dev/null && echo token >> /dev/termination-log; "
        "exit 0"
    )
    pod = shell_pod(
        cluster,
        "confined",
        script,
        automountServiceAccountToken=False,
        container={"securityContext": NON_ROOT},
    )
    cluster.kube.create(pod_path(namespace), pod)
    done = wait_pod(cluster, namespace, "confined", "Succeeded")
    assert message(done).split() == [str(WORKER_UID), "CapEff:", "0000000000000000"]

    # An image that runs as root is refused when the Pod asks for a non-root user.
    rooted = shell_pod(
        cluster, "rooted", "true", container={"securityContext": {"runAsNonRoot": True}}
    )
    cluster.kube.create(pod_path(namespace), rooted)

    def refused() -> str | None:
        waiting = container_state(cluster, namespace, "rooted").get("state", {}).get("waiting")
        text = str((waiting or {}).get("message", ""))
        return text if "image will run as root" in text else None

    assert "runAsNonRoot" in wait_until(refused, timeout=60, what="runAsNonRoot to refuse root")


def test_volumes_as_kubelet_makes_them(cluster: Cluster, namespace: str) -> None:
    """ConfigMap, Secret and emptyDir files, and a projected token that the API server
    accepts through the `kubernetes` Service (kube-proxy's rules)."""
    cluster.kube.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"job.json": '{"name": "x"}'}},
    )
    cluster.kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "cookie"}, "stringData": {"cookie": "s3cret"}},
    )
    script = r"""
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(
    f"https://{host}:{port}/api/v1/namespaces/{open(sa + '/namespace').read()}/pods/volumes",
    headers={"Authorization": f"Bearer {token}"})
try:
    urllib.request.urlopen(request, context=context, timeout=10)
    status = 200
except urllib.error.HTTPError as error:
    status = error.code  # the default account may not read Pods: 403 is an answer too
open("/scratch/x", "w").write("scratch")
report = {
    "configmap": open("/etc/h2k/job.json").read(),
    "secret": open("/secrets/cookie").read(),
    "scratch": open("/scratch/x").read(),
    "api": status,
    "service": host,
}
open("/dev/termination-log", "w").write(json.dumps(report))
"""
    pod = shell_pod(
        cluster,
        "volumes",
        "",
        image="worker",
        volumes=[
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "cookie", "secret": {"secretName": "cookie"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}},
        ],
        container={
            "command": ["python3", "-c", script],
            "securityContext": NON_ROOT,
            "volumeMounts": [
                {"name": "settings", "mountPath": "/etc/h2k", "readOnly": True},
                {"name": "cookie", "mountPath": "/secrets", "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        },
        securityContext={"fsGroup": WORKER_UID},
    )
    cluster.kube.create(pod_path(namespace), pod)
    done = wait_pod(cluster, namespace, "volumes", "Succeeded")
    report = json.loads(message(done))
    assert report["configmap"] == '{"name": "x"}'
    assert report["secret"] == "s3cret"
    assert report["scratch"] == "scratch"
    assert report["service"] == "10.0.0.1"
    assert report["api"] == 403  # authenticated (not 401) as the default account


def test_claims_are_mounted_with_fs_group_and_block_claims_are_devices(
    cluster: Cluster, namespace: str
) -> None:
    local = cluster.require_local()
    claims = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"
    for name, mode in (("files", "Filesystem"), ("device", "Block")):
        cluster.kube.create(
            claims,
            {
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": STORAGE_CLASS,
                    "volumeMode": mode,
                    "resources": {"requests": {"storage": "16Mi"}},
                },
            },
        )
    script = (
        "echo converted > /data/disk.img && "
        # fsync: the written block sits in the device's page cache, not yet in the file.
        "printf 'KDMV-block' | dd of=/dev/xvda bs=512 conv=notrunc,fsync status=none && "
        "stat -c '%g' /data > /dev/termination-log"
    )
    pod = shell_pod(
        cluster,
        "writer",
        script,
        securityContext={"fsGroup": WORKER_UID, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID},
        volumes=[
            {"name": "files", "persistentVolumeClaim": {"claimName": "files"}},
            {"name": "device", "persistentVolumeClaim": {"claimName": "device"}},
        ],
        container={
            "securityContext": NON_ROOT,
            "volumeMounts": [{"name": "files", "mountPath": "/data"}],
            "volumeDevices": [{"name": "device", "devicePath": "/dev/xvda"}],
        },
    )
    cluster.kube.create(pod_path(namespace), pod)
    done = wait_pod(cluster, namespace, "writer", "Succeeded")
    assert message(done).strip() == str(WORKER_UID)  # fsGroup applied by kubelet

    def volume(claim: str) -> Obj:
        bound = cluster.kube.get(f"{claims}/{claim}")
        assert bound["status"]["phase"] == "Bound"
        return cluster.kube.get(f"/api/v1/persistentvolumes/{bound['spec']['volumeName']}")

    folder = Path(volume("files")["spec"]["local"]["path"])
    assert folder == local.provisioner.claim_dir(namespace, "files")
    assert (folder / "disk.img").read_text() == "converted\n"
    device = volume("device")
    assert device["spec"]["volumeMode"] == "Block"
    backing = Path(device["metadata"]["annotations"]["hyper2kvm.io/backing-file"])
    with backing.open("rb") as stream:
        assert stream.read(10) == b"KDMV-block"


def test_limits_are_enforced_memory_and_scratch_size(cluster: Cluster, namespace: str) -> None:
    hungry = shell_pod(
        cluster,
        "hungry",
        "",
        image="worker",
        container={
            "command": ["python3", "-c", "block = bytearray(512 << 20); print(len(block))"],
            "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}},
        },
    )
    cluster.kube.create(pod_path(namespace), hungry)
    failed = wait_pod(cluster, namespace, "hungry", "Failed")
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"

    filler = shell_pod(
        cluster,
        "filler",
        "dd if=/dev/zero of=/scratch/fill bs=1M count=64 status=none; sleep 600",
        volumes=[{"name": "scratch", "emptyDir": {"sizeLimit": "8Mi"}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
    )
    cluster.kube.create(pod_path(namespace), filler)
    evicted = wait_pod(cluster, namespace, "filler", "Failed", timeout=120)
    assert evicted["status"].get("reason") == "Evicted"
    assert "scratch" in evicted["status"]["message"]


def test_probes_gate_readiness_and_restart_a_dead_container(
    cluster: Cluster, namespace: str
) -> None:
    probed = shell_pod(
        cluster,
        "probed",
        "",
        image="worker",
        restartPolicy="Always",
        container={
            "command": ["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
            # Never passes: kubelet restarts the container after each failed check.
            "livenessProbe": {
                "exec": {"command": ["test", "-e", "/nonexistent"]},
                "initialDelaySeconds": 1,
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
        },
    )
    cluster.kube.create(pod_path(namespace), probed)

    def ready_once() -> bool:
        conditions = cluster.kube.get(pod_path(namespace, "probed"))["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_until(ready_once, timeout=60, what="the readiness probe to pass")
    wait_until(
        lambda: container_state(cluster, namespace, "probed").get("restartCount", 0) >= 1,
        timeout=90,
        what="the liveness probe to restart the container",
    )


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


def gate_pod(cluster: Cluster, name: str, script: str, gate: Path) -> Obj:
    """A Pod whose script may wait for the test to create /gate/go."""
    return shell_pod(
        cluster,
        name,
        script,
        volumes=[host_volume("gate", gate)],
        container={"volumeMounts": [{"name": "gate", "mountPath": "/gate"}]},
    )


def test_kubectl_watch_streams_pod_changes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # The pod runs until the test creates "go": the change to Completed then happens while
    # kubectl is already watching, whenever kubectl got there.
    gate = host_folder(tmp_path / "gate", writable=False)
    pod = gate_pod(cluster, "watched", "while [ ! -e /gate/go ]; do sleep 0.1; done", gate)
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "watched", "Running")

    watch = KubectlStream(cluster, "get", "pods", "-n", namespace, "-w", "--no-headers")

    def saw(status: str) -> bool:
        seen = watch.lines()
        return any(line.split()[:3] == ["watched", "1/1" if status == "Running" else "0/1",
                                        status] for line in seen if line.strip())  # fmt: skip

    try:
        wait_until(lambda: saw("Running"), timeout=60, what="kubectl -w to list the pod")
        (gate / "go").touch()
        wait_until(lambda: saw("Completed"), timeout=60, what="kubectl -w to stream Completed")
    finally:
        watch.stop()


def test_kubectl_logs_returns_the_containers_output(cluster: Cluster, namespace: str) -> None:
    pod = shell_pod(
        cluster,
        "printer",
        "echo alpha; sleep 0.1; echo beta >&2; sleep 0.1; echo gamma",
        metadata={"labels": {"app": "printer"}},
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
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                            line.split(" ")[0]) for line in lines)  # fmt: skip

    selected = kubectl(cluster, "logs", "-n", namespace, "-l", "app=printer", "--prefix")
    assert selected.returncode == 0, selected.stderr
    assert selected.stdout.splitlines() == [
        f"[pod/printer/main] {word}" for word in ("alpha", "beta", "gamma")
    ]

    limited = kubectl(cluster, "logs", "-n", namespace, "printer", "--limit-bytes=8")
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout == "alpha\nbe"

    unknown = kubectl(cluster, "logs", "-n", namespace, "printer", "-c", "nope")
    assert unknown.returncode != 0
    assert "container nope is not valid for pod printer" in unknown.stderr


def test_kubectl_logs_follow_streams_until_the_process_exits(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # Five lines, then a wait for the test's go-ahead, then five more and the exit: the first
    # half is seen while the process still runs, whenever kubectl got there.
    gate = host_folder(tmp_path / "gate", writable=False)
    script = (
        'for i in 1 2 3 4 5 6 7 8 9 10; do echo "line $i"; '
        'if [ "$i" = 5 ]; then while [ ! -e /gate/go ]; do sleep 0.1; done; fi; '
        "sleep 0.2; done"
    )
    cluster.kube.create(pod_path(namespace), gate_pod(cluster, "ticker", script, gate))
    wait_pod(cluster, namespace, "ticker", "Running")

    follow = KubectlStream(cluster, "logs", "-f", "-n", namespace, "ticker")
    try:
        wait_until(
            lambda: "line 5" in follow.lines(), timeout=60, what="kubectl logs -f to stream line 5"
        )
        assert container_state(cluster, namespace, "ticker")["state"].get("running")
        (gate / "go").touch()
        # kubectl ends by itself once the process has exited and its output is sent.
        stderr = follow.process.stderr
        assert follow.process.wait(timeout=60) == 0, stderr.read() if stderr else ""
    finally:
        follow.stop()
    assert follow.all_lines() == [f"line {i}" for i in range(1, 11)]
    wait_pod(cluster, namespace, "ticker", "Succeeded")


def test_kubectl_exec_and_port_forward_reach_the_container(
    cluster: Cluster, namespace: str
) -> None:
    pod = shell_pod(
        cluster,
        "served",
        "",
        image="worker",
        container={
            "command": ["python3", "-m", "http.server", "8000", "--directory", "/etc"],
            "securityContext": NON_ROOT,
        },
    )
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, "served", "Running")

    done = kubectl(cluster, "exec", "-n", namespace, "served", "--", "id", "-u")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(WORKER_UID)

    port = free_port()
    forward = KubectlStream(cluster, "port-forward", "-n", namespace, "pod/served", f"{port}:8000")
    try:
        wait_until(
            lambda: any("Forwarding from" in line for line in forward.lines()),
            timeout=30,
            what="kubectl port-forward to listen",
        )
        url = f"http://127.0.0.1:{port}/os-release"

        def fetched() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())

        body = wait_until(fetched, timeout=30, what="a request through the port-forward")
        assert b"Debian GNU/Linux 12" in body
    finally:
        forward.stop()


def test_a_pod_reaches_a_pod_on_the_other_node_and_the_host_reaches_both(
    cluster: Cluster, namespace: str
) -> None:
    first, second = cluster.nodes[:2]
    server = shell_pod(
        cluster,
        "server",
        "",
        image="worker",
        nodeSelector={"kubernetes.io/hostname": second, **cluster.selector},
        container={"command": ["python3", "-m", "http.server", "8000", "--directory", "/etc"]},
    )
    cluster.kube.create(pod_path(namespace), server)
    address = wait_pod(cluster, namespace, "server", "Running")["status"]["podIP"]
    url = f"http://{address}:8000/hostname"
    wait_until(
        lambda: urllib.request.urlopen(url, timeout=5).status == 200,
        timeout=30,
        what="the host to reach the Pod",
    )
    client = shell_pod(
        cluster,
        "client",
        "",
        image="worker",
        nodeSelector={"kubernetes.io/hostname": first, **cluster.selector},
        container={
            "command": [
                "python3",
                "-c",
                "import urllib.request, sys; sys.exit(urllib.request.urlopen(sys.argv[1],"
                " timeout=10).status != 200)",
                url,
            ]
        },
    )
    cluster.kube.create(pod_path(namespace), client)
    wait_pod(cluster, namespace, "client", "Succeeded")


def test_a_node_whose_kubelet_stops_is_declared_lost_and_recovers(cluster: Cluster) -> None:
    """As on any cluster: no heartbeats, so the node lifecycle controller marks the Node not
    ready and taints it; kubelet back, the Node is Ready and untainted again."""
    local = cluster.require_local()
    name = cluster.nodes[-1]
    node = local.node(name)

    def ready() -> str:
        conditions = cluster.kube.get(f"/api/v1/nodes/{name}")["status"]["conditions"]
        return str(next(c["status"] for c in conditions if c["type"] == "Ready"))

    def taints() -> set[str]:
        found = cluster.kube.get(f"/api/v1/nodes/{name}")["spec"].get("taints") or []
        return {t["key"] for t in found}

    node.stop_kubelet()
    try:
        wait_until(lambda: ready() == "Unknown", timeout=180, what=f"{name} to be lost")
        wait_until(
            lambda: "node.kubernetes.io/unreachable" in taints(),
            timeout=60,
            what=f"{name} to be tainted unreachable",
        )
    finally:
        node.start_kubelet()
    wait_until(lambda: ready() == "True", timeout=120, what=f"{name} Ready again")
    wait_until(
        lambda: "node.kubernetes.io/unreachable" not in taints(),
        timeout=60,
        what=f"{name} untainted",
    )
