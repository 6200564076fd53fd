"""KubeVirt's VirtualMachine kind on the test cluster, and KubeVirt's own check of one.

KubeVirt cannot run here. Its VirtualMachine kind is served by a CRD that keeps whatever it
is given; what the operator made is then checked by KubeVirt's own Go types (a strict
decode: hack/kubevirt), as `kubectl apply` against a real KubeVirt would.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

from tests.cluster.conftest import Cluster
from tests.cluster.harness.cluster import REPO

VM_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "virtualmachines.kubevirt.io"},
    "spec": {
        "group": "kubevirt.io",
        "scope": "Namespaced",
        "names": {"kind": "VirtualMachine", "plural": "virtualmachines",
                  "singular": "virtualmachine", "listKind": "VirtualMachineList"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        }}],
    },
}  # fmt: skip


@contextlib.contextmanager
def serve_virtual_machines(cluster: Cluster) -> Iterator[None]:
    """The VirtualMachine kind served while the block runs."""
    for args, stdin in (
        (("apply", "-f", "-"), json.dumps(VM_CRD)),
        (("wait", "--for=condition=Established", "--timeout=60s",
          "crd/virtualmachines.kubevirt.io"), None),
    ):  # fmt: skip
        done = cluster.kubectl(*args, stdin=stdin)
        assert done.returncode == 0, done.stderr
    yield
    cluster.kubectl("delete", "crd", "virtualmachines.kubevirt.io", "--timeout=60s")


def kubevirt_check(manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """KubeVirt's strict decode of `manifest` (exit 0: its types take it)."""
    bin_dir = subprocess.run(
        ["bash", str(REPO / "hack" / "kubevirt" / "build.sh"), "--print-bin-dir"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return subprocess.run([f"{bin_dir}/kubevirt-check"], input=json.dumps(manifest),
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
