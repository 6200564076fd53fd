"""The images as artefacts: built here (hack/images.sh), run by the real nodes as the
chart runs them: non-root (uid 10001), read-only root filesystem, no capabilities.

The worker image converts a disk and runs offline_fix on its own fixed appliance; the
package in each image is the wheel alone, with the operator's extra only in the operator's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.conftest import WORKER_UID, Cluster, host_folder
from tests.cluster.harness.processes import wait_until
from tests.cluster.test_harness import NON_ROOT, pod_path, shell_pod, wait_pod
from tests.guest import build_guest
from tests.worker.images import MiB, make_raw, same_content, to_vmdk

from hyper2kvm_worker import __version__

pytestmark = pytest.mark.needs("qemu-img", "debootstrap", "guestfish", "kernel")


class Running:
    """A long-running Pod of an image, to run commands in with `kubectl exec`."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name

    def run(self, *argv: str, timeout: float = 600) -> tuple[int, str, str]:
        done = self.cluster.kubectl(
            "exec", "-n", self.namespace, self.name, "--", *argv, timeout=timeout
        )
        return done.returncode, done.stdout, done.stderr

    def ok(self, *argv: str, timeout: float = 600) -> str:
        code, out, err = self.run(*argv, timeout=timeout)
        assert code == 0, f"{argv}: exit {code}\n{out}\n{err}"
        return out


def start(cluster: Cluster, namespace: str, name: str, image: str, **spec: Any) -> Running:
    pod = shell_pod(
        cluster,
        name,
        "",
        image=image,
        automountServiceAccountToken=False,
        securityContext={"runAsUser": WORKER_UID, "runAsGroup": WORKER_UID},
        **spec,
    )
    container = pod["spec"]["containers"][0]
    container["command"] = ["sleep", "infinity"]
    container["securityContext"] = NON_ROOT
    container.setdefault("volumeMounts", []).append({"name": "tmp", "mountPath": "/tmp"})
    pod["spec"].setdefault("volumes", []).append({"name": "tmp", "emptyDir": {}})
    cluster.kube.create(pod_path(namespace), pod)
    wait_pod(cluster, namespace, name, "Running", timeout=120)
    return Running(cluster, namespace, name)


@pytest.fixture(scope="module")
def image_namespace(cluster: Cluster) -> Iterator[str]:
    cluster.require_local()
    name = "h2k-images"
    cluster.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(
        lambda: cluster.kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=60,
        what="the default ServiceAccount",
    )
    yield name
    cluster.kube.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("image-folders")
    guest = host_folder(top / "guest", writable=False)
    # A copy of the cached guest (a hard link where it can be): hostPath mounts the folder,
    # where a symbolic link would point outside it.
    source = build_guest.build()
    try:
        os.link(source, guest / "guest.vmdk")
    except OSError:
        shutil.copyfile(source, guest / "guest.vmdk")
    return {
        "in": host_folder(top / "in", writable=False),
        "out": host_folder(top / "out", writable=True),
        "guest": guest,
    }


@pytest.fixture(scope="module")
def worker(cluster: Cluster, image_namespace: str, folders: dict[str, Path]) -> Running:
    names = ("in", "out", "guest")
    return start(
        cluster,
        image_namespace,
        "worker",
        "worker",
        volumes=[
            *(
                {"name": n, "hostPath": {"path": str(folders[n]), "type": "Directory"}}
                for n in names
            ),
            {"name": "scratch", "emptyDir": {}},
        ],
        container={
            "env": [
                {"name": "TMPDIR", "value": "/scratch"},
                {"name": "LIBGUESTFS_CACHEDIR", "value": "/scratch"},
            ],
            "volumeMounts": [
                {"name": "in", "mountPath": "/in", "readOnly": True},
                {"name": "out", "mountPath": "/out"},
                {"name": "guest", "mountPath": "/guest", "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        },
    )


def test_worker_image_holds_the_wheel_and_no_installer(worker: Running) -> None:
    assert worker.ok("hyper2kvm-worker", "--version").strip() == f"hyper2kvm-worker {__version__}"
    where = worker.ok("python3", "-c", "import hyper2kvm_worker as w; print(w.__file__)")
    assert where.startswith("/opt/hyper2kvm/lib/")
    for module, why in (("kopf", "the operator's extra"), ("pip", "an installer")):
        code, _, err = worker.run("python3", "-c", f"import {module}")
        assert code != 0 and f"No module named '{module}'" in err, f"{why} is in the image"
    assert worker.ok("id", "-u").strip() == str(WORKER_UID)
    # pip's CA bundle was a build secret: in no layer, and in no variable of the image.
    assert worker.run("test", "-e", "/run/secrets/pip-cert")[0] != 0
    assert "PIP_CERT" not in worker.ok("env")


def test_worker_image_reports_what_it_can_do(worker: Running) -> None:
    caps = json.loads(worker.ok("hyper2kvm-worker", "capabilities", "--json", "--location", "/out"))
    assert caps["ready"] is True, caps["missing"]
    # Its own fixed appliance: no kernel of the node's needed.
    assert caps["offline_fix_ready"] is True, caps["offline_fix_missing"]
    assert {"file", "python", "ssh"} <= set(caps["nbdkit_plugins"])
    assert "zstd" in caps["qcow2_compression"]
    assert caps["locations"][0]["free_bytes"] > 0


def test_worker_image_converts_a_disk(worker: Running, folders: dict[str, Path]) -> None:
    raw = make_raw(folders["in"] / "disk.raw", 32 * MiB, [(0, 2 * MiB), (20 * MiB, MiB)])
    to_vmdk(raw, folders["in"] / "disk.vmdk", "streamOptimized")
    out = worker.ok("hyper2kvm-worker", "convert", "/in/disk.vmdk", "/out/disk.qcow2", "--json")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (result,) = [event for event in events if event["type"] == "result"]
    assert result["state"] == "succeeded"
    assert result["disks"][0]["verified"] is True
    assert same_content(raw, folders["out"] / "disk.qcow2", "raw", "qcow2")


def test_worker_image_runs_offline_fix_on_its_fixed_appliance(worker: Running) -> None:
    out = worker.ok("hyper2kvm-worker", "fix", "/guest/guest.vmdk", "--dry-run", "--json")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    appliance = next(e for e in events if e["type"] == "fix" and e.get("step") == "appliance")
    assert appliance["accelerator"] == "tcg"  # no /dev/kvm in the container
    (result,) = [e for e in events if e["type"] == "result"]
    assert result["state"] == "succeeded", result
    fixes = result["disks"][0]["fixes"]
    assert fixes["fstab"] == "would_apply" and fixes["network"] == "would_apply"
    # Nothing was built into the scratch volume: libguestfs booted the image's appliance.
    assert worker.ok("find", "/scratch", "-name", "appliance.d").strip() == ""


def test_operator_image_runs_the_operator_with_its_extra(
    cluster: Cluster, image_namespace: str
) -> None:
    operator = start(cluster, image_namespace, "operator", "operator")
    assert operator.ok("hyper2kvm-operator", "--help").startswith("usage: hyper2kvm-operator")
    operator.ok("python3", "-c", "import kopf, hyper2kvm_operator.handlers")
    code, _, err = operator.run("python3", "-c", "import pip")
    assert code != 0 and "No module named 'pip'" in err
