"""The MigrationJob CRD on a real API server: defaults, refusals with readable messages,
immutability once started, printer columns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.conftest import Cluster

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "migrationjobs.hyper2kvm.io.yaml"


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, stdin=stdin)


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    applied = kubectl(cluster, "apply", "-f", str(CRD))
    assert applied.returncode == 0, applied.stderr
    waited = kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/migrationjobs.hyper2kvm.io",
    )
    assert waited.returncode == 0, waited.stderr


def job(name: str, **disk: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name},
        "spec": {
            "operation": "convert",
            "disks": [
                {
                    "name": "disk0",
                    "source": {"hostPath": {"path": "/srv/vmware/web01.vmdk"}},
                    "output": {"hostPath": {"path": "/srv/kvm"}, "path": "web01.qcow2"},
                    **disk,
                }
            ],
        },
    }


def apply(
    cluster: Cluster, namespace: str, body: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))


def test_defaults_are_filled_in_by_the_api_server(
    crd: None, cluster: Cluster, namespace: str
) -> None:
    assert apply(cluster, namespace, job("web01")).returncode == 0
    stored = json.loads(
        kubectl(cluster, "get", "-n", namespace, "mj", "web01", "-o", "json").stdout
    )
    spec = stored["spec"]
    assert (spec["verify"], spec["retries"], spec["priority"], spec["cancel"]) == (
        True,
        3,
        0,
        False,
    )
    assert spec["disks"][0]["output"]["format"] == "qcow2"


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (
            {"source": {"hostPath": {"path": "/a.vmdk"}, "http": {"url": "http://h/a.vmdk"}}},
            "a disk source needs exactly one of pvc, hostPath, http, ova",
        ),
        (
            {"source": {"pvc": {"claimName": "vm", "path": "../etc/shadow"}}},
            "path must not contain '..'",
        ),
        (
            {"source": {"pvc": {"claimName": "vm", "path": "/etc/shadow"}}},
            "path must be relative to its volume",
        ),
        ({"source": {"hostPath": {"path": "relative.vmdk"}}}, "hostPath path must be absolute"),
        (
            {"output": {"hostPath": {"path": "/o"}, "pvc": {"claimName": "x"}, "path": "a.qcow2"}},
            "an output needs exactly one of pvc, hostPath",
        ),
        (
            {
                "output": {
                    "hostPath": {"path": "/o"},
                    "path": "a.raw",
                    "format": "raw",
                    "compression": "zstd",
                }
            },
            "compression needs format qcow2",
        ),
        ({"source": {"http": {"url": "ftp://h/a.vmdk"}}}, "should match"),
    ],
)
def test_bad_specs_are_refused_with_a_readable_message(
    disk: dict[str, Any], message: str, crd: None, cluster: Cluster, namespace: str
) -> None:
    refused = apply(cluster, namespace, job("bad", **disk))
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


def test_spec_level_rules(crd: None, cluster: Cluster, namespace: str) -> None:
    no_output = job("no-output")
    del no_output["spec"]["disks"][0]["output"]
    refused = apply(cluster, namespace, no_output)
    assert "convert and offline_fix need an output for every disk" in refused.stderr
    no_output["spec"]["operation"] = "inspect"
    assert apply(cluster, namespace, no_output).returncode == 0

    twice = job("twice")
    twice["spec"]["disks"] *= 2
    assert "Duplicate value" in apply(cluster, namespace, twice).stderr
    fix_on_convert = job("fix-on-convert")
    fix_on_convert["spec"]["fix"] = {"dryRun": True}
    assert (
        "fix options apply to operation offline_fix only"
        in apply(cluster, namespace, fix_on_convert).stderr
    )
    dry_run = job("dry-run")
    dry_run["spec"].update(operation="offline_fix", fix={"dryRun": True})
    del dry_run["spec"]["disks"][0]["output"]
    accepted = apply(cluster, namespace, dry_run)
    assert accepted.returncode == 0, accepted.stderr
    wild = job("wild")
    wild["spec"]["retries"] = 99
    assert "spec.retries" in apply(cluster, namespace, wild).stderr


def test_spec_is_frozen_once_admitted_but_cancel_and_priority_are_not(
    crd: None, cluster: Cluster, namespace: str
) -> None:
    """What the operator checked against the policy at admission is what runs: a queued
    job cannot be edited to a forbidden path (only cancel and priority change)."""
    assert apply(cluster, namespace, job("started")).returncode == 0
    target = ["-n", namespace, "mj", "started"]

    def patch(spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
        body = json.dumps({"spec": spec})
        return kubectl(cluster, "patch", *target, "--type=merge", "-p", body)

    assert patch({"verify": False}).returncode == 0  # not admitted yet: still editable
    done = kubectl(cluster, "patch", *target, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": {"phase": "Queued"}}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    changes: list[dict[str, object]] = [
        {"verify": True},
        {"retries": 9},
        {"timeoutSeconds": 60},
        {"placement": {"nodeSelector": {"a": "b"}}},
        {"resources": {"limits": {"memory": "64Gi"}}},
    ]
    for change in changes:
        refused = patch(change)
        assert refused.returncode != 0, change
        assert "only cancel and priority can change once the job is admitted" in refused.stderr
    assert patch({"priority": 5}).returncode == 0
    cancelled = patch({"cancel": True})
    assert cancelled.returncode == 0, cancelled.stderr


def test_printer_columns(crd: None, cluster: Cluster, namespace: str) -> None:
    assert apply(cluster, namespace, job("shown")).returncode == 0
    narrow = kubectl(cluster, "get", "-n", namespace, "migrationjobs").stdout.splitlines()[0]
    wide = kubectl(cluster, "get", "-n", namespace, "mj", "-o", "wide").stdout.splitlines()[0]
    assert narrow.split() == ["NAME", "OPERATION", "PHASE", "PROGRESS", "NODE", "AGE"]
    assert wide.split()[-3:] == ["THROUGHPUT", "ETA", "ATTEMPT"]


def test_example_jobs_are_accepted_by_the_api_server(
    crd: None, cluster: Cluster, namespace: str
) -> None:
    examples = REPO / "examples" / "argocd" / "migrationjobs"
    done = kubectl(cluster, "apply", "-n", namespace, "--dry-run=server", "-f", str(examples))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(server dry run)") == len(list(examples.glob("*.yaml")))


def vm_job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hyper2kvm.io/v1alpha1",
        "kind": "MigrationJob",
        "metadata": {"name": name},
        "spec": {
            "operation": "convert",
            "source": {"vsphere": {"provider": "vc", "vm": {"name": "web01"}}},
            "output": {"hostPath": {"path": "/srv/kvm"}},
            **spec,
        },
    }


def test_a_whole_vm_as_the_source(crd: None, cluster: Cluster, namespace: str) -> None:
    accepted = apply(cluster, namespace, vm_job("vm"))
    assert accepted.returncode == 0, accepted.stderr
    stored = json.loads(kubectl(cluster, "get", "-n", namespace, "mj", "vm", "-o", "json").stdout)
    assert stored["spec"]["output"]["path"] == "{vm}-{disk}.{format}"
    assert stored["spec"]["source"]["vsphere"]["shutdownGraceSeconds"] == 300
    assert "disks" not in stored["spec"]

    both = vm_job("both", disks=job("x")["spec"]["disks"])
    assert "name the disks, or a source" in apply(cluster, namespace, both).stderr
    no_output = vm_job("no-output")
    del no_output["spec"]["output"]
    assert "need an output for every disk" in apply(cluster, namespace, no_output).stderr
    no_output["spec"]["operation"] = "inspect"
    assert apply(cluster, namespace, no_output).returncode == 0
    stray_output = job("stray-output")
    stray_output["spec"]["output"] = {"hostPath": {"path": "/srv/kvm"}}
    assert "output is for the disks of source" in apply(cluster, namespace, stray_output).stderr
    two_vms = vm_job("two-vms")
    two_vms["spec"]["source"]["vsphere"]["vm"]["uuid"] = "42112d4c-0bd5-4f3a-9a0d-5e6f7a8b9c0d"
    assert "vm needs exactly one of name, uuid, moref" in apply(cluster, namespace, two_vms).stderr
    for path, message in [
        ("{vm}.qcow2", "path needs {disk}: one file per disk"),
        ("{vm}/{disk}.{ext}", "path may hold only the placeholders {vm}, {disk} and {format}"),
        ("../{disk}", "path must not contain '..'"),
    ]:
        bad = vm_job("bad-path", output={"hostPath": {"path": "/srv/kvm"}, "path": path})
        assert message in apply(cluster, namespace, bad).stderr, path
    stop = vm_job("stop")
    stop["spec"]["source"]["vsphere"]["powerOff"] = "reboot"
    assert "Unsupported value" in apply(cluster, namespace, stop).stderr


def test_claim_outputs(crd: None, cluster: Cluster, namespace: str) -> None:
    block = {"claim": {"create": {"volumeMode": "Block", "size": "20Gi"}}, "format": "raw"}
    accepted = apply(cluster, namespace, job("block", output=block))
    assert accepted.returncode == 0, accepted.stderr
    found = kubectl(cluster, "get", "-n", namespace, "mj", "block", "-o", "json").stdout
    claim = json.loads(found)["spec"]["disks"][0]["output"]["claim"]
    assert claim["create"]["accessModes"] == ["ReadWriteOnce"]
    for output, message in [
        ({**block, "path": "disk.img"}, "a claim output has none"),
        ({**block, "format": "qcow2"}, "a Block claim holds the disk raw: format raw"),
        ({"claim": {"create": {}}, "format": "raw"}, "a claim to create needs its size"),
        ({"hostPath": {"path": "/o"}, "format": "raw"}, "a pvc or hostPath output needs a path"),
        (
            {"claim": {"create": {"size": "1Gi", "accessModes": ["Everyone"]}}},
            "Unsupported value",
        ),
    ]:
        refused = apply(cluster, namespace, job("bad-claim", output=output))
        assert message in refused.stderr, (output, refused.stderr)
    named = vm_job("vm-claims", output={"claim": {"name": "one", "create": {}}, "format": "raw"})
    assert "named <job>-<disk>" in apply(cluster, namespace, named).stderr
    sized = vm_job("vm-sized", output={"claim": {"create": {"size": "1Gi"}}, "format": "raw"})
    assert "sized from each disk" in apply(cluster, namespace, sized).stderr
