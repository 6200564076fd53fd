"""MigrationJobs whose source is a VM in vSphere, end to end: VMware's simulator (vcsim) on
the host's cluster address, the operator as a process, worker Pods on the real nodes
reading the VM's flat extents over HTTPS with a session of their own."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster, host_folder
from tests.cluster.harness.processes import wait_until
from tests.cluster.harness.provisioner import STORAGE_CLASS
from tests.cluster.kubevirt import kubevirt_check
from tests.cluster.operator_process import OperatorProcess
from tests.cluster.test_operator import (
    TERMINAL,
    job_status,
    submit,
    wait_phase,
    worker_pods,
)
from tests.cluster.test_vsphere_provider import (
    apply,
    operator_with_providers,
    provider,
    secret,
    wait_ready,
)
from tests.vsphere import vcsim, vms
from tests.worker.images import MiB, make_raw, raw_digest, same_content

from hyper2kvm_operator.vsphere import client, inventory

FINISH_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def simulator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vcsim.Vcsim]:
    """vcsim where worker Pods reach it: on the host's cluster address, with its own CA."""
    host = cluster.host_address
    with vcsim.running(tmp_path_factory.mktemp("vcsim"), host=host) as sim:
        yield sim


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # Sessions touched every 3 s: a session lost with a restarted vcsim is seen at once.
    settings = {"HYPER2KVM_VSPHERE_KEEPALIVE": "3"}
    yield from operator_with_providers(cluster, tmp_path_factory, settings)


def connect_provider(
    cluster: Cluster,
    namespace: str,
    sim: vcsim.Vcsim,
    name: str = "vc",
    password: str | None = None,
    **spec: Any,
) -> None:
    """A marked Secret with the login and a VSphereProvider trusting vcsim's CA."""
    login = {"username": sim.username, "password": password or sim.password}
    trust = spec.pop("trust", None) or {"caBundle": sim.ca_pem.read_text()}
    apply(cluster, secret(namespace, name, login),
          provider(namespace, name, sim.url, name, **trust, **spec))  # fmt: skip


def vm_job(
    cluster: Cluster, name: str, vm: str, out: Path, provider_name: str = "vc", **source: Any
) -> dict[str, Any]:
    host_folder(out, writable=True)
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name},
        "spec": {
            "operation": "convert",
            "source": {"vsphere": {"provider": provider_name, "vm": {"name": vm}, **source}},
            "output": {"hostPath": {"path": str(out)}},
            "placement": {"nodeSelector": cluster.selector},
        },
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def fill_disks(sim: vcsim.Vcsim, vm: str, work: Path) -> list[Path]:
    """Known bytes PUT into each of the VM's flat extents (as layoutEx names them); the raw
    images they came from, in device order."""
    raws = []
    for index, (size, extent) in enumerate(extents(sim, vm)):
        raw = make_raw(work / f"{vm}-{index}.raw", size, [(0, MiB), (size // 2, 2 * MiB)],
                       seed=index + 7)  # fmt: skip
        datastore, path = extent[1:].split("] ", 1)
        sim.govc("datastore.upload", "-ds", datastore, str(raw), path)
        raws.append(raw)
    return raws


def vm_with_data(
    sim: vcsim.Vcsim, prefix: str, work: Path, power_on: bool = False
) -> tuple[str, list[Path]]:
    """A new VM (see vms.create) whose disks hold known bytes, and those bytes' images."""
    vm = unique(prefix)
    vms.create(sim, vm, power_on=power_on)
    return vm, fill_disks(sim, vm, work)


def wait_end(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_phase(cluster, namespace, name, TERMINAL, timeout=FINISH_TIMEOUT)


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = cluster.kube.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector=f"involvedObject.name={name},involvedObject.kind=MigrationJob",
    )
    return list(found["items"])


def session_keys(sim: vcsim.Vcsim) -> set[str]:
    """The keys of the sessions the server holds now."""
    listed = json.loads(sim.govc("session.ls", "-json"))
    return {str(entry["key"]) for entry in listed.get("sessionList") or []}


def kept_alive(sim: vcsim.Vcsim, key: str) -> bool:
    """Whether the session `key` was used after it was made (the worker's reads of /folder
    do not count in vcsim: only SOAP calls, such as the operator's keep-alives)."""
    listed = json.loads(sim.govc("session.ls", "-json"))
    for entry in listed.get("sessionList") or []:
        if entry["key"] == key:
            return _instant(entry["lastActiveTime"]) - _instant(entry["loginTime"]) > 0.5
    return False


def _instant(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with up to nanoseconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def extents(sim: vcsim.Vcsim, vm: str) -> list[tuple[int, str]]:
    """(capacity, "[ds] path") of each disk's flat extent, as layoutEx names it."""
    conn = client.connect(sim.url, sim.username, sim.password, ca_pem=sim.ca_pem.read_text())
    try:
        facts = inventory.describe(conn, inventory.find_vm(conn, inventory.VmRef(name=vm)))
    finally:
        client.logout(conn)
    assert all(disk.extent for disk in facts.disks)
    return [(disk.capacity_bytes, str(disk.extent)) for disk in facts.disks]


def test_a_vm_named_in_a_job_is_migrated_without_its_password_reaching_the_worker(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    tmp_path: Path,
) -> None:
    cluster.require_local()
    vm, raws = vm_with_data(simulator, "web", tmp_path)
    connect_provider(cluster, namespace, simulator)
    out = tmp_path / "out"
    submit(cluster, namespace, vm_job(cluster, "web", vm, out))

    # While the attempt runs, its session is in a Secret the job owns; the test keeps its key.
    def session_secret() -> dict[str, str] | None:
        found = cluster.kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/web-1-vsphere")
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in found["data"].items()}

    held = wait_until(session_secret, timeout=120, what="the attempt's session Secret")
    assert held["key"] in session_keys(simulator)
    pods = wait_until(lambda: worker_pods(cluster, namespace, "web") or None, timeout=60,
                      what="the worker Pod")  # fmt: skip

    final = wait_end(cluster, namespace, "web")
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    found = final["vm"]
    assert (found["name"], found["cpus"], found["memoryMiB"], found["firmware"]) == (
        vm, 4, 2048, "efi",
    )  # fmt: skip
    assert found["secureBoot"] is True and found["guestId"] == "ubuntu64Guest"
    assert [n["mac"] for n in found["nics"]] == list(vms.MACS)
    assert [n["model"] for n in found["nics"]] == ["vmxnet3", "e1000e"]
    assert [d["capacityBytes"] for d in found["disks"]] == [m * MiB for m in vms.DISKS_MB]
    assert all(d["datastore"] == vms.DATASTORE and d["extent"] for d in found["disks"])
    assert found["host"] == vms.HOST
    by_disk = {d["name"]: d for d in final["disks"]}
    for index, raw in enumerate(raws, start=1):
        output = out / f"{vm}-disk-{index}.qcow2"
        assert same_content(raw, output, "raw", "qcow2"), output
        assert by_disk[f"disk-{index}"]["digest"] == raw_digest(raw)

    # Nothing the worker got holds the password: not its Pod, not its job, not its mounts.
    pod = pods[0]
    assert simulator.password not in json.dumps(pod)
    mounted = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
    assert mounted == ["web-1-vsphere"]
    configmap = cluster.kube.get(f"/api/v1/namespaces/{namespace}/configmaps/web-1-job")
    job = json.dumps(configmap["data"])
    assert simulator.password not in job and held["cookie"] not in job
    assert held["cookie"] not in json.dumps(pod) and held["cookie"] not in json.dumps(final)
    # The attempt over, its session ended on the server and its Secret is gone.
    wait_until(lambda: session_secret() is None, timeout=60, what="the session Secret deleted")
    assert held["key"] not in session_keys(simulator)
    assert simulator.password not in operator.log_tail(1_000_000)
    assert held["cookie"].split('"')[1] not in operator.log_tail(1_000_000)


def test_what_cannot_be_migrated_fails_at_once_saying_why(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cluster.require_local()
    connect_provider(cluster, namespace, simulator)
    connect_provider(cluster, namespace, simulator, name="wrong-password", password="nope")
    other = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=not vcsim", "-keyout", str(other / "key.pem"),
         "-out", str(other / "ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    connect_provider(cluster, namespace, simulator, name="wrong-ca",
                     trust={"caBundle": (other / "ca.pem").read_text()})  # fmt: skip
    snapshotted, running, plain = unique("snap"), unique("on"), unique("plain")
    for name in (snapshotted, running, plain):
        vms.create(simulator, name, power_on=name == running)
    simulator.govc("snapshot.create", "-vm", snapshotted, "before-upgrade")
    out = tmp_path / "out"
    cases = {
        "missing": (vm_job(cluster, "missing", "no-such-vm", out), "VMNotFound", "no such VM"),
        "snapshot": (
            vm_job(cluster, "snapshot", snapshotted, out),
            "Snapshot",
            "snapshot 'before-upgrade': delete or consolidate",
        ),
        "running": (vm_job(cluster, "running", running, out), "PoweredOn", "powerOff"),
        "password": (
            vm_job(cluster, "password", plain, out, provider_name="wrong-password"),
            "InvalidLogin",
            "refused the username or password",
        ),
        "ca": (
            vm_job(cluster, "ca", plain, out, provider_name="wrong-ca"),
            "CertificateMismatch",
            "not trusted",
        ),
    }
    for body, _, _ in cases.values():
        submit(cluster, namespace, body)
    for name, (_, reason, text) in cases.items():
        final = wait_end(cluster, namespace, name)
        assert (final["phase"], final["reason"]) == ("Failed", reason), (name, final)
        assert text in final["message"], (name, final["message"])
        assert not worker_pods(cluster, namespace, name), name  # refused before any copy
    assert vms.power_state_by_name(simulator, running) == "poweredOn"  # left as it was


def test_a_running_vm_is_shut_down_when_the_job_asks_and_the_status_says_so(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    tmp_path: Path,
) -> None:
    cluster.require_local()
    vm, raws = vm_with_data(simulator, "db", tmp_path, power_on=True)
    connect_provider(cluster, namespace, simulator)
    out = tmp_path / "out"
    submit(cluster, namespace, vm_job(cluster, "db", vm, out, powerOff="shutdown"))
    final = wait_end(cluster, namespace, "db")
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert final["vm"]["powerState"] == "poweredOn"  # as found at admission
    assert final["vm"]["stopped"]["how"] == "GuestShutdown"
    assert final["vm"]["stopped"]["time"] <= final["completionTime"]
    assert vms.power_state_by_name(simulator, vm) == "poweredOff"
    stopped = [e for e in events(cluster, namespace, "db") if e["reason"] == "PoweredOff"]
    assert stopped and f"VM {vm} was shut down by its guest" in stopped[0]["message"]
    assert same_content(raws[0], out / f"{vm}-disk-1.qcow2", "raw", "qcow2")


def test_a_pinned_thumbprint_reaches_the_worker_as_the_pinned_certificate(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    tmp_path: Path,
) -> None:
    """curl cannot pin a thumbprint: the worker trusts the certificate the operator found
    behind the pinned thumbprint, and nothing else."""
    cluster.require_local()
    vm, raws = vm_with_data(simulator, "pin", tmp_path)
    connect_provider(cluster, namespace, simulator, name="pinned",
                     trust={"thumbprint": simulator.thumbprint_sha256})  # fmt: skip
    out = tmp_path / "out"
    submit(cluster, namespace, vm_job(cluster, "pinned", vm, out, "pinned"))
    final = wait_end(cluster, namespace, "pinned")
    assert final["phase"] == "Succeeded", (final, operator.log_tail())
    assert same_content(raws[1], out / f"{vm}-disk-2.qcow2", "raw", "qcow2")


def test_no_more_disks_are_read_from_one_esxi_host_than_its_provider_allows(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    tmp_path: Path,
) -> None:
    """Two jobs, two nodes with room for both, one host allowed one reader: one waits,
    saying why, and starts only once the other has ended."""
    cluster.require_local()
    connect_provider(cluster, namespace, simulator, name="one-at-a-time", maxDisksPerHost=1)
    wait_ready(cluster, namespace, "one-at-a-time", "True", "Connected")
    names = {job: vm_with_data(simulator, "app", tmp_path)[0] for job in ("first", "second")}
    for job, vm in names.items():
        submit(cluster, namespace, vm_job(cluster, job, vm, tmp_path / job, "one-at-a-time"))
    said: list[str] = []

    def both_ended() -> bool:
        states = [job_status(cluster, namespace, job) for job in names]
        said.extend(s.get("message") or "" for s in states if s.get("phase") == "Queued")
        return all(s.get("phase") in TERMINAL for s in states)

    wait_until(both_ended, timeout=2 * FINISH_TIMEOUT, what="both jobs to end", interval=0.3)
    ends = {job: job_status(cluster, namespace, job) for job in names}
    assert all(s["phase"] == "Succeeded" for s in ends.values()), ends
    spans = sorted(
        (_entered(s, "Scheduled"), s["completionTime"]) for s in ends.values()
    )  # (start, end) of each attempt, in start order
    assert spans[1][0] >= spans[0][1], spans  # the second began after the first had ended
    assert any(f"ESXi host {vms.HOST} is read by 1 jobs" in text for text in said), said


def _entered(state: dict[str, Any], phase: str) -> str:
    return str(next(h["time"] for h in state["history"] if h["phase"] == phase))


def test_vcsim_killed_mid_copy_is_a_transient_failure_and_the_job_is_retried(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The server dies while the worker reads, and a new one comes up on the same address,
    knowing neither the VM nor the sessions: the operator finds the attempt's session gone,
    ends the attempt as a transient failure and retries it. Once the VM is back, the next
    attempt, with a new session, copies the disk. (A server back at once with the same
    file and session would be ridden out by nbdkit's retry filters inside the attempt.)"""
    cluster.require_local()
    workdir = tmp_path_factory.mktemp("vcsim-killed")
    vm = unique("big")
    big_mb = 768  # long enough a copy to be caught in the middle

    def start(port: int = 0) -> Any:
        return vcsim.running(workdir, host=cluster.host_address, port=port)

    def make_vm(sim: vcsim.Vcsim) -> Path:
        sim.govc("vm.create", "-on=false", "-disk", f"{big_mb}MB", "-host", vms.HOST,
                 "-ds", vms.DATASTORE, "-net", vms.NETWORKS[0], vm)  # fmt: skip
        [(size, name)] = extents(sim, vm)
        extent = vms.datastore_file(sim, name)
        # Written in place (vcsim serves the file as it is): data spread over the disk.
        return make_raw(extent, size, [(i * size // 8, 4 * MiB) for i in range(8)], seed=3)

    first = start()
    sim = first.__enter__()
    try:
        make_vm(sim)
        connect_provider(cluster, namespace, sim)
        out = tmp_path / "out"
        body = vm_job(cluster, "big", vm, out)
        body["spec"]["retries"] = 6  # attempts may start before the VM is back
        submit(cluster, namespace, body)

        def copying() -> bool:
            state = job_status(cluster, namespace, "big")
            assert state.get("phase") not in TERMINAL, state
            return int(state.get("bytesDone") or 0) > 0

        wait_until(copying, timeout=180, what="the copy to begin", interval=0.2)
        # The operator keeps the worker's session alive while the attempt runs.
        found = cluster.kube.get(f"/api/v1/namespaces/{namespace}/secrets/big-1-vsphere")
        key = base64.b64decode(found["data"]["key"]).decode()
        wait_until(lambda: kept_alive(sim, key), timeout=60, what="a keep-alive of the session")
        port = sim.port
        subprocess.run(["kill", "-KILL", str(sim.pid)], check=True)
    finally:
        first.__exit__(None, None, None)
    with start(port) as back:

        def retrying() -> dict[str, Any] | None:
            state = job_status(cluster, namespace, "big")
            assert state.get("phase") not in TERMINAL, state
            return state if state.get("reason") == "Retrying" else None

        failed = wait_until(retrying, timeout=120, what="attempt 1 to fail", interval=0.3)
        assert "attempt 1 failed (SessionExpired" in failed["message"], failed
        source = make_vm(back)
        final = wait_end(cluster, namespace, "big")
        assert final["phase"] == "Succeeded", (final, operator.log_tail())
        assert final["attempt"] >= 2
        # Read while vcsim runs: it removes its datastores when it stops.
        assert same_content(source, out / f"{vm}-disk-1.qcow2", "raw", "qcow2")
        assert final["disks"][0]["digest"] == raw_digest(source)


def test_a_migrated_vm_ends_as_a_kubevirt_vm_over_its_verified_claims(
    operator: OperatorProcess,
    cluster: Cluster,
    namespace: str,
    simulator: vcsim.Vcsim,
    kubevirt_vms: None,
    tmp_path: Path,
) -> None:
    """Two jobs of one VM: one makes the VirtualMachine, the other (a dry run) shows it in
    its status; both write the two disks into claims the operator makes (sized from each
    disk, provisioned by the test cluster's provisioner), and mark them verified."""
    cluster.require_local()
    vm, raws = vm_with_data(simulator, "app", tmp_path)
    connect_provider(cluster, namespace, simulator)
    for name, dry_run in (("app", False), ("app-dry", True)):
        body = vm_job(cluster, name, vm, tmp_path / "unused")
        body["spec"]["output"] = {
            "claim": {"create": {"storageClassName": STORAGE_CLASS}}, "format": "qcow2",
        }  # fmt: skip
        body["spec"]["target"] = {"kubevirt": {"dryRun": dry_run, "networks": [
            {"source": vms.NETWORKS[0], "target": "pod"},
            {"source": vms.NETWORKS[1], "target": "multus:default/vlan20"},
        ]}}  # fmt: skip
        if dry_run:
            body["spec"]["target"]["kubevirt"]["name"] = "preview"
        submit(cluster, namespace, body)
    made = wait_end(cluster, namespace, "app")
    dry = wait_end(cluster, namespace, "app-dry")
    assert made["phase"] == "Succeeded", (made, operator.log_tail())
    assert dry["phase"] == "Succeeded", (dry, operator.log_tail())

    # Every claim holds its disk, verified, and says so with the digest.
    for job in ("app", "app-dry"):
        for index, raw in enumerate(raws, start=1):
            claim = cluster.kube.get(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{job}-disk-{index}"
            )
            annotations = claim["metadata"]["annotations"]
            assert annotations["hyper2kvm.io/verified"] == "true", claim
            assert annotations["hyper2kvm.io/digest"] == raw_digest(raw)
            store = Path(cluster.kube.get(
                f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}"
            )["spec"]["local"]["path"])  # fmt: skip
            assert same_content(raw, store / "disk.img", "raw", "qcow2")

    # The VirtualMachine: KubeVirt's types take it; the source's hardware is in it.
    name = made["kubevirt"]["name"]
    assert made["kubevirt"]["created"] is True
    found = cluster.kube.get(f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}")
    assert "ownerReferences" not in found["metadata"]  # the job may go; the VM stays
    manifest = {k: found[k] for k in ("apiVersion", "kind", "spec")}
    manifest["metadata"] = {"name": name}
    checked = kubevirt_check(manifest)
    assert checked.returncode == 0, checked.stderr
    template = found["spec"]["template"]["spec"]
    assert found["spec"]["runStrategy"] == "Halted"
    assert template["domain"]["cpu"]["cores"] * template["domain"]["cpu"].get("sockets", 1) == 4
    assert template["domain"]["memory"]["guest"] == "2Gi"
    assert template["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    claims = [v["persistentVolumeClaim"]["claimName"] for v in template["volumes"]]
    assert sorted(claims) == ["app-disk-1", "app-disk-2"]
    macs = [i["macAddress"] for i in template["domain"]["devices"]["interfaces"]]
    assert macs == list(vms.MACS)
    assert template["networks"][1] == {"name": "net1", "multus": {
        "networkName": "default/vlan20"}}  # fmt: skip
    origins = made["kubevirt"]["origins"]
    assert origins["domain.cpu"] == "vsphere" and origins["domain.devices.disks.bus"] == "job"
    created = [e for e in events(cluster, namespace, "app")
               if e["reason"] == "VirtualMachineCreated"]  # fmt: skip
    assert created, events(cluster, namespace, "app")

    # The dry run made no VM, and shows the one it would make.
    assert dry["kubevirt"]["created"] is False
    shown = yaml.safe_load(dry["kubevirt"]["manifest"])
    assert (shown["kind"], shown["metadata"]["name"]) == ("VirtualMachine", "preview")
    assert kubevirt_check(shown).returncode == 0
    where = f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/preview"
    assert cluster.kube.get_or_none(where) is None
